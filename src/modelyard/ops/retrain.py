"""``modelyard retrain NAME``: learn from feedback, and promote only a challenger that is not worse.

1. The champion is the version behind the alias (``production``); its registered splits are the
   original data and its ``recipe.yaml`` is the recipe.
2. Feedback (the latest label per prediction, then per normalised text) is split deterministically
   into a training part and a held-out slice (``holdout`` fraction, by text hash).
3. Training data = the champion's train split with feedback applied: a text the user labelled
   takes the feedback label (conflicts resolved in favour of feedback), new texts are added,
   duplicates dropped; texts of the original test split or the feedback hold-out never enter it.
4. The challenger is trained with the champion's recipe (``modelyard.training.run.train`` on
   these exact splits), registered, and both models are scored on the original test split and on
   the feedback hold-out. It is promoted only if on both it is not worse than the champion by more
   than ``margin`` on ``metric``. The decision and every number go to the registry's audit trail.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from modelyard._internal.io import read_json
from modelyard._internal.layout import RECIPE
from modelyard.config import apply_overrides, recipe_from_dict
from modelyard.data import PreparedData
from modelyard.evaluation.metrics import compute_metrics
from modelyard.kinds import kind_of_meta
from modelyard.models.loading import load
from modelyard.registry.names import RegistryError
from modelyard.registry.store import Registry
from modelyard.rundir import RunDir
from modelyard.training.run import load_splits, train


def text_key(text: str) -> str:
    """Dedup key of a text: NFKC, whitespace collapsed, case kept."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).split())


def _holdout(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def build_training_data(
    splits: Any, feedback: list[dict[str, Any]], labels: list[str], holdout: float
) -> tuple[Any, pd.DataFrame, dict[str, int]]:
    """Apply feedback to the champion's splits.

    Args:
        splits: The champion's :class:`~modelyard.data.PreparedData`.
        feedback: ``Registry.feedback`` rows (``text``, ``label``, ``at``).
        labels: The champion's labels; feedback with another label is ignored (counted).
        holdout: Fraction of feedback texts held out for evaluation.

    Returns:
        ``(prepared data for the challenger, feedback hold-out frame, counts)``.
    """

    counts = {"feedback_rows": len(feedback), "feedback_unknown_label": 0}
    latest: dict[str, tuple[Any, str]] = {}
    for row in feedback:
        if row["label"] not in labels:
            counts["feedback_unknown_label"] += 1
            continue
        key = text_key(row["text"])
        if key and (key not in latest or row["at"] >= latest[key][0]):
            latest[key] = (row["at"], row["label"])
    test_keys = {text_key(t) for t in splits.test["text"]}
    held = {k: lab for k, (_, lab) in latest.items() if _holdout(k) < holdout and k not in test_keys}
    learn = {k: lab for k, (_, lab) in latest.items() if k not in held and k not in test_keys}
    counts["feedback_texts"] = len(latest)
    counts["feedback_in_test_ignored"] = sum(1 for k in latest if k in test_keys)
    counts["feedback_holdout"] = len(held)

    def apply(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
        frame = frame.copy()
        keys = frame["text"].map(text_key)
        frame = frame[~keys.isin(held)]  # hold-out texts must not be trained on
        keys = frame["text"].map(text_key)
        fb = keys.map(learn)
        conflicts = int((fb.notna() & (fb != frame["label"])).sum())
        frame.loc[fb.notna(), "label"] = fb[fb.notna()]
        before = len(frame)
        frame = frame.assign(_k=keys).drop_duplicates("_k", keep="last").drop(columns="_k")
        return frame, conflicts, before - len(frame)

    train, c_train, d_train = apply(splits.train)
    valid, c_valid, d_valid = apply(splits.valid)
    seen = set(train["text"].map(text_key)) | set(valid["text"].map(text_key))
    new = pd.DataFrame(
        [{"text": k, "label": lab} for k, lab in learn.items() if k not in seen], columns=["text", "label"]
    )
    counts.update(
        conflicts_resolved_for_feedback=c_train + c_valid,
        duplicates_dropped=d_train + d_valid,
        feedback_added=len(new),
        train_rows=len(train) + len(new),
    )
    train = pd.concat([train, new], ignore_index=True)
    report = {**(splits.report or {}), "retrain": counts}
    prepared = PreparedData(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        test=splits.test.reset_index(drop=True),
        labels=list(labels),
        report=report,
        fingerprints=dict(splits.fingerprints or {}),
    )
    hold = pd.DataFrame([{"text": k, "label": lab} for k, lab in held.items()], columns=["text", "label"])
    return prepared, hold, counts


def _score(clf: Any, frame: pd.DataFrame, labels: list[str]) -> dict[str, Any] | None:

    if frame.empty:
        return None
    probs = np.asarray(clf.predict_proba(frame["text"].astype(str).tolist()), dtype=np.float64)
    y = np.array([labels.index(lab) for lab in frame["label"]])
    m = compute_metrics(y, probs, labels)
    return {k: m[k] for k in ("accuracy", "macro_f1", "n") if k in m}


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
        RegistryError: Unknown app/alias, no feedback, a bad metric/margin, or an image model (its feedback
            carries no pixels to learn from).
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
    if kind_of_meta(read_json(RunDir(champion.path).model_meta_path), champion.path).modality != "text":
        raise RegistryError(
            f"app '{app}' v{champion.version} is an image model: its feedback names each image by type, size and "
            "sha256 only (the prediction log never keeps pixels), so there are no feedback images to retrain on"
        )
    splits = load_splits(champion.path)
    labels = list(champion.labels)
    data, hold, counts = build_training_data(splits, feedback, labels, holdout)
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
