"""The prediction log: a bounded queue drained by one writer thread into the registry database.

The request path only does ``queue.put_nowait``: it never waits for the database. When the queue
is full the row is dropped and counted (``modelyard_predlog_dropped_total``), never silently. A
failed database write is retried by the registry, then counted as dropped with the error logged.
On shutdown :meth:`PredictionLog.close` drains what is queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import Any

from modelyard.privacy import get_engine
from modelyard.registry.store import Registry

logger = logging.getLogger("modelyard.serving")

RECENT_IDS = 100_000  # ids remembered in memory so feedback works before the row is written
LABEL_CHARS = 256  # the `label` column of the prediction and feedback tables (String(256))


def log_label(label: str) -> str:
    """The ``label`` column value of a logged prediction: a label, or a multi-label model's set joined by ``|``.

    A set too long for the column is cut after its last whole label and marked with ``…`` (the ``scores``
    column keeps every label's probability; the monitor reads those).
    """
    if len(label) <= LABEL_CHARS:
        return label
    head = label[: LABEL_CHARS - 1]
    return (head.rsplit("|", 1)[0] if "|" in head else head) + "…"


def mask_pii(text: str) -> str:
    """Replace personal data with typed placeholders: the PII engine of :mod:`modelyard.privacy` (``auto``: English
    and Chinese recognizers — phones, resident IDs, cards, e-mail, IPs, credentials in URLs, passports, addresses,
    names), the same one ``modelyard redact`` and ``data.clean.pii`` use. About a millisecond per short text.

    Example:
        >>> mask_pii("mail bob@example.com or call +44 20 7946 0958")
        'mail <EMAIL> or call <PHONE>'
    """
    return get_engine("auto").redact(text)


def warm_pii_engine() -> None:
    """Build the shared PII engine in a background thread (imports Presidio, loads jieba: seconds), so that the
    first logged request does not wait for it."""
    threading.Thread(target=get_engine, args=("auto",), name="modelyard-pii-warmup", daemon=True).start()


class PredictionLog:
    """Bounded asynchronous writer of predictions and feedback.

    Args:
        registry: Where rows are written.
        capacity: Rows the queue holds; beyond it rows are dropped and counted.
        batch_size: Rows per database transaction.
        encrypt: Encrypt logged inputs at rest (the registry's log keys); ``False`` only for
            ``serve.log_inputs: plaintext``.
    """

    def __init__(self, registry: Registry, capacity: int = 10_000, batch_size: int = 256, encrypt: bool = True) -> None:
        self.registry = registry
        self.batch_size = batch_size
        self._write_kwargs: dict[str, Any] = {} if encrypt else {"encrypt": False}
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._pending = 0  # queued or being written
        # prediction id → (key id, app, labels, sha256 of the image for an image prediction)
        self._recent: OrderedDict[str, tuple[str | None, str, tuple[str, ...], str | None]] = OrderedDict()

    @property
    def depth(self) -> int:
        """Rows waiting to be written."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the writer thread (and build the PII engine that masks logged texts in the background)."""
        warm_pii_engine()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="modelyard-predlog", daemon=True)
        self._thread.start()

    def _put(self, kind: str, row: dict[str, Any]) -> bool:
        try:
            with self._lock:
                self._pending += 1
            self._queue.put_nowait((kind, row))
            return True
        except queue.Full:
            with self._lock:
                self._pending -= 1
                self.dropped += 1
            return False

    def log_prediction(self, row: dict[str, Any], labels: tuple[str, ...], image_sha256: str | None = None) -> bool:
        """Queue one prediction row (never blocks). Returns False when it was dropped (queue full)."""
        with self._lock:
            self._recent[row["id"]] = (row.get("key_id"), row["app"], labels, image_sha256)
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        return self._put("prediction", row)

    def log_feedback(self, row: dict[str, Any], image: dict[str, Any] | None = None) -> bool:
        """Queue one feedback row, and the image sent with it (never blocks). False when the queue is full.

        The image (``{"sha256", "app", "media_type", "data", "at"}``) rides in the same queue item, so the
        feedback row and its image are written in one transaction or dropped together.
        """
        return self._put("feedback", {**row, "_image": image} if image is not None else row)

    def recent(self, prediction_id: str) -> tuple[str | None, str, tuple[str, ...], str | None] | None:
        """``(key_id, app, labels, image sha256 or None)`` of a prediction this process made recently, or ``None``."""
        with self._lock:
            return self._recent.get(prediction_id)

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            items = [first]
            while len(items) < self.batch_size:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            preds = [row for kind, row in items if kind == "prediction"]
            feedback = [row for kind, row in items if kind == "feedback"]
            images = [row.pop("_image") for row in feedback if "_image" in row]
            try:
                for row in preds:  # PII masking here, in the writer thread, keeps it off the request path
                    if row.pop("_mask_pii", False):
                        row["text"] = mask_pii(row["text"])
                self.registry.log_predictions(preds, feedback, images, **self._write_kwargs)
                with self._lock:
                    self.written += len(items)
            except Exception:
                logger.exception("prediction log: %d rows could not be written and are dropped", len(items))
                with self._lock:
                    self.write_errors += 1
                    self.dropped += len(items)
            finally:
                with self._lock:
                    self._pending -= len(items)

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting work, write everything queued (at most ``timeout`` seconds), stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("prediction log: %d rows still queued after %.0fs at shutdown", self.depth, timeout)
        self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, CLI). Returns whether it was in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.01)
        return False
