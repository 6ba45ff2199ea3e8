"""The admin job runner: one run per key, coalesced callers, time limits, cancellation, bounded shutdown.

Jobs run in real child processes (``modelyard.serving.job_worker``); the tests read their process ids
back from a marker file and check with ``os.kill(pid, 0)`` that no child outlives what the runner promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from modelyard.registry import open_registry
from modelyard.serving.jobs import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT, JobRunner

SLEEPY = "tests.job_targets:sleepy"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError, OSError):  # a zombie we own counts as gone once reaped
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


def _pids(marker: Path) -> list[int]:
    return [int(x) for x in marker.read_text().split()] if marker.is_file() else []


async def _until(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    open_registry(tmp_path / "store").close()  # the child opens the same SQLite registry
    return tmp_path / "store"


def test_five_concurrent_callers_share_one_run(store: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pids"

    async def main() -> None:
        runner = JobRunner(timeout_s=60)
        kwargs = {"store": str(store), "seconds": 1.0, "marker": str(marker)}
        started = [runner.start("drift:demo", "drift", SLEEPY, kwargs) for _ in range(5)]
        assert [s for _, s in started] == [True, False, False, False, False]
        assert len({job.id for job, _ in started}) == 1
        done = await asyncio.gather(*(runner.wait(job) for job, _ in started))
        assert {j.state for j in done} == {SUCCEEDED}
        assert done[0].result["slept"] == 1.0 and done[0].result["app"] == "store"
        assert runner.get(done[0].id).to_dict()["state"] == SUCCEEDED
        assert runner.running("drift:demo") is None
        again, fresh = runner.start("drift:demo", "drift", SLEEPY, {**kwargs, "seconds": 0.0})
        assert fresh and again.id != done[0].id  # after it finished, the next request starts a new run
        await runner.wait(again)

    asyncio.run(main())
    assert len(_pids(marker)) == 2  # one child for the five callers, one for the later request


def test_a_run_past_its_time_limit_is_stopped(store: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pids"

    async def main() -> float:
        runner = JobRunner(timeout_s=8, grace_s=2)  # long enough for the child to start on a busy machine
        job, _ = runner.start(
            "drift:demo", "drift", SLEEPY, {"store": str(store), "seconds": 60, "marker": str(marker)}
        )
        t0 = time.monotonic()
        await runner.wait(job)
        assert job.state == TIMED_OUT and "8 s" in job.error
        await runner.shutdown()
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert took < 15
    [pid] = _pids(marker)
    assert not _alive(pid)


def test_when_every_caller_has_gone_the_run_is_cancelled_and_the_child_exits(store: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pids"

    async def main() -> None:
        runner = JobRunner(timeout_s=120, grace_s=2)
        job, _ = runner.start(
            "drift:demo", "drift", SLEEPY, {"store": str(store), "seconds": 60, "marker": str(marker)}
        )
        waiters = [asyncio.create_task(runner.wait(job)) for _ in range(3)]
        await _until(lambda: len(_pids(marker)) == 1)
        waiters[0].cancel()
        await asyncio.sleep(0.2)
        assert job.state == "running"  # two callers still wait
        for w in waiters[1:]:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert job.state == CANCELLED and "went away" in job.error
        [pid] = _pids(marker)
        await _until(lambda: not _alive(pid), timeout=5)  # the stated bound: grace_s + a margin
        await runner.shutdown()

    asyncio.run(main())


def test_shutdown_stops_running_jobs_in_bounded_time_and_refuses_new_ones(store: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pids"

    async def main() -> None:
        runner = JobRunner(timeout_s=120, grace_s=2)
        job, _ = runner.start("drift:a", "drift", SLEEPY, {"store": str(store), "seconds": 60, "marker": str(marker)})
        await _until(lambda: len(_pids(marker)) == 1)
        t0 = time.monotonic()
        await runner.shutdown()
        assert time.monotonic() - t0 < 5
        assert job.state == CANCELLED and job.done.is_set()
        with pytest.raises(RuntimeError, match="shutting down"):
            runner.start("drift:b", "drift", SLEEPY, {"store": str(store), "seconds": 0, "marker": str(marker)})

    asyncio.run(main())
    [pid] = _pids(marker)
    assert not _alive(pid)


def test_a_failing_job_reports_its_error_line(store: Path) -> None:
    async def main() -> None:
        runner = JobRunner(timeout_s=60)
        job, _ = runner.start("drift:demo", "drift", "tests.job_targets:boom", {"store": str(store)})
        await runner.wait(job)
        assert job.state == FAILED and job.error == "RuntimeError: kaput"

    asyncio.run(main())
