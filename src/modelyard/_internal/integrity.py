"""Damaged files are detected and named, never half-used.

A finished run records the size and sha256 of every file of its ``model/`` folder in ``manifest.json``
(``files``), written by :func:`record_checksums` just before the run is renamed into place. Loading a model
checks them (:func:`verify_recorded`), so a truncated or garbled ``model.safetensors`` or ``modelyard.json``
fails with one line naming the file and what to do, before any library reads it. For files without a record
(runs from before checksums, checkpoints, exports) :func:`check_file` validates the format's own structure:
a safetensors header whose tensors fit the file, JSON that parses.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from modelyard._internal.io import read_json, sha256_file, write_json
from modelyard._internal.layout import MANIFEST, MODEL_DIR
from modelyard._internal.storage import storage_errno
from modelyard.errors import StorageError

FILES_KEY = "files"
RERUN_OR_RESTORE = "re-run the stage that wrote it, or restore the folder from a backup"


def damaged(path: Path, detail: str, fix: str = RERUN_OR_RESTORE) -> StorageError:
    """The one-line error for a damaged file."""
    return StorageError(f"{path} is damaged ({detail}); {fix}")


def file_records(root: Path, folder: str = MODEL_DIR, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` for every regular file under ``root/folder`` (``""``: all of root)."""
    base = Path(root) / folder if folder else Path(root)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel not in skip:
            out[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def verify_records(
    root: Path, records: dict[str, dict[str, Any]], fix: str = RERUN_OR_RESTORE, prefix: str = ""
) -> None:
    """Check files against their records (size, then sha256).

    Raises:
        StorageError: a file is missing, has another size (truncated) or another sha256 (garbled).
    """
    for rel, rec in records.items():
        if prefix and not rel.startswith(prefix + "/"):
            continue
        path = Path(root) / rel
        if not path.is_file():
            raise StorageError(f"{path} is missing; {fix}")
        size = path.stat().st_size
        if size != rec.get("bytes"):
            raise damaged(path, f"{size} bytes, {rec.get('bytes')} were written: truncated or overwritten", fix)
        if sha256_file(path) != rec.get("sha256"):
            raise damaged(path, "its sha256 differs from the one recorded when it was written", fix)


def record_checksums(run_dir: Path) -> None:
    """Add the size and sha256 of every ``model/`` file to the run's ``manifest.json`` (if it has one)."""
    manifest_path = Path(run_dir) / MANIFEST
    if not manifest_path.is_file() or not (Path(run_dir) / MODEL_DIR).is_dir():
        return
    manifest = read_json(manifest_path)
    manifest[FILES_KEY] = file_records(run_dir)
    write_json(manifest_path, manifest)


def recorded(run_dir: Path) -> dict[str, dict[str, Any]] | None:
    """The file records of a run's manifest, or ``None`` (no manifest, an older run, or a damaged manifest)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise damaged(path, "not readable JSON") from None
    files = manifest.get(FILES_KEY) if isinstance(manifest, dict) else None
    return files if isinstance(files, dict) else None


def verify_recorded(run_dir: Path, fix: str = RERUN_OR_RESTORE, prefix: str = MODEL_DIR) -> bool:
    """Check the recorded files under ``prefix`` against the disk; ``False`` when the run records none.

    Raises:
        StorageError: a file is missing, has another size (truncated) or another sha256 (garbled).
    """
    records = recorded(run_dir)
    if records is None:
        return False
    verify_records(run_dir, records, fix, prefix)
    return True


def check_file(path: Path, fix: str = RERUN_OR_RESTORE) -> None:
    """Validate a file by its format's structure (safetensors header and extents, JSON syntax).

    Raises:
        StorageError: the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path} is missing; {fix}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        _check_safetensors(path, fix)
    elif suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise damaged(path, f"not valid JSON: {err}", fix) from None


def _check_safetensors(path: Path, fix: str) -> None:
    """The header (8-byte length + JSON, at most 100 MB read) and that its tensors exactly fill the file."""
    size = path.stat().st_size
    bad = "not a safetensors file: "
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise damaged(path, f"{bad}{size} bytes, shorter than its header length", fix)
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > min(size - 8, 100 << 20):
            raise damaged(path, f"{bad}its header declares {n} bytes, the file has {size}: truncated or garbled", fix)
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise damaged(path, f"{bad}its header is not JSON: garbled", fix) from None
    if not isinstance(header, dict):
        raise damaged(path, f"{bad}its header is not a JSON object: garbled", fix)
    end = 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise damaged(path, f"{bad}tensor {name!r} has bad data_offsets: garbled", fix)
        end = max(end, int(offsets[1]))
    if 8 + n + end != size:
        raise damaged(path, f"{bad}{size} bytes, its header describes {8 + n + end}: truncated or extended", fix)


T = TypeVar("T")


def read_checked(path: Path, reader: Callable[[Path], T], fix: str = RERUN_OR_RESTORE) -> T:
    """``reader(path)``, with a missing or unparseable file turned into one line naming it and what to do.

    For the files a stage reads back (splits, metrics, history, reports' inputs): a truncated Parquet file or a
    garbled JSON file is a :class:`StorageError`, never a library traceback.
    """
    import zipfile

    try:
        return reader(path)
    except FileNotFoundError:
        raise StorageError(f"{path} is missing; {fix}") from None
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as err:  # JSON, Parquet (Arrow), .npz, short reads
        if isinstance(err, OSError) and storage_errno(err) is not None and "deserialize" not in str(err):
            raise  # a fault of the disk itself: described by the caller's storage mapping
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise damaged(path, first[:200], fix) from None
