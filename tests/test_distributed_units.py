"""The pieces of data-parallel training that need no second process (the real runs: tests/test_distributed.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.config import load_recipe
from modelyard.errors import ConfigError, ModelyardError
from modelyard.training.distributed import World, current_world, require_distributed
from modelyard.training.launch import describe_failures
from tests.conftest import write_tiny_recipe


def test_shards_cover_the_global_batch_and_weights_restore_its_mean() -> None:
    rng = np.random.default_rng(0)
    for size in (2, 3, 4):
        for n in (1, 2, 5, 16, 17):
            idx = np.arange(100, 100 + n)
            shares = [World(rank=r, size=size).shard(idx) for r in range(size)]
            real = [s[0] for s in shares if s[2]]
            assert sorted(np.concatenate(real).tolist()) == idx.tolist()  # every example once, none twice
            # DDP averages the ranks' gradients: mean_r(weight_r * mean_loss_r) must equal the batch's mean loss
            loss = rng.normal(size=200)
            ddp = np.mean([w * loss[i - 100].mean() for i, w, _ in shares])
            assert ddp == pytest.approx(loss[idx - 100].mean())
            assert all(len(s[0]) >= 1 for s in shares)  # a rank without examples still joins the all-reduce


def test_one_process_world_is_a_no_op() -> None:
    world = World()
    idx = np.arange(7)
    shard, weight, n = world.shard(idx)
    assert shard is idx and weight == 1.0 and n == 7
    assert world.all_sum([1.5, 2.0]) == [1.5, 2.0]
    assert world.gather_json({"a": [1, "é"]}) == [{"a": [1, "é"]}]
    model = torch.nn.Linear(2, 2)
    assert world.wrap(model, torch.device("cpu")) is model
    assert world.describe() == {"backend": "none", "world_size": 1}


def test_launcher_environment_is_detected(monkeypatch: pytest.MonkeyPatch, tmp_path, tiny_backbone) -> None:
    recipe = load_recipe(write_tiny_recipe(tmp_path, tmp_path / "x.csv", tiny_backbone))
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert current_world(recipe.distributed).size == 1
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    world = current_world(recipe.distributed)
    assert (world.rank, world.size, world.local_rank, world.backend) == (3, 4, 1, "torchrun")
    assert not world.is_main and world.active


def test_recipes_distributed_training_does_not_cover_are_refused(tmp_path, tiny_backbone) -> None:
    import yaml

    from modelyard.kinds import get_kind

    path = write_tiny_recipe(tmp_path, tmp_path / "x.csv", tiny_backbone)
    raw = yaml.safe_load(path.read_text()) | {"model": {"type": "tfidf-logreg"}}
    (tmp_path / "tfidf.yaml").write_text(yaml.safe_dump(raw))
    tfidf = load_recipe(tmp_path / "tfidf.yaml", ["distributed.backend=torchrun"])
    with pytest.raises(ConfigError, match="one-shot fit"):
        require_distributed(tfidf, get_kind(tfidf.model.type))
    private = load_recipe(path, ["distributed.backend=torchrun", "train.privacy.epsilon=8"])
    with pytest.raises(ConfigError, match="train.privacy"):
        require_distributed(private, get_kind(private.model.type))
    with pytest.raises(ConfigError, match="distributed.address"):
        load_recipe(path, ["distributed.address=auto"])
    with pytest.raises(ConfigError, match="distributed.workers"):
        load_recipe(path, ["distributed.workers=0"])


def test_a_failed_job_names_each_rank_earliest_first() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    killed = ProcessFailure(local_rank=1, pid=4242, exitcode=-9, error_file="/nonexistent")
    killed.timestamp = 100
    raised = ProcessFailure(local_rank=0, pid=4241, exitcode=1, error_file="/nonexistent")
    raised.message = "Traceback …\nModelyardError: rank 1 stopped responding"
    raised.timestamp = 130
    text = describe_failures(ChildFailedError("train", {0: raised, 1: killed}))
    assert text.index("rank 1") < text.index("rank 0")
    assert "rank 1 on host" in text and "(pid 4242) killed by SIGKILL" in text
    assert "rank 0" in text and "exited with status 1: ModelyardError: rank 1 stopped responding" in text
    assert isinstance(ModelyardError(text), ModelyardError)


class _Beats:
    def __init__(self, beats: list[dict]) -> None:
        self.beats = beats

    def read(self) -> list[dict]:
        return self.beats


def test_a_failed_collective_names_the_dead_or_stalled_rank() -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    host, now = socket.gethostname(), time.time()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that has exited
    world = World(rank=0, size=3, timeout_s=10, host=host)
    err = RuntimeError("Connection closed by peer\nmore gloo detail")

    def message(beats: list[dict]) -> str:
        with pytest.raises(ModelyardError) as caught, world.failures_named(_Beats(beats)):
            raise err
        return str(caught.value)

    me = {"rank": 0, "host": host, "pid": os.getpid(), "step": 12, "time": now}
    alive = {"rank": 1, "host": host, "pid": os.getpid(), "step": 12, "time": now}
    dead = {"rank": 2, "host": host, "pid": dead_pid, "step": 12, "time": now}
    text = message([me, alive, dead])
    assert text.startswith(f"rank 2 on host {host} (pid {dead_pid}) died") and "Connection closed by peer" in text
    stalled = {**alive, "step": 9, "time": now - 30}
    text = message([me, stalled, {**dead, "pid": os.getpid()}])
    assert text.startswith("rank 1 on host") and "stopped responding" in text and "step 9, 30 s ago" in text
    assert message([me, alive]).startswith("rank 2 never reported a heartbeat")
    # one process: a RuntimeError is not a distributed failure and passes through unchanged
    with pytest.raises(RuntimeError, match="Connection closed"), World().failures_named(None):
        raise err
