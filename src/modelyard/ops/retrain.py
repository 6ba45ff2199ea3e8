"""``modelyard retrain NAME``: learn from feedback, and promote only a challenger that is not worse.

1. The champion is the version behind the alias (``production``); its registered splits are the
   original data and its ``recipe.yaml`` is the recipe.
2. Feedback (the latest label per prediction, then per normalised text or per image) is split
   deterministically into a training part and a held-out slice (``holdout`` fraction, by hash).
3. Training data = the champion's train split with feedback applied (``ops/feedback_data.py``): an
   item the user labelled takes the feedback label (conflicts resolved in favour of feedback), new
   items are added; items of the original test split or the feedback hold-out never enter it. Image
   feedback counts only where the client sent the image back with it (the log keeps no pixels).
4. The challenger is trained with the champion's recipe (``modelyard.training.run.train`` on
   these exact splits), registered, and both models are scored on the original test split and on
   the feedback hold-out. It is promoted only if on both it is not worse than the champion by more
   than ``margin`` on ``metric``. The decision and every number go to the registry's audit trail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from modelyard._internal.io import read_json
from modelyard._internal.layout import RECIPE
from modelyard.config import apply_overrides, recipe_from_dict
from modelyard.data import multi_hot
from modelyard.evaluation.metrics import compute_metrics
from modelyard.kinds import kind_of_meta
from modelyard.models.loading import load
from modelyard.ops.feedback_data import build_image_training_data, build_training_data, text_key
from modelyard.registry.names import RegistryError
from modelyard.registry.store import Registry
from modelyard.rundir import RunDir
from modelyard.training.run import load_splits, train

__all__ = ["build_image_training_data", "build_training_data", "retrain", "text_key"]


def _score(clf: Any, part: Any, labels: list[str]) -> dict[str, Any] | None:
    """Accuracy and macro-F1 of ``clf`` on a text frame (``text``, ``label``) or an image split.

    A multi-label model: macro-F1 over its labels at its own thresholds, and ``accuracy`` is the subset accuracy
    (the share of texts whose whole label set is right).
    """
    if len(part) == 0:
        return None
    if getattr(clf, "multi_label", False):
        from modelyard.evaluation.multilabel_metrics import compute_multilabel_metrics

        probs = np.asarray(clf.predict_proba(part["text"].astype(str).tolist()), dtype=np.float64)
        m = compute_multilabel_metrics(multi_hot(part["label"], labels), probs, labels, clf.thresholds)
        return {"accuracy": m["subset_accuracy"], "macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"], "n": m["n"]}
    if isinstance(part, pd.DataFrame):
        inputs: list[Any] = part["text"].astype(str).tolist()
        y = np.array([labels.index(lab) for lab in part["label"]])
    else:  # ImageSplit: uint8 (N, C, H, W) and label ids
        inputs, y = list(part.images), np.asarray(part.labels)
    probs = np.asarray(clf.predict_proba(inputs), dtype=np.float64)
    m = compute_metrics(y, probs, labels)
    return {k: m[k] for k in ("accuracy", "macro_f1", "n") if k in m}


def _feedback_data(
    registry: Registry, app: str, champion: Any, feedback: list[dict[str, Any]], holdout: float
) -> tuple[Any, Any, Any, dict[str, int]]:
    """``(champion splits, challenger data, feedback hold-out, counts)`` for a text or an image model."""
    splits = load_splits(champion.path)
    labels = list(champion.labels)
    meta = read_json(RunDir(champion.path).model_meta_path)
    if kind_of_meta(meta, champion.path).modality != "image":
        multi_label = meta.get("task") == "multi-label-classification"  # feedback labels are sets joined by |
        return (splits, *build_training_data(splits, feedback, labels, holdout, multi_label=multi_label))
    clf = load(champion.path)
    data, hold, counts = build_image_training_data(
        splits, feedback, labels, holdout, registry.feedback_image, clf.to_array
    )
    if not counts["feedback_images"]:
        raise RegistryError(
            f"app '{app}' v{champion.version} is an image model and none of its {len(feedback)} feedback items "
            "carries its image (the prediction log never keeps pixels); send the image back with the feedback: "
            'POST /v1/feedback {"prediction_id": ..., "label": ..., "image": "<base64 of the same file>"}'
        )
    return splits, data, hold, counts


def retrain(
    registry: Registry,
    app: str,
    *,
    alias: str = "production",
    margin: float = 0.01,
    metric: str = "macro_f1",
    holdout: float = 0.3,
    output_dir: Path | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train a challenger from the champion's data plus feedback; promote it only if not worse.

    Args:
        registry: The registry.
        app: The app name.
        alias: Alias of the champion (and the one a winning challenger takes).
        margin: How much worse (absolute, on ``metric``) the challenger may be and still win.
        metric: ``macro_f1`` or ``accuracy``.
        holdout: Fraction of feedback texts held out for evaluation.
        output_dir: Where the challenger's run goes (default ``<store>/retrain/<app>``).
        overrides: Dotted overrides applied to the champion's recipe (e.g. ``train.epochs=1``).
        console: Progress output.

    Returns:
        The decision record (also in the audit trail as action ``retrain``).

    Raises:
        RegistryError: Unknown app/alias, no feedback, a bad metric/margin, or an image model none of
            whose feedback carries its image.
    """
    import yaml

    if metric not in ("macro_f1", "accuracy"):
        raise RegistryError(f"--metric {metric!r}: use macro_f1 or accuracy")
    if not 0 <= holdout < 1 or margin < 0:
        raise RegistryError("--holdout must be in [0, 1) and --margin >= 0")
    console = console or Console(stderr=True)
    champion = registry.resolve(app, alias)
    feedback = registry.feedback(app)
    if not feedback:
        raise RegistryError(f"app '{app}' has no feedback yet; nothing to retrain on (POST /v1/feedback)")
    labels = list(champion.labels)
    splits, data, hold, counts = _feedback_data(registry, app, champion, feedback, holdout)
    console.print(f"retrain {app}: champion v{champion.version}; data {counts}", highlight=False)

    raw = yaml.safe_load((champion.path / RECIPE).read_text(encoding="utf-8"))
    raw = apply_overrides(raw, list(overrides or []))
    raw["output_dir"] = str(Path(output_dir or registry.store / "retrain" / app).resolve())
    raw.setdefault("data", {})["labels"] = labels  # same label order, so the server can hot-swap
    raw["data"]["extra_train"] = []  # the champion's splits already contain them
    recipe = recipe_from_dict(raw, base_dir=champion.path, source=str(champion.path / RECIPE))
    run_dir = train(recipe, data=data, console=console)

    champ_clf, chal_clf = load(champion.path), load(run_dir)
    scores = {
        "champion": {"test": _score(champ_clf, splits.test, labels), "feedback": _score(champ_clf, hold, labels)},
        "challenger": {"test": _score(chal_clf, splits.test, labels), "feedback": _score(chal_clf, hold, labels)},
    }
    checks = {}
    for part in ("test", "feedback"):
        champ, chal = scores["champion"][part], scores["challenger"][part]
        if champ is not None and chal is not None:
            checks[part] = chal[metric] >= champ[metric] - margin
    promote = bool(checks) and all(checks.values())
    version = registry.register(run_dir, app, actor="retrain").version
    decision = {
        "champion": champion.version,
        "challenger": version,
        "metric": metric,
        "margin": margin,
        "checks": checks,
        "promoted": promote,
        "scores": scores,
        "data": counts,
        "run": str(run_dir),
    }
    registry.record(app, "retrain", version, decision, actor="retrain")
    if promote:
        registry.promote(
            app, version, alias, actor="retrain", detail={"reason": "retrain", "champion": champion.version}
        )
    console.print(
        f"challenger v{version} {'promoted to ' + alias if promote else 'not promoted'}: "
        + ", ".join(
            f"{part} {metric} {scores['challenger'][part][metric]:.4f} vs {scores['champion'][part][metric]:.4f}"
            for part in checks
        ),
        highlight=False,
    )
    return decision
