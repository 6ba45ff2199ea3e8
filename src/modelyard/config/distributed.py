"""The ``distributed:`` section: data-parallel training on torchrun (DDP) or Ray Train."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from modelyard.config._base import _Stage


class DistributedConfig(_Stage):
    """How many processes train one run, and which engine starts them.

    ``backend: none`` trains in this process. ``torchrun`` runs PyTorch DDP: under an external
    ``torchrun … -m modelyard train RECIPE`` the launcher's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``) is detected and this section's ``workers`` is ignored; without one, ``modelyard
    train`` starts ``workers`` local processes through torch's own elastic launcher. ``ray`` runs the
    same loop in a Ray Train ``TorchTrainer``. ``train.batch_size`` stays the global batch whatever the
    worker count: each optimizer step sees the same examples as a one-process run.
    """

    backend: Literal["none", "torchrun", "ray"] = Field(
        "none", description="none (one process), torchrun (PyTorch DDP) or ray (Ray Train TorchTrainer)."
    )
    workers: int = Field(
        1, ge=1, le=1024, description="Processes that train together (torchrun: on this machine; ray: in total)."
    )
    timeout_s: float = Field(
        300.0,
        gt=0,
        description="A worker that dies or stops answering for this long fails the whole run, naming its rank and "
        "host (the collective timeout; also the rendezvous wait).",
    )
    address: str | None = Field(
        None,
        description="ray: an existing cluster (`auto`, `ray://host:10001`, `host:6379`); null starts a local Ray "
        "instance bound to loopback.",
    )
    use_gpu: bool | None = Field(None, description="ray: one GPU per worker; null = when CUDA is visible.")
    cpus_per_worker: float = Field(1.0, gt=0, description="ray: CPUs reserved for each worker.")
    dashboard_host: str = Field(
        "127.0.0.1",
        description="ray (local instance): where its dashboard and job API listen; loopback unless you opt out "
        "with e.g. 0.0.0.0.",
    )

    @model_validator(mode="after")
    def _ray_only_keys(self) -> DistributedConfig:
        if self.backend != "ray" and self.address is not None:
            raise ValueError("`distributed.address` is a Ray cluster address; set `distributed.backend: ray`")
        return self
