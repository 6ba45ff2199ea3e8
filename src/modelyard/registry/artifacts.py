"""What the registry accepts as a model: files it can show hold no pickle, plus the weights the model's kind declares.

Two checks, in this order. Here, for every file of ``model/`` whatever its kind: no symlinks, no
pickle-format suffixes, no content that is a pickle, and the formats the registry can read without
loading anything are well formed (safetensors headers, JSON, the members of zip archives such as
``.npz``: an object array in a ``.npy`` member is a pickle). Then the model's kind, recorded as
``model_type`` in ``modelyard.json``, says which files make a complete model in its own safe format
(``ModelKind.check_artifacts``: safetensors for torch kinds, JSON + ``.npz`` for tfidf-logreg, JSON
settings + a parquet shot pool for prompt models); the registry has no weight format of its own.

Nothing here unpickles anything. Pickle detection uses :mod:`pickletools` (a disassembler that
only walks opcodes), safetensors validation reads the JSON header only and ``.npy`` headers are
parsed as Python literals by :mod:`numpy.lib.format` (never their data).
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from modelyard._internal.integrity import check_file
from modelyard._internal.layout import MODEL_META
from modelyard.errors import ModelError, StorageError
from modelyard.kinds import kind_of_meta
from modelyard.registry.names import RegistryError

# Formats that are pickles (or wrap one) in the PyTorch / scikit-learn world: refused by name.
PICKLE_SUFFIXES = frozenset({".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".dill"})
_SNIFF_BYTES = 1 << 16
_ZIP_MAGIC = b"PK\x03\x04"
_SAFE_HINT = "save the model in its kind's safe format (safetensors, JSON, .npz without object arrays)"


def looks_like_pickle(data: bytes) -> bool:
    """Whether ``data`` (a file's first bytes) is a pickle stream or a PyTorch zip holding one.

    A protocol-2+ pickle starts with ``PROTO`` (``0x80``) and a protocol byte; protocol 0/1 pickles
    have no magic, so the bytes are walked with :func:`pickletools.genops` (never executed): a
    stream that parses as opcodes up to ``STOP``, or up to the end of the sniffed prefix, is a pickle.

    Args:
        data: The file's first bytes (up to 64 KiB is enough).

    Returns:
        True for a pickle (or a zip with a ``.pkl`` member), False otherwise.
    """
    if not data:
        return False
    if data[:1] == b"\x80" and len(data) > 1 and 1 <= data[1] <= 5:
        return True
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return any(n.endswith((".pkl", "data.pkl")) for n in zf.namelist())
        except zipfile.BadZipFile:
            # A truncated prefix of a large zip: PyTorch's format names its pickle "data.pkl".
            return b"data.pkl" in data
    n_ops = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(data)):
            n_ops += 1
            if opcode.name == "STOP":
                return n_ops >= 2
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False
    return n_ops >= 8 and len(data) >= _SNIFF_BYTES  # opcodes all the way through a full prefix


def check_safetensors(path: Path) -> None:
    """Validate a safetensors file by its header alone (8-byte length + JSON, tensors filling the file exactly),
    reading no tensors: :func:`modelyard._internal.integrity.check_file`, as a registry refusal.

    Raises:
        RegistryError: Not a well-formed safetensors file.
    """
    try:
        check_file(path, _SAFE_HINT)
    except StorageError as err:
        raise RegistryError(str(err)) from None


def _npy_dtype(member: IO[bytes], path: Path, name: str) -> np.dtype:
    """The dtype in a ``.npy`` header (a Python literal parsed by numpy with ``ast.literal_eval``; no data is read)."""
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    try:
        version = npy_format.read_magic(member)
        if version not in readers:
            raise ValueError(f"format version {version[0]}.{version[1]} cannot be checked")
        _shape, _fortran, dtype = readers[version](member)
    except (ValueError, SyntaxError, EOFError, OSError) as err:
        raise RegistryError(f"{path}: member '{name}' is not a readable .npy array ({err})") from None
    return dtype


def check_zip_members(path: Path) -> None:
    """Refuse a zip archive (``.npz`` and any other zip) that holds a pickle, reading only member headers.

    A member is a pickle when its name has a pickle suffix (PyTorch's ``data.pkl``), when it is a ``.npy``
    array of Python objects (``dtype=object`` or a structured dtype with an object field: numpy writes those
    as a pickle after the header, and ``np.load(..., allow_pickle=True)`` would run it), or when its first
    bytes are a pickle stream.

    Raises:
        RegistryError: Naming the archive, the member and the fix.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                suffix = Path(name).suffix.lower()
                if suffix in PICKLE_SUFFIXES and suffix != ".npy":
                    raise RegistryError(f"{path}: member '{name}' is a pickle; pickles are never loaded - {_SAFE_HINT}")
                with zf.open(info) as member:
                    if suffix == ".npy":
                        dtype = _npy_dtype(member, path, name)
                        if dtype.hasobject:
                            raise RegistryError(
                                f"{path}: member '{name}' is an array of Python objects (dtype {dtype}), which numpy "
                                "stores as a pickle; pickles are never loaded - save fixed-width arrays instead "
                                "(e.g. strings with .astype(str))"
                            )
                    elif looks_like_pickle(member.read(_SNIFF_BYTES)):
                        raise RegistryError(
                            f"{path}: member '{name}' is a pickle; pickles are never loaded - {_SAFE_HINT}"
                        )
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise RegistryError(f"{path}: not a readable zip archive ({err})") from None


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{path}: invalid JSON ({err})") from None


def check_file_content(path: Path) -> None:
    """One file of a model directory: never a pickle, and well formed when the registry can read its format.

    A safetensors file is validated by its header (its first bytes are a length and may look like anything);
    every other file is sniffed for a pickle, a zip archive (``.npz``) member by member; JSON must parse.

    Raises:
        RegistryError: Naming the file and the fix.
    """
    if path.suffix.lower() == ".safetensors":
        check_safetensors(path)
        return
    with open(path, "rb") as f:
        prefix = f.read(_SNIFF_BYTES)
    if prefix[:4] == _ZIP_MAGIC:
        check_zip_members(path)
    elif looks_like_pickle(prefix):
        raise RegistryError(f"{path}: the content is a pickle; pickles are never loaded - {_SAFE_HINT}")
    if path.suffix.lower() == ".json":
        _check_json(path)


def validate_model_dir(model_dir: Path) -> list[Path]:
    """Check every file of a model directory before it enters the store.

    Refused: symlinks anywhere, special files, pickle-format suffixes (:data:`PICKLE_SUFFIXES`), any
    file whose content is a pickle whatever its name (a zip archive such as ``.npz``: any member that is one,
    object arrays included), malformed safetensors, JSON or zip files, and a directory without
    ``modelyard.json`` or without the files its model kind declares (``ModelKind.check_artifacts``).

    Args:
        model_dir: The run's ``model/`` directory.

    Returns:
        The files to copy, relative to ``model_dir``, sorted.

    Raises:
        RegistryError: Naming the offending file and the fix.
    """
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise RegistryError(f"{model_dir}: not a model directory (missing, or a symlink)")
    files: list[Path] = []
    for root, dirs, names in os.walk(model_dir, followlinks=False):
        for d in dirs:
            if (Path(root) / d).is_symlink():
                raise RegistryError(f"{Path(root) / d}: symlinks are not accepted in a registered model")
        for name in names:
            path = Path(root) / name
            rel = path.relative_to(model_dir)
            if path.is_symlink():
                raise RegistryError(f"{path}: symlinks are not accepted in a registered model")
            if not path.is_file():
                raise RegistryError(f"{path}: not a regular file")
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise RegistryError(f"{path}: '{path.suffix}' files are pickle-based and never loaded; {_SAFE_HINT}")
            check_file_content(path)
            files.append(rel)
    _check_weights(model_dir, files, Path())
    return sorted(files)


def _check_weights(model_dir: Path, files: list[Path], sub: Path) -> None:
    """``model_dir`` has a ``modelyard.json`` and the safe weights its model kind declares.

    The kind recorded as ``model_type`` decides what its weights are (``ModelKind.check_artifacts``):
    safetensors for torch kinds, JSON + ``.npz`` read with ``allow_pickle=False`` for tfidf-logreg, JSON settings
    + a readable parquet shot pool for a prompt model, each member's own check for an ensemble.
    """
    where = model_dir / sub
    if not (where / MODEL_META).is_file():
        raise RegistryError(f"{where}: no {MODEL_META}; not a modelyard model directory")
    meta = json.loads((where / MODEL_META).read_text(encoding="utf-8"))
    try:
        kind = kind_of_meta(meta, where / MODEL_META)
    except ModelError as err:
        raise RegistryError(str(err)) from None
    if kind.check_artifacts is None:
        raise RegistryError(
            f"{where}: model kind '{kind.name}' declares no safe artefact format; it cannot be registered"
        )
    try:
        kind.check_artifacts(where, meta)
    except ValueError as err:
        raise RegistryError(f"{where}: {err}") from None
