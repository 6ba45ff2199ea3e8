"""Real faults of the machine for the fault-injection tests: a full disk (tmpfs), read-only folders, damaged
files, and the ``modelyard`` command run as a subprocess (so what a user sees on stderr is what is checked)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Result:
    """A finished ``modelyard`` command."""

    rc: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The last non-empty stderr line (the one-line error)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def modelyard(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> Result:
    """Run ``python -m modelyard ARGS`` and capture its output."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.pop("MODELYARD_DEBUG", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "modelyard", *map(str, args)],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(res: Result, *needles: str, status: int = 2) -> str:
    """Exit status ``status``, no traceback, and a last stderr line ``error: …`` holding every needle."""
    assert res.rc == status, (res.rc, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.error_line
    assert line.startswith("error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def visible(folder: Path) -> list[str]:
    """Names in ``folder`` a user sees (hidden staging names left out), sorted; [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every visible file under ``folder`` and its bytes (to compare a state before and after)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = path.read_bytes()
    return out


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def full_disk(size_kb: int = 3072, leave_kb: int = 0) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` filled with a filler file so about ``leave_kb`` stay free (root only)."""
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a tmpfs mount (run the tests as root)")
    mnt = Path(tempfile.mkdtemp(prefix="modelyard-tmpfs-"))
    if not _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)):
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        free = shutil.disk_usage(mnt).free
        filler = max(0, free - leave_kb * 1024)
        if filler:
            with open(mnt / ".filler", "wb") as f:
                f.write(b"\0" * filler)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """Make ``folder`` unwritable: a read-only bind mount as root (permission bits do not stop root), else chmod."""
    folder.mkdir(parents=True, exist_ok=True)
    if IS_ROOT:
        if not (_mount("--bind", str(folder), str(folder)) and _mount("-o", "remount,ro,bind", str(folder))):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
            pytest.skip("cannot bind-mount read-only here")
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    else:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(mode)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its size (what a crash or a full disk mid-copy leaves)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garble(path: Path, at: float = 0.5, n: int = 64) -> None:
    """Overwrite ``n`` bytes in the middle of a file (bit rot, a bad copy); the size stays the same."""
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * at), max(0, len(data) - n))
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a finished run directory (tests damage it)."""
    target = dest / run.name
    shutil.copytree(run, target)
    return target
