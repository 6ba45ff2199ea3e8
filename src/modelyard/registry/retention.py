"""Logs at rest, the write side: re-encrypting under the newest key (rotation) and purging logged inputs.

* :func:`rotate_log_key` re-encrypts every logged input that is not under the newest key (old keys, and rows
  stored in clear) in batches, each batch one transaction: interrupted, it leaves every row readable and a
  second run finishes the job. Rows under a key that is not configured are left alone and reported.
* :func:`purge_log` deletes the predictions matching ``--before`` or ``--id`` (optionally of one app), their
  feedback rows and the images sent with that feedback, and records who, when, the criteria and the counts in
  ``log_purges``, all in one transaction. SQLite zeroes deleted content (``secure_delete``) and the write-ahead
  log is truncated afterwards, so the deleted values are gone from the files too; on PostgreSQL run ``VACUUM``
  to reclaim the dead rows' space.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, or_, select, update

from modelyard.registry.engine import RegistryEngine, default_actor
from modelyard.registry.logkeys import LogKeyError, LogKeys
from modelyard.registry.models import FeedbackImage, FeedbackRecord, LogPurge, PredictionRecord, utcnow
from modelyard.registry.names import RegistryError
from modelyard.registry.predictions import image_aad, reveal_text, text_aad

CHUNK = 500  # ids per IN (...) list: far below every database's parameter limit
LISTED_IDS = 100  # a purge by more ids records their count and digest instead of the list


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def rotate_log_key(engine: RegistryEngine, keys: LogKeys, batch: int = 500) -> dict[str, Any]:
    """Re-encrypt logged texts and feedback images under the newest log key, ``batch`` rows per transaction.

    Returns:
        ``{"key": newest key id, "predictions": n, "images": n, "unreadable": {key id: rows}}`` where
        ``unreadable`` counts rows under keys that are not configured (left as they are).

    Raises:
        LogKeyError: No key is configured, or a stored value does not decrypt (altered or damaged; the rows
            of earlier batches stay re-encrypted).
    """
    ring = keys.keyring()
    if ring.newest_id is None:
        raise LogKeyError("no log key configured to rotate to; set $MODELYARD_LOG_KEY or $MODELYARD_LOG_KEY_FILE")
    newest, old = ring.newest_id, [k for k in ring.ids if k != ring.newest_id]

    def step_predictions() -> int:
        with engine.write() as session:
            rows = session.execute(
                select(PredictionRecord.id, PredictionRecord.text, PredictionRecord.enc_key)
                .where(or_(PredictionRecord.enc_key.is_(None), PredictionRecord.enc_key.in_(old)))
                .order_by(PredictionRecord.id)
                .limit(batch)
            ).all()
            changes = []
            for pid, stored, kid in rows:
                new_kid, blob = ring.encrypt_text(reveal_text(ring, pid, stored, kid), text_aad(pid))
                changes.append({"id": pid, "text": blob, "enc_key": new_kid})
            if changes:
                session.execute(update(PredictionRecord), changes)  # bulk UPDATE by primary key
            return len(changes)

    def step_images() -> int:
        with engine.write() as session:
            rows = session.execute(
                select(FeedbackImage.sha256, FeedbackImage.data, FeedbackImage.enc_key)
                .where(or_(FeedbackImage.enc_key.is_(None), FeedbackImage.enc_key.in_(old)))
                .order_by(FeedbackImage.sha256)
                .limit(batch)
            ).all()
            changes = []
            for sha, data, kid in rows:
                plain = bytes(data) if kid is None else ring.decrypt(kid, bytes(data), image_aad(sha))
                new_kid, blob = ring.encrypt(plain, image_aad(sha))
                changes.append({"sha256": sha, "data": blob, "enc_key": new_kid})
            if changes:
                session.execute(update(FeedbackImage), changes)
            return len(changes)

    done = {"predictions": 0, "images": 0}
    for name, step in (("predictions", step_predictions), ("images", step_images)):
        while n := engine.retry(step):
            done[name] += n
    unreadable: dict[str, int] = {}
    with engine.read() as session:
        for table in (PredictionRecord, FeedbackImage):
            for kid, n in session.execute(
                select(table.enc_key, func.count())
                .where(table.enc_key.is_not(None), table.enc_key.not_in(ring.ids))
                .group_by(table.enc_key)
            ).all():
                unreadable[kid] = unreadable.get(kid, 0) + int(n)
    engine.checkpoint()
    return {"key": newest, **done, "unreadable": unreadable}


def _criteria(before: datetime | None, ids: Sequence[str], app: str | None, reason: str | None) -> dict[str, Any]:
    criteria: dict[str, Any] = {"before": before.isoformat() if before else None, "app": app, "reason": reason}
    if len(ids) <= LISTED_IDS:
        criteria["ids"] = list(ids)
    else:
        digest = hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()
        criteria["ids"] = {"count": len(ids), "sha256_of_sorted": digest}
    return criteria


def purge_log(
    engine: RegistryEngine,
    keys: LogKeys,
    *,
    before: datetime | None = None,
    ids: Sequence[str] = (),
    app: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
    image_of: Callable[[str], str | None] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete logged predictions (and their feedback and feedback images) logged before a time, or by id.

    Args:
        engine: The registry's database.
        keys: The log keys (to read image predictions' descriptions, which name the image).
        before: Purge predictions logged before this time (naive: UTC).
        ids: Or purge these prediction ids.
        app: Only this app's rows.
        actor: Who purges (default: the OS user).
        reason: Recorded with the criteria (e.g. the request that asked for it).
        image_of: The sha256 of the image an image prediction's logged description names (``None`` for a
            text); the images sent back for those predictions are deleted with them.
        dry_run: Count only; delete and record nothing.

    Returns:
        ``{"predictions", "feedback", "images", "not_found", "undecryptable", "criteria", "dry_run"}``.

    Raises:
        RegistryError: Neither or both of ``before`` and ``ids``.
    """
    if (before is None) == (not ids):
        raise RegistryError("purge needs exactly one of --before DATE or --id ID (repeatable)")
    if before is not None and before.tzinfo is None:
        before = before.replace(tzinfo=timezone.utc)
    ids = sorted(set(ids))
    criteria = _criteria(before, ids, app, reason)
    ring = keys.keyring()

    def do() -> dict[str, Any]:
        with engine.write() as session:
            scope = [PredictionRecord.app == app] if app else []
            cols = (PredictionRecord.id, PredictionRecord.text, PredictionRecord.enc_key)
            if before is not None:
                found = session.execute(select(*cols).where(PredictionRecord.at < before, *scope)).all()
            else:
                found = [
                    row
                    for part in _chunks(ids)
                    for row in session.execute(select(*cols).where(PredictionRecord.id.in_(part), *scope)).all()
                ]
            pids = sorted(row[0] for row in found)
            shas: set[str] = set()
            undecryptable = 0
            for pid, stored, kid in found if image_of is not None else ():
                try:
                    sha = image_of(reveal_text(ring, pid, stored, kid))
                except LogKeyError:  # purged all the same; which image it named cannot be known
                    undecryptable += 1
                    continue
                if sha is not None:
                    shas.add(sha)
            fb_scope = [FeedbackRecord.app == app] if app else []
            img_scope = [FeedbackImage.app == app] if app else []
            counts = {"predictions": len(pids), "feedback": 0, "images": 0}
            fb_ids = {
                i
                for part in _chunks(pids)
                for i in session.scalars(select(FeedbackRecord.id).where(FeedbackRecord.prediction_id.in_(part)))
            }
            img_ids = set(shas)
            if before is not None:  # what is older than the cutoff goes too (e.g. feedback on purged rows)
                fb_ids |= set(session.scalars(select(FeedbackRecord.id).where(FeedbackRecord.at < before, *fb_scope)))
                img_ids |= set(
                    session.scalars(select(FeedbackImage.sha256).where(FeedbackImage.at < before, *img_scope))
                )
            img_ids = {
                s
                for part in _chunks(sorted(img_ids))
                for s in session.scalars(select(FeedbackImage.sha256).where(FeedbackImage.sha256.in_(part), *img_scope))
            }
            counts["feedback"], counts["images"] = len(fb_ids), len(img_ids)
            if not dry_run:
                for part in _chunks(sorted(fb_ids)):  # type: ignore[arg-type]
                    session.execute(delete(FeedbackRecord).where(FeedbackRecord.id.in_(part)))
                for part in _chunks(pids):
                    session.execute(delete(PredictionRecord).where(PredictionRecord.id.in_(part)))
                for part in _chunks(sorted(img_ids)):
                    session.execute(delete(FeedbackImage).where(FeedbackImage.sha256.in_(part)))
                session.add(LogPurge(at=utcnow(), actor=actor or default_actor(), criteria=criteria, **counts))
            return {
                **counts,
                "not_found": len(ids) - len(pids) if ids else 0,
                "undecryptable": undecryptable,
                "criteria": criteria,
                "dry_run": dry_run,
            }

    result = engine.retry(do)
    if not dry_run:
        engine.checkpoint()
    return result


def purges(engine: RegistryEngine) -> list[dict[str, Any]]:
    """Every recorded purge, oldest first.

    Returns:
        ``{"id", "at", "actor", "criteria", "predictions", "feedback", "images"}`` per purge.
    """
    with engine.read() as session:
        return [
            {
                "id": p.id,
                "at": p.at,
                "actor": p.actor,
                "criteria": p.criteria,
                "predictions": p.predictions,
                "feedback": p.feedback,
                "images": p.images,
            }
            for p in session.scalars(select(LogPurge).order_by(LogPurge.id)).all()
        ]
