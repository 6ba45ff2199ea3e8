"""The prediction-log store: logged predictions and feedback, and the queries monitoring needs.

The production server writes rows through a bounded asynchronous writer
(:class:`modelyard.serving.predlog.PredictionLog`); retraining reads the feedback, the drift monitor
and the web console read predictions and per-bucket traffic.

Logged inputs (texts, image descriptions, feedback images) are encrypted on the way in and decrypted on the way
out, here and only here (:func:`reveal_text`), so every reader (monitor, retrain, console, feedback) gets them
back without knowing about keys; see :mod:`modelyard.registry.logkeys`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, insert, or_, select

from modelyard.registry.engine import RegistryEngine
from modelyard.registry.logkeys import LogKeyError, LogKeyring, LogKeys
from modelyard.registry.models import FeedbackImage, FeedbackRecord, PredictionRecord
from modelyard.registry.names import RegistryError

LABELLED_KEY_PREFIX = "label:"
"""``key_id`` prefix of a row the console's "Label next" panel logs (``label:<admin key id>``): a text a person
labelled, stored as a prediction row plus its feedback so that ``modelyard retrain`` reads it like any feedback.
It is not traffic: :meth:`PredictionStore.predictions`, :meth:`~PredictionStore.recent_predictions` and
:meth:`~PredictionStore.traffic` (the monitor, the console's charts and lists) leave such rows out."""


def _traffic() -> Any:
    """The rows that are model traffic (not labels logged by the console's "Label next" panel)."""
    return or_(PredictionRecord.key_id.is_(None), ~PredictionRecord.key_id.startswith(LABELLED_KEY_PREFIX))


def text_aad(prediction_id: str) -> str:
    """The associated data binding an encrypted input to its prediction row (never change: old rows use it)."""
    return f"predictions.text:{prediction_id}"


def image_aad(sha256: str) -> str:
    """The associated data binding an encrypted feedback image to its row."""
    return f"feedback_images.data:{sha256}"


def reveal_text(ring: LogKeyring, prediction_id: str, stored: str, enc_key: str | None, strict: bool = True) -> str:
    """The logged input of a prediction row: decrypted, or as stored when it was logged in clear (``enc_key`` NULL).

    The one place a logged text is decrypted. ``strict=False`` (display: console, admin API, feedback ownership)
    gives a marker instead of raising, so one unreadable row does not take a page down.

    Raises:
        LogKeyError: ``strict`` and the key is not configured or the value does not decrypt.
    """
    if enc_key is None:
        return stored
    try:
        return ring.decrypt_text(enc_key, stored, text_aad(prediction_id))
    except LogKeyError:
        if strict:
            raise
        return f"<not decryptable here (log key {enc_key})>"


def parse_since(since: str | None) -> datetime | None:
    """``"7d"``, ``"12h"``, ``"30m"`` → the UTC time that long ago (``None`` → ``None``).

    Raises:
        RegistryError: Any other form.
    """
    if not since:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        value = float(since[:-1])
        unit = units[since[-1]]
        return datetime.now(timezone.utc) - timedelta(**{unit: value})
    except (ValueError, KeyError, IndexError):
        raise RegistryError(f"invalid --since {since!r}; use e.g. 7d, 12h, 30m") from None
    except OverflowError:  # found by fuzzing: 999999d is before year 1
        raise RegistryError(f"--since {since!r} reaches back before year 1; use a shorter window") from None


def _sealed_row(ring: LogKeyring, row: dict[str, Any]) -> dict[str, Any]:
    kid, blob = ring.encrypt_text(row["text"], text_aad(row["id"]))
    return {**row, "text": blob, "enc_key": kid}


def _sealed_image(ring: LogKeyring, image: dict[str, Any]) -> dict[str, Any]:
    kid, blob = ring.encrypt(image["data"], image_aad(image["sha256"]))
    return {**image, "data": blob, "enc_key": kid}


class PredictionStore:
    """Predictions and feedback of a registry (one session per call; thread-safe).

    Args:
        engine: The registry's database.
        keys: The log keys (default: resolved for the engine's store, see :class:`LogKeys`).
    """

    def __init__(self, engine: RegistryEngine, keys: LogKeys | None = None) -> None:
        self._engine = engine
        self.keys = keys or LogKeys(engine.store)

    def log_predictions(
        self,
        rows: Sequence[dict[str, Any]],
        feedback: Sequence[dict[str, Any]] = (),
        images: Sequence[dict[str, Any]] = (),
        encrypt: bool = True,
    ) -> None:
        """Insert prediction rows, feedback rows and feedback images in one transaction (the log writer's batch).

        ``images`` are ``{"sha256", "app", "media_type", "data", "at"}``; one already stored (same sha256) is
        kept as it is (content-addressed). Texts and image bytes are encrypted with the newest log key (one is
        generated in the store when none is configured); ``encrypt=False`` (``serve.log_inputs: plaintext``)
        stores them in clear.
        """
        if not rows and not feedback and not images:
            return
        if encrypt and (rows or images):
            ring = self.keys.for_writing()
            rows = [_sealed_row(ring, r) for r in rows]
            images = [_sealed_image(ring, im) for im in images]

        def do() -> None:
            with self._engine.write() as session:
                if rows:
                    session.execute(insert(PredictionRecord), list(rows))
                if feedback:
                    session.execute(insert(FeedbackRecord), list(feedback))
                unique = {im["sha256"]: im for im in images}
                # a concurrent writer storing the same image makes this IntegrityError, retried (and then skipped)
                for sha in sorted(unique):
                    if session.get(FeedbackImage, sha) is None:
                        session.add(FeedbackImage(**unique[sha]))

        self._engine.retry(do)

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        """One logged prediction, or ``None``."""
        ring = self.keys.keyring()
        with self._engine.read() as session:
            p = session.get(PredictionRecord, prediction_id)
            if p is None:
                return None
            return {
                "id": p.id,
                "at": p.at,
                "app": p.app,
                "version": p.version,
                "key_id": p.key_id,
                "text": reveal_text(ring, p.id, p.text, p.enc_key, strict=False),
                "label": p.label,
                "scores": p.scores,
                "latency_ms": p.latency_ms,
            }

    def feedback_image(self, sha256: str) -> tuple[str, bytes] | None:
        """``(media_type, bytes)`` of an image sent with feedback, or ``None`` when none was sent.

        Raises:
            LogKeyError: It is encrypted with a key not configured here, or does not decrypt.
        """
        with self._engine.read() as session:
            im = session.get(FeedbackImage, sha256)
            if im is None:
                return None
            data = bytes(im.data)
            kid = im.enc_key
            media_type = im.media_type
        return media_type, data if kid is None else self.keys.keyring().decrypt(kid, data, image_aad(sha256))

    def predictions(self, app: str, since: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Logged predictions of an app (newest last), optionally since a time; texts decrypted.

        Raises:
            LogKeyError: A text is encrypted with a key not configured here (the message names it).
        """
        ring = self.keys.keyring()
        with self._engine.read() as session:
            query = select(PredictionRecord).where(PredictionRecord.app == app, _traffic())
            if since is not None:
                query = query.where(PredictionRecord.at >= since)
            query = query.order_by(PredictionRecord.at)
            if limit is not None:
                query = query.limit(limit)
            return [
                {
                    "id": p.id,
                    "at": p.at,
                    "version": p.version,
                    "text": reveal_text(ring, p.id, p.text, p.enc_key),
                    "label": p.label,
                    "scores": p.scores,
                }
                for p in session.scalars(query).all()
            ]

    def recent_predictions(self, app: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` logged predictions of an app (oldest of them first), read with a LIMIT query.

        For display: a text whose key is not configured here reads as a marker naming the key.
        """
        ring = self.keys.keyring()
        with self._engine.read() as session:
            query = (
                select(PredictionRecord)
                .where(PredictionRecord.app == app, _traffic())
                .order_by(PredictionRecord.at.desc(), PredictionRecord.id)
                .limit(limit)
            )
            rows = [
                {
                    "id": p.id,
                    "at": p.at,
                    "version": p.version,
                    "text": reveal_text(ring, p.id, p.text, p.enc_key, strict=False),
                    "label": p.label,
                    "scores": p.scores,
                }
                for p in session.scalars(query).all()
            ]
        return rows[::-1]

    def feedback(self, app: str) -> list[dict[str, Any]]:
        """Feedback of an app joined with its predictions' texts (decrypted); the latest label per prediction wins.

        Raises:
            LogKeyError: A text is encrypted with a key not configured here (the message names it).
        """
        ring = self.keys.keyring()
        with self._engine.read() as session:
            rows = session.execute(
                select(FeedbackRecord, PredictionRecord.text, PredictionRecord.enc_key)
                .join(PredictionRecord, PredictionRecord.id == FeedbackRecord.prediction_id)
                .where(FeedbackRecord.app == app)
                .order_by(FeedbackRecord.at, FeedbackRecord.id)
            ).all()
        latest: dict[str, dict[str, Any]] = {}
        for fb, text_, kid in rows:
            latest[fb.prediction_id] = {
                "prediction_id": fb.prediction_id,
                "text": reveal_text(ring, fb.prediction_id, text_, kid),
                "label": fb.label,
                "at": fb.at,
            }
        return list(latest.values())

    def traffic(
        self, app: str, since: datetime, bucket_s: int, until: datetime | None = None, max_rows: int = 200_000
    ) -> dict[str, Any]:
        """Logged traffic of an app per time bucket: request count, mean confidence, and the class mix.

        Counts, the class mix and the mean latency are aggregated by the database; the per-bucket mean
        confidence (the top score of each prediction, kept in a JSON column) from the newest
        ``max_rows`` rows of the window.

        Args:
            app: The app.
            since: Start of the window (UTC).
            bucket_s: Bucket width in seconds; buckets are aligned to multiples of it since the epoch.
            until: End of the window (default: now).
            max_rows: Most rows read for the confidence means.

        Returns:
            ``{"since", "until", "bucket_s", "total", "buckets": [{"start", "requests", "mean_confidence"}],
            "class_mix": {label: count}, "mean_latency_ms"}``; every bucket of the window is present.
        """
        until = until or datetime.now(timezone.utc)
        window = (PredictionRecord.app == app, PredictionRecord.at >= since, PredictionRecord.at <= until, _traffic())
        with self._engine.read() as session:
            mix = session.execute(
                select(PredictionRecord.label, func.count()).where(*window).group_by(PredictionRecord.label)
            ).all()
            total, latency = session.execute(
                select(func.count(), func.avg(PredictionRecord.latency_ms)).where(*window)
            ).one()
            rows = session.execute(
                select(PredictionRecord.at, PredictionRecord.scores)
                .where(*window)
                .order_by(PredictionRecord.at.desc())
                .limit(max_rows)
            ).all()
        first = int(since.timestamp()) // bucket_s
        last = int(until.timestamp()) // bucket_s
        counts = [0] * (last - first + 1)
        conf_sum = [0.0] * len(counts)
        conf_n = [0] * len(counts)
        for at, scores in rows:
            if at.tzinfo is None:  # SQLite returns naive UTC datetimes
                at = at.replace(tzinfo=timezone.utc)
            i = min(max(int(at.timestamp()) // bucket_s - first, 0), len(counts) - 1)
            counts[i] += 1
            values = [float(v) for v in (scores or {}).values()]
            if values:
                conf_sum[i] += max(values)
                conf_n[i] += 1
        return {
            "since": since,
            "until": until,
            "bucket_s": bucket_s,
            "total": int(total or 0),
            "buckets": [
                {
                    "start": datetime.fromtimestamp((first + i) * bucket_s, timezone.utc),
                    "requests": counts[i],
                    "mean_confidence": conf_sum[i] / conf_n[i] if conf_n[i] else None,
                }
                for i in range(len(counts))
            ],
            "class_mix": {str(label): int(n) for label, n in sorted(mix)},
            "mean_latency_ms": None if latency is None else float(latency),
        }
