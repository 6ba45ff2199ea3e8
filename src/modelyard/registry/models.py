"""The registry's tables (SQLAlchemy 2.x declarative). The schema itself is owned by the Alembic
migrations in ``migrations/versions``; these classes must match them (a test compares the two)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Timezone-aware now (UTC)."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the registry tables."""


class App(Base):
    """A named application: a sequence of model versions and its aliases."""

    __tablename__ = "apps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class ModelVersion(Base):
    """One registered copy of a run's model (version numbers start at 1 per app)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("app_id", "version", name="uq_model_versions_app_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    run_id: Mapped[str] = mapped_column(String(128), nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    labels: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Alias(Base):
    """``production`` / ``staging`` → a version of an app."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("app_id", "alias", name="uq_aliases_app_alias"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), nullable=False)
    alias: Mapped[str] = mapped_column(String(32), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class AuditEvent(Base):
    """Every decision: register, promote, rollback, retrain verdicts, hot-swap failures."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_app", "app"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    app: Mapped[str] = mapped_column(String(128), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)


class ApiKey(Base):
    """An API key: the public id and the sha256 of its secret (the secret itself is never stored)."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    scopes: Mapped[str] = mapped_column(String(128), nullable=False)
    rate_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # NULL: never


class PredictionRecord(Base):
    """One logged prediction (the id is the UUIDv4 returned to the client)."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_app_at", "app", "at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    app: Mapped[str] = mapped_column(String(128), nullable=False)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)  # base64 AES-GCM ciphertext unless enc_key is NULL
    label: Mapped[str] = mapped_column(String(256), nullable=False)
    scores: Mapped[dict[str, float]] = mapped_column(JSON, nullable=False)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False)
    # id of the log key that encrypted `text` (registry/logkeys.py); NULL: stored in clear (logged before 0004,
    # or `serve.log_inputs: plaintext`)
    enc_key: Mapped[str | None] = mapped_column(String(16), nullable=True)


class FeedbackRecord(Base):
    """The correct label for a logged prediction, sent by the same key that asked for it."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_prediction", "prediction_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    prediction_id: Mapped[str] = mapped_column(String(36), nullable=False)
    app: Mapped[str] = mapped_column(String(128), nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    label: Mapped[str] = mapped_column(String(256), nullable=False)


class FeedbackImage(Base):
    """An image a client sent back with its feedback (the prediction log itself keeps only its sha256).

    Content-addressed: the same image given as feedback twice is stored once. Only images whose hash equals
    the logged prediction's are accepted, so this holds nothing the model was not asked about.
    """

    __tablename__ = "feedback_images"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    app: Mapped[str] = mapped_column(String(128), nullable=False)
    media_type: Mapped[str] = mapped_column(String(64), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    enc_key: Mapped[str | None] = mapped_column(String(16), nullable=True)  # as PredictionRecord.enc_key


class LogPurge(Base):
    """One purge of logged inputs (``modelyard predictions purge``): who, when, the criteria, how many rows went."""

    __tablename__ = "log_purges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    predictions: Mapped[int] = mapped_column(Integer, nullable=False)
    feedback: Mapped[int] = mapped_column(Integer, nullable=False)
    images: Mapped[int] = mapped_column(Integer, nullable=False)
