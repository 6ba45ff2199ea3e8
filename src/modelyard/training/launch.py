"""``modelyard train RECIPE distributed.backend=torchrun distributed.workers=N``: start the ranks for the user.

What ``torchrun --standalone --nproc_per_node N -m modelyard train RECIPE`` would do, through the same engine
(torch's elastic launcher, ``torch.distributed.launcher.api``): a c10d rendezvous on loopback, N local
processes, no restarts. When a rank fails, the agent stops the others and this module turns its failure
records into one error naming each failed rank, its host, pid and exit status.
"""

from __future__ import annotations

import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from modelyard.errors import ModelyardError


def launch(
    recipe: Any,
    entry: Callable[[dict[str, Any], Any], str],
    *,
    resume: Path | None,
    data: Any,
    stop_after_step: int | None,
    console: Console,
) -> Path:
    """Start the ranks of ``recipe.distributed.backend``; each calls ``entry(payload, data)`` and trains.

    ``entry`` (:func:`modelyard.training.run.train_rank`) is handed in rather than imported: the training run
    imports this module, never the other way round.
    """
    payload = {
        "recipe": recipe.to_yaml(),
        "base_dir": str(recipe.base_dir),
        "resume": str(resume) if resume is not None else None,
        "stop_after_step": stop_after_step,
    }
    if recipe.distributed.backend == "ray":
        from modelyard.training.ray_train import launch_ray

        return launch_ray(recipe, entry, payload, data, console)
    return launch_torchrun(recipe, entry, payload, data, console)


def launch_torchrun(
    recipe: Any, entry: Callable[[dict[str, Any], Any], str], payload: dict[str, Any], data: Any, console: Console
) -> Path:
    """Train ``recipe`` with ``distributed.workers`` local DDP processes; return rank 0's run directory."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cfg = recipe.distributed
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=cfg.workers,
        run_id=f"modelyard-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # like torchrun --standalone, but on loopback
        rdzv_configs={"timeout": int(cfg.timeout_s)},
        max_restarts=0,  # a failed rank fails the run (resume it with --resume), never a silent retry loop
        monitor_interval=0.5,
        start_method="spawn",
        local_addr="127.0.0.1",
        shutdown_timeout=10,  # SIGTERM, then SIGKILL after 10 s: a stalled (stopped) rank cannot delay the failure
    )
    console.print(f"[bold]distributed[/] torchrun · {cfg.workers} processes on this machine (gloo/NCCL via DDP)")
    try:
        results = elastic_launch(config, _rank_main)(entry, payload, data)
    except ChildFailedError as err:
        raise ModelyardError(describe_failures(err)) from None
    return Path(results[0])


def describe_failures(err: Any) -> str:
    """One line per failed rank (earliest first): rank, host, pid, how it ended, and its own error message."""
    lines = []
    for rank, failure in sorted(err.failures.items(), key=lambda item: item[1].timestamp):
        code = failure.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        message = failure.message if isinstance(failure.message, str) else (failure.message or {}).get("message", "")
        detail = _last_line(message)
        lines.append(
            f"rank {rank} on host {socket.gethostname()} (pid {failure.pid}) {how}" + (f": {detail}" if detail else "")
        )
    return "distributed run failed — " + "; ".join(lines)


def _last_line(message: str) -> str:
    text = (message or "").strip()
    if not text or text.startswith("To enable traceback"):
        return ""
    # the elastic error file carries "ExceptionType: message" as its last non-empty line
    return [line for line in text.splitlines() if line.strip()][-1][:400]


def _rank_main(entry: Callable[[dict[str, Any], Any], str], payload: dict[str, Any], data: Any) -> str:
    """One rank, in a fresh process started by the elastic agent (with RANK, WORLD_SIZE, MASTER_ADDR set)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    signal.signal(signal.SIGTERM, _interrupt)  # the agent stops surviving ranks with SIGTERM: clean up, keep --resume
    return record(entry)(payload, data)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
