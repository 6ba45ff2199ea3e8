"""Data-parallel training: who this process is in a torchrun / Ray Train job, and the few collectives the loop needs.

    torchrun -m modelyard train RECIPE          (or modelyard train RECIPE distributed.backend=torchrun …)
      └─ every rank: the same recipe → the same prepared splits → World.join() (gloo on CPU, NCCL on GPU)
           ├─ rank 0 alone creates and writes the run directory; the others learn its path from rank 0
           ├─ each global batch (length-grouped, as in a one-process run) is dealt out rank by rank
           │  (``shard``); DDP averages the gradients, scaled so every step equals the one-process step
           ├─ heartbeats (step, host, pid) go to the job's own c10d store; progress.jsonl shows them
           └─ a dead or stalled rank fails the whole run after ``distributed.timeout_s``, named by rank and host

Nothing here schedules processes or moves tensors itself: torch's elastic launcher (the engine behind
``torchrun``) or Ray Train starts the processes, ``torch.distributed`` and DDP do the communication.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from modelyard.errors import ModelyardError

# Environment of a process started by torchrun / torch's elastic launcher / Ray Train's torch backend.
_LAUNCHED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BACKEND_ENV = "MODELYARD_DISTRIBUTED_BACKEND"  # set by the Ray Train worker: "ray" (otherwise: torchrun)


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"
    timeout_s: float = 300.0
    host: str = ""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory, logs and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def describe(self) -> dict[str, Any]:
        """What ``manifest.json`` records."""
        return {"backend": self.backend, "world_size": self.size}

    # ------------------------------------------------------------------ setup
    def join(self, device: torch.device) -> None:
        """Join the job's process group: gloo on CPU, NCCL when training on CUDA (Ray Train has joined already)."""
        import torch.distributed as dist

        if self.active and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(seconds=self.timeout_s))

    def place(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (``LOCAL_RANK``) on a multi-GPU machine."""
        if device.type == "cuda" and self.active:
            device = torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
            torch.cuda.set_device(device)
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP around the training forward pass (the plain module stays what is evaluated and saved)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Trainer's default: tolerate parameters a kind's forward pass leaves unused (a pooler, a frozen branch).
        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    def seed_dropout(self, seed: int) -> None:
        """Give each rank its own torch RNG stream (dropout masks) once the model is built.

        Initial weights are rank 0's anyway (DDP broadcasts them); the data order and text augmentation come
        from their own seeded generators, so they stay identical on every rank. Rank 0 keeps ``seed``.
        """
        if self.active:
            torch.manual_seed(seed + 7919 * self.rank)

    # ------------------------------------------------------------------ per step
    def shard(self, idx: np.ndarray) -> tuple[np.ndarray, float, int]:
        """This rank's share of one global batch: ``(indices, loss weight, real examples)``.

        Ranks take every ``size``-th example of the (length-sorted) batch, so their shares have alike lengths.
        The weight ``len(share) * size / len(batch)`` makes DDP's average of the ranks' gradients the gradient
        of the mean loss over the whole batch — the one-process step, whatever the worker count or remainder.
        A rank left without an example (a last batch smaller than the world) runs one with weight 0: it must
        still join the all-reduce.
        """
        if not self.active:
            return idx, 1.0, len(idx)
        mine = idx[self.rank :: self.size]
        if not len(mine):
            return idx[:1], 0.0, 0
        return mine, len(mine) * self.size / len(idx), len(mine)

    def accumulating(self, model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's ``no_sync`` for the micro-batches of a gradient-accumulation group before its last one."""
        if self.active and not sync and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (loss sums and example counts for the logs)."""
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather_json(self, value: Any) -> list[Any]:
        """Every rank's JSON-able ``value``, in rank order (sent as UTF-8 bytes, never pickled)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: len(data)] = data
        out = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.size)]
        dist.all_gather(out, padded)
        return [json.loads(bytes(o[: int(s.item())].tolist()).decode()) for o, s in zip(out, sizes, strict=True)]

    def from_main(self, value: Any) -> Any:
        """Rank 0's JSON-able ``value`` on every rank."""
        return self.gather_json(value if self.is_main else None)[0]

    @contextlib.contextmanager
    def failures_named(self, heartbeats: Heartbeats | None) -> Iterator[None]:
        """Turn a collective that failed (a rank died, or stalled past the timeout) into one error naming it."""
        try:
            yield
        except RuntimeError as err:  # torch.distributed.DistBackendError is a RuntimeError
            if not self.active:
                raise
            raise ModelyardError(self._failure_message(err, heartbeats)) from err

    def _failure_message(self, err: BaseException, heartbeats: Heartbeats | None) -> str:
        beats = heartbeats.read() if heartbeats is not None else []
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        me = f"rank {self.rank} ({self.host})"
        if not beats:
            return f"distributed training failed on {me}: {first}"
        latest = max(b["step"] for b in beats)
        now = time.time()
        behind = sorted((b for b in beats if b["rank"] != self.rank), key=lambda b: (b["step"], b["time"]))
        # a rank whose process is gone (same host), else one that fell behind or went quiet past the timeout
        culprit = next((b for b in behind if _process_gone(b)), None) or next(
            (b for b in behind if b["step"] < latest or now - b["time"] > self.timeout_s), None
        )
        if culprit is None:
            missing = sorted(set(range(self.size)) - {b["rank"] for b in beats})
            if missing:
                return f"rank {missing[0]} never reported a heartbeat; {me} gave up: {first}"
            return f"distributed training failed on {me}: {first}"
        state = "died" if _process_gone(culprit) else "stopped responding"
        return (
            f"rank {culprit['rank']} on host {culprit['host']} (pid {culprit['pid']}) {state}: its last heartbeat was "
            f"step {culprit['step']}, {now - culprit['time']:.0f} s ago, while the run had reached step {latest} "
            f"(distributed.timeout_s={self.timeout_s:g}); the run failed instead of hanging ({first})"
        )


def rank_state(epoch_loss_sum: float, epoch_loss_count: float) -> dict[str, Any]:
    """What a checkpoint keeps of each rank: its RNG streams (Python, NumPy, torch) and its partial loss sums."""
    from modelyard._internal.runtime import rng_state

    out: dict[str, Any] = {"rng": rng_state(), "torch_cpu": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state().tolist()
    return out | {"epoch_loss_sum": epoch_loss_sum, "epoch_loss_count": epoch_loss_count}


def restore_rank_state(state: dict[str, Any]) -> tuple[float, float]:
    """Put back what :func:`rank_state` saved for this rank; returns its partial loss sums."""
    from modelyard._internal.runtime import set_rng_state

    set_rng_state(state["rng"])
    torch.set_rng_state(torch.tensor(state["torch_cpu"], dtype=torch.uint8))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["torch_cuda"], dtype=torch.uint8))
    return state["epoch_loss_sum"], state["epoch_loss_count"]


def _process_gone(beat: dict[str, Any]) -> bool:
    """Whether a rank on this host has exited (other hosts cannot be checked from here)."""
    if beat["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(beat["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Heartbeats:
    """Per-rank ``(step, time, host, pid)`` in the job's c10d key-value store — the engine's own rendezvous store.

    Every rank writes its own key at each optimizer step; rank 0 reads them all for ``progress.jsonl`` and to
    name the rank that died or stalled when a collective fails. A store client costs one round trip per beat.
    """

    def __init__(self, world: World) -> None:
        import torch.distributed as dist

        self.world = world
        prefix = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MODELYARD_RUN_KEY") or "run"
        self.prefix = f"modelyard/{prefix}/heartbeat/"
        self.store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=min(world.timeout_s, 30)),
            wait_for_workers=False,
        )

    def beat(self, step: int) -> None:
        record = {
            "rank": self.world.rank,
            "host": self.world.host,
            "pid": os.getpid(),
            "step": step,
            "time": time.time(),
        }
        with contextlib.suppress(Exception):  # a heartbeat must never be what stops training
            self.store.set(f"{self.prefix}{self.world.rank}", json.dumps(record))

    def read(self) -> list[dict[str, Any]]:
        """The latest heartbeat of every rank that has sent one (rank order)."""
        out = []
        for rank in range(self.world.size):
            key = f"{self.prefix}{rank}"
            with contextlib.suppress(Exception):
                if self.store.check([key]):
                    out.append(json.loads(self.store.get(key)))
        return out

    def progress_field(self) -> list[dict[str, Any]]:
        """What a ``progress.jsonl`` line records about each rank: step, host, pid and seconds since its beat."""
        now = time.time()
        return [
            {
                "rank": b["rank"],
                "host": b["host"],
                "pid": b["pid"],
                "step": b["step"],
                "age_s": round(now - b["time"], 2),
            }
            for b in self.read()
        ]


def launched() -> bool:
    """Whether a launcher (torchrun, torch's elastic agent, Ray Train) started this process as one rank of a job."""
    return all(k in os.environ for k in _LAUNCHED) and int(os.environ["WORLD_SIZE"]) >= 1


def current_world(cfg: Any) -> World:
    """This process's :class:`World` from the launcher's environment; rank 0 of 1 when none started it."""
    if not launched():
        return World(backend="none", timeout_s=cfg.timeout_s, host=socket.gethostname())
    return World(
        rank=int(os.environ["RANK"]),
        size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=os.environ.get(BACKEND_ENV, "torchrun"),
        timeout_s=cfg.timeout_s,
        host=socket.gethostname(),
    )


def require_distributed(recipe: Any, kind: Any) -> None:
    """Refuse, before any work, the recipes that data-parallel training does not cover (and say why)."""
    from modelyard.errors import ConfigError

    if recipe.distributed.backend == "none" and not launched():
        return
    if not kind.trains_in_loop or kind.can("generative"):
        raise ConfigError(
            f"distributed training runs the gradient loop of classifier kinds; `{kind.name}` "
            + ("is a one-shot fit" if not kind.trains_in_loop else "is a generative model")
            + " — set distributed.backend: none"
        )
    if recipe.train.privacy is not None:
        raise ConfigError(
            "train.privacy (DP-SGD) clips and noises per example in one process; "
            "set distributed.backend: none for private training"
        )
