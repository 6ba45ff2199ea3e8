"""Asyncio micro-batcher: merges texts from concurrent requests into one model call.

A forward pass over 16 texts costs little more than over 1, so under load the server answers many
requests per model call. Every text is one queue item with its own future; that lets a large request
be split across batches and lets each caller get exactly its own rows back, whatever it was batched
with. One worker coroutine forms batches; the model runs in ONE dedicated thread, so the event loop
never blocks on it and the model is never called concurrently (most models are not thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger("modelyard.serving")

PredictFn = Callable[[list[str]], Any]
BatchHook = Callable[[int, float, bool], None]


class QueueFullError(Exception):
    """The queue holds too many texts; the caller should retry later (HTTP 503)."""


class BatcherClosedError(Exception):
    """The batcher is shutting down (or not started) and takes no new texts (HTTP 503)."""


class BatchFailedError(Exception):
    """The model call for the batch holding this text raised; the cause is chained."""


@dataclass
class _Item:
    text: str
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Collects texts into batches of at most ``max_batch_size`` and runs ``predict`` on each.

    A batch is dispatched as soon as it is full, or ``max_wait_ms`` after its oldest text was queued
    (texts that queued up while the model was busy go out at once). Failures are per batch: if
    ``predict`` raises, the futures of that batch fail with :class:`BatchFailedError` and the worker
    carries on with the next batch.

    Args:
        predict: Blocking ``texts -> (n, k) array`` function; called from one dedicated thread only.
        max_batch_size: Most texts per ``predict`` call.
        max_wait_ms: Longest a text waits for the batch to fill.
        max_queue: Most texts waiting (not yet in a batch); beyond it :meth:`submit` raises
            :class:`QueueFullError`.
        recent: How many recent batch sizes :meth:`stats` keeps.
        on_batch: Optional ``(size, seconds, ok)`` callback after every batch (metrics).
    """

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        recent: int = 256,
        on_batch: BatchHook | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._closing = False
        self._batches = 0
        self._texts = 0
        self._failed = 0
        self._max_seen = 0
        self._recent: deque[int] = deque(maxlen=recent)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the worker coroutine and the model thread (call from the serving event loop)."""
        if self._worker is not None:
            raise RuntimeError("MicroBatcher already started")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-predict")
        self._closing = False
        self._accepting = True
        self._worker = asyncio.create_task(self._run(), name="modelyard-batcher")

    async def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking texts, finish the queued ones, then stop the worker and the model thread.

        Args:
            timeout: Seconds to wait for the queue to drain; texts still queued after it fail with
                :class:`BatcherClosedError`. ``None`` waits indefinitely.
        """
        self._accepting = False
        worker, executor = self._worker, self._executor
        if worker is None or executor is None:
            return
        self._closing = True
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(worker), timeout)
            drained = True
        except asyncio.TimeoutError:
            drained = False
            logger.warning("batcher: %d texts still queued after %.1fs; failing them", len(self._queue), timeout)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherClosedError("the server is shutting down"))
        # After a clean drain the thread is idle, so waiting costs nothing; after a timeout the
        # thread may be stuck in the model, and blocking the loop on it would hang the shutdown.
        executor.shutdown(wait=drained, cancel_futures=True)
        self._worker = self._executor = None

    # ------------------------------------------------------------------ API

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit` takes new texts."""
        return self._accepting

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a batch (not counting the batch the model is running)."""
        return len(self._queue)

    async def submit(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Queue ``texts`` and wait for their probability rows.

        Args:
            texts: The texts of one request; they may be split across several batches.

        Returns:
            One probability row per text, in order.

        Raises:
            BatcherClosedError: Not started or shutting down.
            QueueFullError: Queuing ``texts`` would put more than ``max_queue`` texts in the queue.
            BatchFailedError: The model raised on a batch holding one of ``texts``.
        """
        if not self._accepting or self._wakeup is None:
            raise BatcherClosedError("the server is shutting down")
        if len(self._queue) + len(texts) > self.max_queue:
            raise QueueFullError(
                f"{len(self._queue)} texts are already waiting and the queue holds at most {self.max_queue}"
            )
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future()) for t in texts]
        self._queue.extend(items)
        self._wake()
        # Cancelled futures (caller gone, e.g. client disconnected) are skipped by the worker instead
        # of spending model time on answers nobody reads.
        futures = [i.future for i in items]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            # One batch failed (or the caller was cancelled): the rest of this request's texts are
            # useless now, so free their queue slots (cancel() is a no-op on finished futures).
            for f in futures:
                f.cancel()
            raise

    def stats(self) -> dict[str, Any]:
        """Batching counters since start.

        Returns:
            ``{"batches", "texts", "max_batch_size_seen", "recent_sizes", "failed_batches",
            "queue_depth"}``; ``recent_sizes`` lists the most recent batch sizes, oldest first.
        """
        return {
            "batches": self._batches,
            "texts": self._texts,
            "max_batch_size_seen": self._max_seen,
            "recent_sizes": list(self._recent),
            "failed_batches": self._failed,
            "queue_depth": len(self._queue),
        }

    # ------------------------------------------------------------------ worker

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _wait_for_wakeup(self, timeout: float | None) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._queue:
                if self._closing:
                    return
                await self._wait_for_wakeup(None)
                continue
            # Wait for the batch to fill, counting from when its oldest text arrived; while closing,
            # don't wait at all - nothing new will come.
            while len(self._queue) < self.max_batch_size and not self._closing:
                remaining = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                await self._wait_for_wakeup(remaining)
                self._drop_cancelled()
                if not self._queue:
                    break
            batch: list[_Item] = []
            while self._queue and len(batch) < self.max_batch_size:
                item = self._queue.popleft()
                if not item.future.done():
                    batch.append(item)
            if batch:
                await self._run_batch(loop, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        texts = [i.text for i in batch]
        assert self._executor is not None
        start = time.perf_counter()
        ok = False
        try:
            rows = await loop.run_in_executor(self._executor, self._call_model, texts)
            ok = True
        except asyncio.CancelledError:
            # Only close() after its drain timeout cancels the worker; don't leave callers hanging.
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BatcherClosedError("the server shut down mid-batch"))
            raise
        except Exception as err:
            logger.exception("batch of %d texts failed in predict_proba", len(texts))
            failure = BatchFailedError(f"the model failed on a batch of {len(texts)} texts: {err}")
            failure.__cause__ = err
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
        else:
            for item, row in zip(batch, rows, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
        finally:
            elapsed = time.perf_counter() - start
            self._batches += 1
            self._texts += len(texts)
            self._failed += 0 if ok else 1
            self._max_seen = max(self._max_seen, len(texts))
            self._recent.append(len(texts))
            if self._on_batch is not None:
                try:
                    self._on_batch(len(texts), elapsed, ok)
                except Exception:  # metrics must never take the worker down
                    logger.exception("batch hook failed")

    def _call_model(self, texts: list[str]) -> np.ndarray:
        # Runs in the model thread. The shape is checked here so a misbehaving model fails its own
        # batch instead of handing callers someone else's (or no) row.
        probs = np.asarray(self._predict(texts), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != len(texts):
            raise ValueError(f"predict_proba returned shape {probs.shape} for {len(texts)} texts; expected (n, k)")
        return probs
