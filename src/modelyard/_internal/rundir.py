"""Creating and finishing run directories (written under a temporary name, renamed into place only when
complete) and the run manifest. :class:`modelyard.rundir.RunDir` reads a finished run."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from modelyard._internal.integrity import record_checksums
from modelyard._internal.layout import INCOMPLETE, MANIFEST, MODEL_DIR, STAGING
from modelyard._internal.storage import make_dir, storage_errors
from modelyard.errors import ModelyardError

__all__ = ["INCOMPLETE", "discard_run", "find_run", "finish_run", "new_run_id", "run_manifest", "start_run"]
_PACKAGES = (
    "modelyard",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "scikit-learn",
    "pydantic",
    "fastapi",
    "accelerate",
)


def new_run_id() -> str:
    """Sortable, unique run id: UTC timestamp plus random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def start_run(output_dir: Path, *, resumable: bool = True) -> tuple[str, Path]:
    """Create ``<output_dir>/<run-id>.incomplete`` and return ``(run_id, path)``.

    A run that cannot be resumed (``resumable=False``) is staged under a hidden ``.staging-<run-id>`` name
    instead, so that even a ``SIGKILL`` leaves nothing visible; the next run in the folder removes it.

    Two runs started into the same ``output_dir`` at once never share a folder: the id is random and the
    folder is created exclusively (a clash is retried with a new id).

    Raises:
        StorageError: ``output_dir`` cannot be created or written (one line naming it and the fix).
    """
    make_dir(output_dir, "output_dir")
    for leftover in output_dir.glob(f"{DISCARDED}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    _remove_dead_staging(output_dir)
    for _ in range(8):
        run_id = new_run_id()
        path = output_dir / (f"{STAGING}{run_id}" if not resumable else f"{run_id}{INCOMPLETE}")
        lock = _StagingLock(path) if not resumable else None  # taken before the folder exists: see below
        try:
            with storage_errors("the run directory", path, "output_dir"):
                path.mkdir()
        except FileExistsError:
            if lock is not None:
                lock.release()
            continue
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return run_id, path
    raise ModelyardError(f"could not create a new run directory in {output_dir}")  # pragma: no cover


def finish_run(tmp_dir: Path) -> Path:
    """Record the model's checksums in the manifest, then rename the completed run into place (one ``rename``)."""
    final = tmp_dir.with_name(tmp_dir.name.removesuffix(INCOMPLETE).removeprefix(STAGING))
    if final.exists():
        raise ModelyardError(f"run directory {final} already exists; not overwriting it")
    with storage_errors("manifest.json", tmp_dir / MANIFEST, "output_dir"):
        record_checksums(tmp_dir)
    os.rename(tmp_dir, final)
    _StagingLock.release_for(tmp_dir)
    return final


# A run that cannot be resumed (pretraining) is staged under a hidden ``.staging-<run-id>`` name so that a
# process killed with SIGKILL (no ``except`` runs) leaves nothing a user sees. Whether its writer is still
# alive is told by an advisory lock (``fcntl.flock``) on a sibling ``.staging-<run-id>.lock`` file: the
# kernel drops it when the process dies, however it dies, so the next run in that folder removes only the
# staging folders of dead writers — never one a concurrent run is still writing. Written by hand: no library
# we use offers "remove what a dead process left" (filelock's locks are released the same way but it cannot
# tell a stale lock from a live one without trying, which is what this does).
_LOCK_SUFFIX = ".lock"


class _StagingLock:
    held: dict[Path, int] = {}

    def __init__(self, staging: Path) -> None:
        self.path = staging.with_name(staging.name + _LOCK_SUFFIX)
        self.staging = staging
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        _flock(fd, blocking=True)
        _StagingLock.held[staging] = fd

    def release(self) -> None:
        _StagingLock.release_for(self.staging)

    @classmethod
    def release_for(cls, staging: Path) -> None:
        fd = cls.held.pop(staging, None)
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(staging.with_name(staging.name + _LOCK_SUFFIX))
        os.close(fd)


def _flock(fd: int, *, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no stale-writer detection, staging folders are kept
        return blocking
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _remove_dead_staging(output_dir: Path) -> None:
    """Remove ``.staging-*`` folders (and their lock files) whose writer has died."""
    for lock_path in output_dir.glob(f"{STAGING}*{_LOCK_SUFFIX}"):
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            continue
        try:
            if _flock(fd, blocking=False):  # nobody holds it: the writer is gone
                shutil.rmtree(lock_path.with_name(lock_path.name.removesuffix(_LOCK_SUFFIX)), ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
        finally:
            os.close(fd)
    for staging in output_dir.glob(f"{STAGING}*"):
        # the lock file is created before the folder and removed only after it is renamed or removed, so a
        # staging folder without one was left by a writer that died
        if staging.is_dir() and not staging.with_name(staging.name + _LOCK_SUFFIX).exists():
            shutil.rmtree(staging, ignore_errors=True)


DISCARDED = ".discarded-"


def discard_run(tmp_dir: Path) -> None:
    """Remove an incomplete run that has nothing worth resuming.

    When it cannot be removed now (memory exhausted, a busy file system), it is renamed to a hidden
    ``.discarded-*`` name, which needs no memory and never looks like a run; the next :func:`start_run` in
    that folder removes it.
    """
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if tmp_dir.exists():
        with contextlib.suppress(OSError):
            os.rename(tmp_dir, tmp_dir.with_name(f"{DISCARDED}{tmp_dir.name}"))
    _StagingLock.release_for(tmp_dir)


def find_run(path: Path) -> Path:
    """Validate that ``path`` is a finished run directory (has ``manifest.json`` and ``model/``)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelyardError(f"run directory not found: {path}")
    if path.name.endswith(INCOMPLETE):
        raise ModelyardError(f"{path} is an unfinished run; resume it with `modelyard train RECIPE --resume {path}`")
    if not (path / MANIFEST).is_file() or not (path / MODEL_DIR).is_dir():
        raise ModelyardError(f"{path} is not a modelyard run directory (no manifest.json / model/)")
    return path


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a run's numbers."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(cwd: Path) -> str | None:
    """Commit of the git checkout holding ``cwd`` (with ``-dirty`` if modified), or ``None``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(device: Any) -> dict[str, Any]:
    """Where the run ran."""
    import torch

    info: dict[str, Any] = {
        "device": str(device),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_manifest(
    recipe: Any,
    run_id: str,
    t0: float,
    *,
    seed: dict[str, Any],
    train_seconds: float,
    device: Any,
    precision: str,
    data_fingerprints: dict[str, str],
    data_sizes: dict[str, int],
    model: dict[str, Any],
    resumed_from: str | None = None,
    epochs_completed: int = 0,
    best_epoch: int | None = None,
    stopped_early: bool = False,
    total_steps: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """The ``manifest.json`` of a finished run: what ran, on what data and code, where, and how long.

    One schema for every kind of run (fine-tune, prompt, classical); ``extra`` adds run-kind fields.
    """
    import time

    now = time.time()
    return {
        "run_id": run_id,
        "name": recipe.name,
        "task": recipe.task,
        "seed": seed,
        "command": sys.argv,
        "started_at": t0,
        "finished_at": now,
        "wall_time_s": round(now - t0, 2),
        "train_time_s": round(train_seconds, 2),
        **extra,
        "resumed_from": resumed_from,
        "versions": package_versions(),
        "git_commit": git_commit(recipe.base_dir),
        "hardware": hardware(device),
        "precision": precision,
        "data_fingerprints": data_fingerprints,
        "data_sizes": data_sizes,
        "model": model,
        "epochs_completed": epochs_completed,
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "total_steps": total_steps,
    }
