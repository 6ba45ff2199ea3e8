"""Load a trained model for prediction: ``modelyard.load(RUN_DIR).predict([...])``.

The kind recorded in ``model/modelyard.json`` decides how: the registry of model kinds
(:mod:`modelyard.kinds`) hands the directory to that kind's loader. Only the exported ``model/``
directory is read, so the server and the Python API never depend on the training code or on pickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard._internal.integrity import check_file, verify_recorded
from modelyard._internal.io import read_json
from modelyard._internal.layout import INCOMPLETE, MODEL_DIR, MODEL_META
from modelyard.errors import ModelError, ModelyardError
from modelyard.kinds import kind_of_meta


def model_dir_of(path: str | Path) -> Path:
    """Accept a run directory or a model directory; return the model directory."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"not found: {path}")
    if path.name.endswith(INCOMPLETE):
        raise ModelError(f"{path} is an unfinished run; resume it with `modelyard train RECIPE --resume {path}`")
    if (path / MODEL_DIR / MODEL_META).is_file():
        return path / MODEL_DIR
    if (path / MODEL_META).is_file():
        return path
    if (path / MODEL_DIR).is_dir():
        raise ModelError(f"{path / MODEL_DIR / MODEL_META} is missing; {FIX}")
    raise ModelError(f"{path} is neither a run directory (with model/) nor a modelyard model directory")


def read_model_meta(model_dir: Path) -> dict[str, Any]:
    """The parsed ``modelyard.json`` of a model directory."""
    meta_path = Path(model_dir) / MODEL_META
    if not meta_path.is_file():
        raise ModelError(f"{model_dir} has no {MODEL_META}; not a modelyard model directory")
    return read_json(meta_path)


def load(path: str | Path, *, device: str = "auto", batch_size: int = 64) -> Any:
    """Load a run directory (or its ``model/`` folder) with the loader of the kind that wrote it.

    Every kind's classifier has ``labels``, ``predict(texts)``, ``predict_proba(texts)`` and ``info()``
    (image kinds take images instead of texts).
    """
    model_dir = model_dir_of(path)
    check_model_files(model_dir)
    meta = read_model_meta(model_dir)
    kind = kind_of_meta(meta, model_dir / MODEL_META)
    try:
        return kind.load(model_dir, meta, device=device, batch_size=batch_size)
    except ModelyardError:
        raise
    except Exception as err:  # noqa: BLE001 - a library's parse error on a file the checks above could not vouch for
        if not _looks_damaged(err):
            raise
        raise ModelError(f"{model_dir}: a model file is damaged ({type(err).__name__}: {err}); {FIX}") from None


def require_classifier(path: str | Path, verb: str) -> None:
    """Refuse a generative run (``task: image-generation``) where a classifier is needed, saying what to do instead.

    Raises:
        ModelError: the run's model generates images.
    """
    model_dir = model_dir_of(path)
    check_model_files(model_dir)  # a damaged modelyard.json is named as such, as load() would
    meta = read_model_meta(model_dir)
    if meta.get("task") == "image-generation":
        raise ModelError(
            f"{path} is a generative model ({meta.get('model_type')}); `modelyard {verb}` needs a classifier. "
            "Use `modelyard generate RUN` for its images, or `serve.ood_from=RUN` (a vae run) to flag unusual "
            "inputs to an image classifier"
        )


FIX = "re-run `modelyard train` for this run, or restore the run directory from a backup"


def check_model_files(model_dir: Path) -> None:
    """Refuse a model folder with a damaged file, naming it, before any library reads it.

    A run's ``manifest.json`` records the size and sha256 of every ``model/`` file; those are checked. A folder
    without records (older runs, a bare model folder) gets the structural checks: every safetensors header and
    extent, every JSON file.

    Raises:
        StorageError: the damaged or missing file and what to do.
    """
    run_dir = model_dir.parent
    if model_dir.name == MODEL_DIR and verify_recorded(run_dir, FIX):
        return
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in (".safetensors", ".json"):
            check_file(path, FIX)


def _looks_damaged(err: BaseException) -> bool:
    name = type(err).__name__
    return name in {"SafetensorError", "JSONDecodeError", "UnicodeDecodeError", "BadZipFile", "ArrowInvalid"} or (
        "Error while deserializing" in str(err)
    )
