"""Resumable checkpoints in safetensors + JSON only (no pickle, no ``torch.load``).

A checkpoint restores model, optimizer, scheduler, RNG states and the position in the data, so a
resumed run ends with the same weights as an uninterrupted one. ``torch.save`` would be one line,
but it is pickle: loading a checkpoint someone hands you would run their code. The optimizer state
is therefore flattened into named tensors plus a JSON skeleton by hand.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from modelyard._internal.integrity import check_file
from modelyard._internal.io import read_json, write_json
from modelyard._internal.runtime import model_state
from modelyard._internal.storage import ensure_free_space, storage_errors
from modelyard.errors import ModelyardError


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        entry: dict[str, Any] = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                name = f"{pid}.{key}"
                tensors[name] = value.detach().cpu().contiguous()
                entry[key] = {"tensor": name}
            else:
                entry[key] = value
        skeleton["state"][str(pid)] = entry
    return tensors, skeleton


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], skeleton: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in skeleton["state"].items():
        state[int(pid)] = {
            k: (tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v) for k, v in entry.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}


def save_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer],
    scheduler: Any,
    trainer_state: dict[str, Any],
    extra_modules: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Write a complete checkpoint to ``directory`` atomically (temp dir, then rename).

    ``extra_modules`` (e.g. an EMA copy of the model) are saved as ``<name>.safetensors``. ``optimizer`` may be
    several by name (a GAN's generator and discriminator), saved as ``optimizer-<name>.*``; ``scheduler`` may be
    None (a constant learning rate).
    """
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = state_bytes(model)
    # the optimizer's state is about twice the weights for Adam-style optimizers; extra modules are model-sized
    needed = weights * (3 + len(extra_modules or {}))
    ensure_free_space(directory.parent, needed, f"checkpoint {directory.name}", "output_dir")
    with storage_errors(f"checkpoint {directory.name}", tmp, "output_dir", needed):
        _write_checkpoint(tmp, model, optimizer, scheduler, trainer_state, extra_modules)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights and buffers as saved (what a free-space check asks for)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def _write_checkpoint(
    tmp: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    extra_modules: dict[str, torch.nn.Module] | None,
) -> None:
    tmp.mkdir(parents=True)
    save_file(model_state(model), str(tmp / "model.safetensors"))
    for name, module in (extra_modules or {}).items():
        save_file(model_state(module), str(tmp / f"{name}.safetensors"))
    for stem, opt in _optimizer_files(optimizer).items():
        opt_tensors, opt_skeleton = _flatten_optimizer(opt.state_dict())
        save_file(opt_tensors, str(tmp / f"{stem}.safetensors"))
        write_json(tmp / f"{stem}.json", opt_skeleton)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    sched = scheduler.state_dict() if scheduler is not None else None
    write_json(tmp / "trainer_state.json", {**trainer_state, "scheduler": sched})


def _optimizer_files(optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """File stem → optimizer: ``optimizer`` for one, ``optimizer-<name>`` for several."""
    if isinstance(optimizer, dict):
        return {f"optimizer-{name}": opt for name, opt in optimizer.items()}
    return {"optimizer": optimizer}


def load_checkpoint(
    directory: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer],
    scheduler: Any,
    extra_modules: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the trainer state.

    Raises:
        ModelyardError: the checkpoint is missing or incomplete.
    """
    needed = [
        "model.safetensors",
        *(f"{stem}.{ext}" for stem in _optimizer_files(optimizer) for ext in ("safetensors", "json")),
        "rng.safetensors",
        "trainer_state.json",
        *(f"{name}.safetensors" for name in extra_modules or {}),
    ]
    missing = [n for n in needed if not (directory / n).is_file()]
    if missing:
        raise ModelyardError(f"checkpoint {directory} is incomplete (missing {', '.join(missing)}); cannot resume")
    fix = "this run cannot be resumed from it (only the latest checkpoint is kept); start a new run"
    for name in needed:
        check_file(directory / name, fix)
    try:
        return _restore(directory, model, optimizer, scheduler, extra_modules)
    except ModelyardError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError) as err:  # well-formed files that do not fit this model
        raise ModelyardError(f"checkpoint {directory} does not match this run's model ({err}); {fix}") from None


def _match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout again.

    safetensors stores tensors contiguous, so the moments of a channels-last conv weight come back in the
    default layout. The fused AdamW kernel walks parameter, gradient and moments as flat memory and assumes one
    layout for all: with mismatched strides every update after a resume would pair the wrong elements.
    """
    for group in opt.param_groups:
        for param in group["params"]:
            for key, value in opt.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    opt.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _restore(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer],
    scheduler: Any,
    extra_modules: dict[str, torch.nn.Module] | None,
) -> dict[str, Any]:
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(device)))
    for name, module in (extra_modules or {}).items():
        module.load_state_dict(load_file(str(directory / f"{name}.safetensors"), device=str(device)))
    for stem, opt in _optimizer_files(optimizer).items():
        opt.load_state_dict(
            _unflatten_optimizer(
                load_file(str(directory / f"{stem}.safetensors")), read_json(directory / f"{stem}.json")
            )
        )
        _match_param_layouts(opt)
    state = read_json(directory / "trainer_state.json")
    sched = state.pop("scheduler")
    if scheduler is not None:
        scheduler.load_state_dict(sched)
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return state
