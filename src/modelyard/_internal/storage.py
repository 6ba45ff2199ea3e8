"""Faults of the machine as one-line errors: disk full, unwritable or missing paths, damaged files.

Every stage writes through the helpers here or in :mod:`modelyard._internal.io` (temporary name → fsync →
rename), so a failed or killed write never leaves a half-written file where a complete one is expected.
What this module adds:

* :func:`describe_storage_error` turns an ``OSError`` — or a library's own exception that wraps one
  (``SafetensorError``, pyarrow's and ONNX's I/O errors, torch's stream writer) — into one sentence that names
  the path and the fix, or says it is not a storage fault;
* :func:`storage_errors` applies it around a write (``what`` names the artefact, ``field`` the recipe key or
  option to change);
* :func:`ensure_free_space` refuses a large write before it starts when the size is known (checkpoints, model
  weights, ONNX exports, caches): ``no space left on /y while writing model/model.safetensors (needs ~90 MB,
  3 MB free)``;
* :func:`make_dir` creates an output folder or says why it cannot be;
* :func:`atomic_dir` builds a folder under a temporary sibling name and renames it into place.

Hand-written because no library maps errno values to advice; the mapping itself is the standard ``errno``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from modelyard.errors import StorageError

# errno → (what happened, what to do). The fix names ``field`` when the caller knows it.
_ERRNO = {
    errno.ENOSPC: ("no space left on {mount}", "free space there or choose another {field}"),
    errno.EDQUOT: ("disk quota exceeded on {mount}", "free space there or choose another {field}"),
    errno.EFBIG: ("file too large for {mount}", "choose another {field} (a filesystem allowing larger files)"),
    errno.EROFS: ("read-only file system", "choose a writable {field}"),
    errno.EACCES: ("permission denied", "choose a writable {field} or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a writable {field} or fix its permissions"),
    errno.ENOENT: ("a parent folder does not exist", "create it or choose another {field}"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another {field}"),
    errno.EISDIR: ("it is a folder", "choose a file name for {field}"),
    errno.EIO: ("input/output error (a failing disk or network filesystem?)", "check the disk, then retry"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter {field}"),
}
# Libraries that wrap an OSError in their own exception keep only its text: recognise it by the C library's words.
_STRERROR = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "File too large": errno.EFBIG,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "Input/output error": errno.EIO,
}
_FULL = (errno.ENOSPC, errno.EDQUOT)


def human_bytes(n: float) -> str:
    """``3 MB``, ``1.2 GB`` (decimal units, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "kB", "MB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The mount point holding ``path`` (or its nearest existing parent)."""
    path = _existing(path)
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    """Bytes free for an unprivileged writer on the filesystem of ``path``; ``None`` when unknown."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def storage_errno(err: BaseException) -> int | None:
    """The errno of a storage fault carried by ``err`` (an ``OSError`` or a library error wrapping one)."""
    if isinstance(err, OSError) and err.errno in _ERRNO:
        return err.errno
    text = str(err)
    for words, code in _STRERROR.items():
        if words in text:
            return code
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err:
        return storage_errno(cause)
    return None


def describe_storage_error(
    err: BaseException,
    path: Path | str | None = None,
    what: str | None = None,
    field: str | None = None,
    needed: int | None = None,
) -> str | None:
    """One line for a storage fault, naming the path and the fix; ``None`` when ``err`` is not one.

    Args:
        err: The exception.
        path: What was being written (default: the ``OSError``'s own file name).
        what: The artefact, e.g. ``model/model.safetensors`` (default: the path).
        field: The recipe key or option that chose the location, e.g. ``output_dir`` or ``--output``.
        needed: Bytes the write needed, when known.
    """
    code = storage_errno(err)
    if code is None:
        return None
    if path is None and isinstance(err, OSError):
        path = err.filename
    target = Path(path) if path else None
    where = mount_point(target) if target is not None else Path("the disk")
    happened, fix = _ERRNO[code]
    happened = happened.format(mount=where)
    fix = fix.format(field=field or "location")
    subject = f"while writing {what}" if what else (f"while writing {target}" if target else "while writing")
    if what and target is not None and str(target) not in what:
        subject += f" ({target})"
    if code in _FULL:
        free = free_bytes(target) if target is not None else None
        sizes = [f"needs ~{human_bytes(needed)}"] if needed else []
        if free is not None:
            sizes.append(f"{human_bytes(free)} free")
        size_note = f" ({', '.join(sizes)})" if sizes else ""
        return f"{happened} {subject}{size_note}; {fix}"
    return f"cannot write {target if target is not None else what}: {happened}; {fix}"


@contextlib.contextmanager
def storage_errors(what: str, path: Path | str, field: str | None = None, needed: int | None = None) -> Iterator[None]:
    """Turn a storage fault raised inside the block into a :class:`~modelyard.errors.StorageError`."""
    try:
        yield
    except StorageError as err:
        inner = getattr(err, "where", None)
        if field is None or inner is None or inner[2] is not None or err.__cause__ is None:
            raise
        # a nested write described the file but not which setting chose its place: name the setting too
        message = describe_storage_error(err.__cause__, inner[0], inner[1], field, inner[3])
        raise _storage_error(message or str(err), inner[0], inner[1], field, inner[3]) from err.__cause__
    except Exception as err:  # noqa: BLE001 - only storage faults are translated; the rest re-raised as is
        message = describe_storage_error(err, path, what, field, needed)
        if message is None:
            raise
        raise _storage_error(message, path, what, field, needed) from err


def _storage_error(
    message: str, path: Path | str | None, what: str | None, field: str | None, needed: int | None
) -> StorageError:
    err = StorageError(message)
    err.where = (path, what, field, needed)  # type: ignore[attr-defined]
    return err


def ensure_free_space(path: Path, needed: int, what: str, field: str | None = None) -> None:
    """Refuse a write of ``needed`` bytes under ``path`` that cannot fit (plus a 5% + 1 MB margin).

    Raises:
        StorageError: ``no space left on /mnt while writing X (needs ~90 MB, 3 MB free); free space …``.
    """
    free = free_bytes(path)
    if free is None or free >= needed * 1.05 + (1 << 20):
        return
    where = mount_point(path)
    raise StorageError(
        f"no space left on {where} while writing {what} (needs ~{human_bytes(needed)}, {human_bytes(free)} free); "
        f"free space there or choose another {field or 'location'}"
    )


def make_dir(path: Path, field: str, what: str | None = None) -> Path:
    """Create ``path`` (and its parents) for output, or raise a one-line error naming it and ``field``.

    Args:
        path: The folder.
        field: The recipe key or option that chose it (``output_dir``, ``--output``), named in the fix.
        what: How to call the folder in the message (default: ``field``).

    Raises:
        StorageError: e.g. ``cannot create output_dir /proc/x: a parent folder does not exist; …``.
    """
    path = Path(path)
    what = what or field
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"cannot create {what} {path}: a file of that name exists; choose another {field}") from None
    except OSError as err:
        code = storage_errno(err)
        if code is None:
            raise
        happened, fix = _ERRNO[code]
        happened = happened.format(mount=mount_point(path))
        raise StorageError(f"cannot create {what} {path}: {happened}; {fix.format(field=field)}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "read-only file system" if read_only else "permission denied"
        raise StorageError(f"cannot write to {what} {path}: {why}; choose a writable {field}")
    return path


def tree_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` (rename), on error it is removed.

    A kill at any moment leaves ``final`` as it was or complete: before the swap only the hidden
    ``.staging-*`` sibling exists; during the swap the old folder is renamed to a hidden ``.old-*`` sibling
    first, and :func:`recover_dir` (called here, and by readers) puts it back if the new one never arrived.
    """
    final = Path(final)
    recover_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = final.with_name(f"{STAGING_PREFIX}{final.name}-{token}")
    tmp.mkdir()
    try:
        yield tmp
        old = final.with_name(f"{OLD_PREFIX}{final.name}-{token}")
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """Finish or undo an interrupted :func:`atomic_dir` swap of ``final`` and remove stale staging folders."""
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f"{OLD_PREFIX}{final.name}-*"))
    if olds and not final.exists():
        with contextlib.suppress(OSError):
            os.rename(olds[-1], final)  # killed between the two renames: the old state comes back
            olds = olds[:-1]
    for stale in [*olds, *parent.glob(f"{STAGING_PREFIX}{final.name}-*")]:
        if _owner_gone(stale):
            shutil.rmtree(stale, ignore_errors=True)


def _owner_gone(path: Path) -> bool:
    """Whether a staging folder is abandoned (not touched for a minute: its writer was killed or finished)."""
    import time

    try:
        return time.time() - path.stat().st_mtime > 60
    except OSError:
        return False


@contextlib.contextmanager
def run_lock(folder: Path, stage: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for ``stage`` (e.g. two ``compress`` runs on one run directory).

    The second caller is refused at once with the holder's process id, instead of both writing the same
    variants. The lock is an ``flock`` on ``<folder>/.<stage>.lock``, released by the kernel when the holder
    exits (also when it is killed), so a crash never leaves the run locked.

    Raises:
        StorageError: another process holds the lock, or the lock file cannot be created.
    """
    import fcntl

    path = Path(folder) / f".{stage}.lock"
    with storage_errors(f"the {stage} lock", path, "RUN"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise StorageError(
                f"another `modelyard {stage}` (process {holder}) is working on {folder}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
