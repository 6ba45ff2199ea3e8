"""Bounded background work for the server's admin jobs (the drift monitor): one small job runner.

Every job runs in a child process (``python -m modelyard.serving.job_worker``), so it can be stopped: a
thread running numpy/torch cannot be interrupted, a process can. The runner keeps the server's promises:

* at most one job per key (e.g. ``drift:<app>``) at a time — a request while one runs joins it (coalesced);
* a time limit per job (``timeout_s``): past it the child is terminated and the job is ``timed_out``;
* a job whose every waiting client has gone is cancelled (the CPU is idle again within ``grace_s``);
* on shutdown every running child is terminated, then killed after ``grace_s`` — SIGTERM drains in bounded time;
* ``get(job_id)`` answers ``GET /admin/v1/jobs/{id}`` for the last ``keep`` jobs.

The child's result comes back as one JSON line on stdout (no pickle). asyncio's subprocess support does the
process handling; nothing here is a scheduler beyond "one per key".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELLED = "running", "succeeded", "failed", "timed_out", "cancelled"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_GRACE_S = 5.0


@dataclass
class Job:
    """One admin job: its state, timings and (when it succeeded) its JSON result."""

    id: str
    key: str
    kind: str
    state: str = RUNNING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    waiters: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task | None = None

    def to_dict(self) -> dict[str, Any]:
        """What ``GET /admin/v1/jobs/{id}`` returns."""
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": round((self.finished_at or time.time()) - self.started_at, 3),
            "error": self.error,
        }


class JobRunner:
    """Runs admin jobs in child processes, one per key, bounded in time, cancelled when nobody waits."""

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        grace_s: float = DEFAULT_GRACE_S,
        keep: int = 100,
        env: dict[str, str] | None = None,
    ) -> None:
        self.timeout_s, self.grace_s, self.keep = timeout_s, grace_s, keep
        self.env = env or {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: dict[str, Job] = {}
        self._closed = False

    def get(self, job_id: str) -> Job | None:
        """A job by id (running, or one of the last ``keep`` finished)."""
        return self._jobs.get(job_id)

    def running(self, key: str) -> Job | None:
        """The job running under ``key``, if any."""
        return self._running.get(key)

    def start(self, key: str, kind: str, target: str, kwargs: dict[str, Any]) -> tuple[Job, bool]:
        """Start ``target`` (``"module:function"``) with JSON-able ``kwargs`` under ``key``, or join the
        job already running there. Returns ``(job, started)``."""
        if self._closed:
            raise RuntimeError("the job runner is shutting down")
        existing = self._running.get(key)
        if existing is not None:
            return existing, False
        job = Job(id=secrets.token_hex(8), key=key, kind=kind)
        self._jobs[job.id] = job
        self._running[key] = job
        while len(self._jobs) > self.keep:
            oldest = next(iter(self._jobs.values()))
            if oldest.state == RUNNING:
                break
            self._jobs.popitem(last=False)
        job.task = asyncio.create_task(self._supervise(job, target, kwargs))
        return job, True

    async def wait(self, job: Job) -> Job:
        """Wait for ``job`` on behalf of one client; if every waiting client goes away, the job is cancelled."""
        job.waiters += 1
        try:
            await asyncio.shield(job.done.wait())
        except asyncio.CancelledError:
            job.waiters -= 1
            if job.waiters == 0 and job.state == RUNNING:
                self._cancel(job, CANCELLED, "every client waiting for it went away")
            raise
        job.waiters -= 1
        return job

    async def _supervise(self, job: Job, target: str, kwargs: dict[str, Any]) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        try:
            job.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "modelyard.serving.job_worker",
                target,
                json.dumps(kwargs),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            try:
                out, err = await asyncio.wait_for(job.proc.communicate(), self.timeout_s)
            except asyncio.TimeoutError:
                self._cancel(job, TIMED_OUT, f"stopped after its time limit of {self.timeout_s:g} s")
                await self._reap(job)
                return
            if job.state != RUNNING:  # cancelled while it ran
                return
            if job.proc.returncode == 0:
                lines = out.decode("utf-8", "replace").strip().splitlines()
                job.result = json.loads(lines[-1]) if lines else None
                job.state = SUCCEEDED
            else:
                tail = err.decode("utf-8", "replace").strip().splitlines()
                job.state, job.error = FAILED, (tail[-1] if tail else f"exit status {job.proc.returncode}")
        except asyncio.CancelledError:
            self._cancel(job, CANCELLED, "the server is shutting down")
            await self._reap(job)
            raise
        except (OSError, ValueError) as err:  # could not start, or unreadable result
            job.state, job.error = FAILED, str(err)
        finally:
            self._finish(job)

    def _cancel(self, job: Job, state: str, why: str) -> None:
        if job.state != RUNNING:
            return
        job.state, job.error = state, why
        if job.proc is not None and job.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                job.proc.terminate()
        self._finish(job)

    async def _reap(self, job: Job) -> None:
        """Wait up to ``grace_s`` for a terminated child, then kill it."""
        if job.proc is None:
            return
        try:
            await asyncio.wait_for(job.proc.wait(), self.grace_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                job.proc.kill()
            await job.proc.wait()

    def _finish(self, job: Job) -> None:
        if job.finished_at is None:
            job.finished_at = time.time()
        if self._running.get(job.key) is job:
            del self._running[job.key]
        job.done.set()

    async def shutdown(self) -> None:
        """Stop accepting jobs, terminate the running ones and wait for them (bounded by ``grace_s``)."""
        self._closed = True
        jobs = list(self._running.values())
        for job in jobs:
            self._cancel(job, CANCELLED, "the server is shutting down")
        for job in jobs:
            await self._reap(job)
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job.task
