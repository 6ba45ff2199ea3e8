"""``distributed.backend: ray``: the same training loop as one Ray Train ``TorchTrainer`` job.

Ray Train starts ``distributed.workers`` workers (``ScalingConfig``: GPUs and CPUs per worker) on a local
Ray instance — bound to loopback, dashboard included, unless ``distributed.dashboard_host`` says otherwise —
or on the cluster at ``distributed.address``; it joins them into one torch process group (gloo, or NCCL
on GPUs) and sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``. Each worker then runs
:func:`modelyard.training.run.train` exactly as a torchrun rank would: rank 0 writes the run directory.
With more than one machine that directory (``output_dir``) must be on storage every worker can read for
``--resume``; the data paths must resolve on every machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from modelyard.errors import ModelyardError


def launch_ray(
    recipe: Any, entry: Callable[[dict[str, Any], Any], str], payload: dict[str, Any], data: Any, console: Console
) -> Path:
    """Run ``entry`` (the training run of one rank) on ``distributed.workers`` Ray Train workers.

    Returns rank 0's run directory.
    """
    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as err:
        raise ModelyardError(
            f"distributed.backend: ray needs Ray Train ({err.name} is missing): pip install 'modelyard[ray]'"
        ) from None
    import torch

    cfg = recipe.distributed
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else torch.cuda.is_available()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage upload from an offline tool
    started = False
    if not ray.is_initialized():
        if cfg.address is None:  # a private local instance: every Ray service on loopback
            ray.init(
                address="local",
                num_cpus=max(int(cfg.workers * cfg.cpus_per_worker) + 1, os.cpu_count() or 1),
                include_dashboard=False,
                dashboard_host=cfg.dashboard_host,
                _node_ip_address="127.0.0.1",
                log_to_driver=True,
                logging_level="ERROR",
            )
        else:
            ray.init(address=cfg.address, log_to_driver=True, logging_level="ERROR")
        started = True
    where = cfg.address or "a local Ray instance (127.0.0.1)"
    console.print(f"[bold]distributed[/] Ray Train · {cfg.workers} workers on {where}" + (" · GPUs" if use_gpu else ""))
    from ray.util.queue import Queue

    storage = Path(tempfile.mkdtemp(prefix="modelyard-ray-"))  # Ray Train's own experiment state; removed after
    answer = Queue(maxsize=1)  # rank 0 → driver: the run directory (an actor, so it works across machines)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"entry": entry, "payload": payload, "data": data, "answer": answer},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(cfg.timeout_s)),
        run_config=RunConfig(
            name="modelyard-train", storage_path=str(storage), failure_config=FailureConfig(max_failures=0)
        ),
    )
    try:
        try:
            result = trainer.fit()
        except Exception as err:  # Ray wraps a worker's exception (or its death) in its own error type
            raise ModelyardError(f"Ray Train run failed: {_root_message(err)}") from None
        if getattr(result, "error", None) is not None:
            raise ModelyardError(f"Ray Train run failed: {_root_message(result.error)}")
        return Path(answer.get(timeout=cfg.timeout_s))
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()


def _root_message(err: BaseException) -> str:
    """The innermost cause's message (Ray nests the worker's exception inside its own errors)."""
    seen = err
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip() or type(seen).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else text


def _ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the same run a torchrun rank trains; rank 0 sends its run directory to the driver."""
    import ray.train

    from modelyard.training.distributed import BACKEND_ENV

    ctx = ray.train.get_context()
    os.environ[BACKEND_ENV] = "ray"
    # Ray's torch backend has set MASTER_ADDR/PORT and joined the process group; rank and size: from its context.
    os.environ.update(
        RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()), LOCAL_RANK=str(ctx.get_local_rank())
    )
    run_dir = config["entry"](config["payload"], config["data"])
    if ctx.get_world_rank() == 0:
        config["answer"].put(run_dir)
