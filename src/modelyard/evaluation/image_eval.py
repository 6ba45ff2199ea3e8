"""``modelyard evaluate`` for image runs: re-score the run's splits or score a labelled image source."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._internal.layout import REPORT
from modelyard.config import DataConfig, Recipe
from modelyard.data.images import _read_source
from modelyard.errors import DataError
from modelyard.evaluation.image_report import mistake_grid_html
from modelyard.evaluation.predictions import print_metrics
from modelyard.evaluation.report import add_stage_section
from modelyard.evaluation.scoring import score_and_write
from modelyard.models.loading import load
from modelyard.rundir import RunDir


def evaluate_image_run(run: Path, recipe: Recipe, data: str | Path | None, console: Any) -> tuple[Path, dict[str, Any]]:
    """``modelyard evaluate`` for an image run: re-score its valid/test splits, or a labelled image source.

    ``data`` may be anything ``data.path`` accepts for images (a class-per-subfolder folder, IDX files,
    ``bundled:NAME``); its images are brought to the model's size and channels and all of them are scored.

    Raises:
        ModelyardError: the source can't be read or holds labels the model doesn't know.
    """
    clf = load(run)
    rd = RunDir(run)
    index = {lab: i for i, lab in enumerate(clf.labels)}
    if data is None:
        saved = rd.splits()
        splits = {
            s: (getattr(saved, s).images, getattr(saved, s).labels, getattr(saved, s).refs) for s in ("valid", "test")
        }
        out_dir = run
        history = rd.history()
        steps = rd.steps()
    else:
        h, _ = clf.image_size
        cfg = DataConfig(path=str(data), image_size=h, channels=clf.channels, on_bad_image=recipe.data.on_bad_image)
        raw = _read_source(cfg, Path.cwd())
        unknown = sorted(set(raw.labels) - set(index))
        if unknown:
            raise DataError(f"{data}: labels {unknown[:10]} are not classes of this model ({clf.labels})")
        images = np.stack([clf.to_array(np.asarray(im).transpose(1, 2, 0)) for im in raw.images])
        y = np.array([index[lab] for lab in raw.labels], dtype=np.int64)
        splits = {"eval": (images, y, raw.refs)}
        name = Path(str(data)).name.replace(":", "-") or "data"
        out_dir = rd.evaluations_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        out_dir.mkdir(parents=True, exist_ok=True)
        history, steps = [], []
    metrics, predictions = score_and_write(
        out_dir,
        f"{recipe.name} · {run.name} · evaluation",
        clf,
        {split: (list(images), y, list(refs)) for split, (images, y, refs) in splits.items()},
        history,
        steps,
        {"run": run.name, "model": clf.meta.get("model_type"), "evaluated": str(data or "run splits (valid, test)")},
    )
    focus = "test" if "test" in splits else "eval"
    images, y, refs = splits[focus]
    probs = predictions[predictions["split"] == focus][[f"prob_{lab}" for lab in clf.labels]].to_numpy()
    grid = mistake_grid_html(np.asarray(images), np.asarray(y), probs, clf.labels, list(refs))
    add_stage_section(out_dir / REPORT, "image-mistakes", "Most confident mistakes (images)", grid)
    print_metrics(console, metrics)
    console.print(f"report: {out_dir / REPORT}")
    return out_dir, metrics
