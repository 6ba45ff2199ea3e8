"""``model.type: ensemble``: several ordinary models trained in one run, averaged with weights fitted on valid.

Each member is an ordinary run (``train()`` on a sub-recipe, member i with seed ``train.seed + i``) written
under ``<run>/members/<i>-<type>/`` with its own metrics, report and predictions; its ``model/`` directory is
moved into the ensemble's self-contained ``model/members/<i>/``. The blend weights come from greedy ensemble
selection with replacement on the validation split (Caruana et al. 2004), so the ensemble's validation score
is at least the best single member's.

Saved layout::

    model/modelyard.json   text-model metadata, model_type "ensemble", "members": [{path, type, weight}, ...]
    model/members/0/       the member's own model directory (loads on its own with ``modelyard.load``)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, SerializeAsAny, field_validator
from rich.table import Table

from modelyard._internal.io import read_json, write_json
from modelyard._internal.labels import label_predictions
from modelyard._internal.layout import MANIFEST, METRICS, MODEL_DIR, MODEL_META, PREDICTIONS
from modelyard.config import EnsembleConfig, ModelSettings, validate_model_settings
from modelyard.errors import ModelError
from modelyard.kinds import FitContext, FitResult, ModelKind, get_kind, kind_of_meta, kinds_with, register_kind
from modelyard.models.loading import load
from modelyard.models.text_classifier import text_model_metadata

MEMBERS_DIR = "members"
MOVED_NOTE = "MODEL_MOVED.txt"


def _score(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(-accuracy, log-loss)``: smaller is better (accuracy first, ties broken by the lower log-loss)."""
    acc = float(np.mean(probs.argmax(axis=1) == y))
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))
    return -acc, nll


def select_weights(valid_probs: list[np.ndarray], y: np.ndarray, rounds: int) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004) on validation probabilities.

    Start from an empty ensemble; in each of ``rounds`` rounds add (with replacement) the member whose
    addition gives the best validation score of the averaged probabilities: higher accuracy, ties broken
    by lower log-loss, then by lower member index. The weights are pick counts / rounds of the prefix
    (number of rounds) with the best score, so the result scores at least as well as the best single member.

    Args:
        valid_probs: one ``(n, classes)`` probability matrix per member, rows in the same order.
        y: the ``n`` gold class indices.
        rounds: selection rounds (>= 1).

    Returns:
        Weights, one per member, summing to 1.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 (got {rounds})")
    if not valid_probs:
        raise ValueError("select_weights needs at least one member")
    probs = [np.asarray(p, dtype=np.float64) for p in valid_probs]
    y = np.asarray(y, dtype=np.int64)
    shape = probs[0].shape
    if any(p.shape != shape for p in probs) or shape[0] != len(y):
        raise ValueError(
            f"member probabilities must all have shape ({len(y)}, classes); got {[p.shape for p in probs]}"
        )
    n = len(probs)
    if len(y) == 0:  # nothing to choose on: uniform
        return np.full(n, 1.0 / n)
    counts = np.zeros(n, dtype=np.int64)
    total = np.zeros(shape, dtype=np.float64)
    best_score: tuple[float, float] | None = None
    best_counts = counts.copy()
    for r in range(1, rounds + 1):
        candidates = [(*_score((total + probs[i]) / r, y), i) for i in range(n)]
        acc, nll, pick = min(candidates)
        counts[pick] += 1
        total += probs[pick]
        if best_score is None or (acc, nll) < best_score:
            best_score, best_counts = (acc, nll), counts.copy()
    return best_counts / best_counts.sum()


class EnsembleClassifier:
    """A saved ensemble: the weighted average of its members' probabilities (same surface as the others)."""

    def __init__(self, model_dir: Path, *, device: str = "auto", batch_size: int = 64) -> None:
        self.model_dir = Path(model_dir)
        try:
            self.meta: dict[str, Any] = read_json(self.model_dir / MODEL_META)
            specs = list(self.meta["members"])
            self.labels: list[str] = list(self.meta["labels"])
            weights = np.array([float(m["weight"]) for m in specs], dtype=np.float64)
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ModelError(f"cannot load the ensemble model in {self.model_dir}: {err}") from None
        if not specs or weights.sum() <= 0 or (weights < 0).any():
            raise ModelError(f"{self.model_dir}/modelyard.json: an ensemble needs members with weights >= 0, not all 0")
        self.weights = weights / weights.sum()
        self.members: list[Any] = []
        for i, spec in enumerate(specs):
            path = (self.model_dir / str(spec["path"])).resolve()
            if not path.is_relative_to(self.model_dir.resolve()):
                raise ModelError(
                    f"{self.model_dir}: ensemble member {i} path {spec['path']!r} leaves the model directory"
                )
            member = load(path, device=device, batch_size=batch_size)
            if list(member.labels) != self.labels:
                raise ModelError(
                    f"ensemble member {i} ({spec['path']}) predicts labels {list(member.labels)}, but the ensemble "
                    f"in {self.model_dir} has {self.labels}; every member needs the same labels in the same order"
                )
            self.members.append(member)
        self.member_types = [str(spec.get("type")) for spec in specs]
        self.max_length = int(self.meta.get("max_length") or 0)
        self.device = "cpu"

    def info(self) -> dict[str, Any]:
        """JSON-able description of the model (served in responses)."""
        run_dir = self.model_dir.parent
        return {
            "name": self.meta.get("name"),
            "run_id": run_dir.name if (run_dir / MANIFEST).is_file() else None,
            "backbone": self.meta.get("backbone", "ensemble"),
            "labels": self.labels,
            "max_length": self.max_length,
            "members": [
                {"type": t, "backbone": m.meta.get("backbone"), "weight": float(w)}
                for t, m, w in zip(self.member_types, self.members, self.weights, strict=True)
            ],
        }

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), len(labels))``: the weighted sum of the members'."""
        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return out
        for member, w in zip(self.members, self.weights, strict=True):
            if w > 0:  # weight-0 members are kept (recorded) but cost nothing at prediction time
                out += w * np.asarray(member.predict_proba(texts), dtype=np.float64)
        return out

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Predicted label and per-class scores for each text."""
        return label_predictions(self.labels, self.predict_proba(texts))


def _member_recipe(recipe: Any, i: int, members_dir: Path) -> Any:
    member = recipe.model.members[i]
    sub = recipe.model_copy(
        update={
            "model": member,
            "train": recipe.train.model_copy(update={"seed": recipe.train.seed + i}),
            "output_dir": str(members_dir.resolve()),
            "name": f"{recipe.name}-member{i}"[:128],
        }
    )
    sub._base_dir = recipe.base_dir  # relative paths (backbones, teachers) still resolve against the recipe
    return sub


def _split_probs(frame: Any, split: str, expected_texts: list[str], labels: list[str], where: Path) -> np.ndarray:
    rows = frame[frame["split"] == split]
    if rows["text"].tolist() != expected_texts:
        raise ModelError(f"{where}: the {split} predictions are not in the order of the prepared {split} split")
    return rows[[f"prob_{lab}" for lab in labels]].to_numpy(dtype=np.float64)


def fit_ensemble_run(ctx: FitContext) -> FitResult:
    """Train every member as its own run, fit the weights on valid, save ``model/``; return the blend."""
    recipe, data, run_dir, console = ctx.recipe, ctx.data, ctx.run_dir, ctx.console
    labels = list(data.labels)
    index = {label: i for i, label in enumerate(labels)}
    members_dir = run_dir / MEMBERS_DIR
    members_dir.mkdir()
    model_dir = ctx.model_dir
    (model_dir / MEMBERS_DIR).mkdir(parents=True)
    splits = {s: getattr(data, s) for s in ("valid", "test")}
    texts = {s: f["text"].tolist() for s, f in splits.items()}
    ys = {s: np.array([index[x] for x in f["label"]], dtype=np.int64) for s, f in splits.items()}
    probs: dict[str, list[np.ndarray]] = {"valid": [], "test": []}
    member_rows: list[dict[str, Any]] = []
    train_seconds = 0.0
    n_params = 0
    for i, member in enumerate(recipe.model.members):
        console.rule(f"ensemble member {i}: {member.type}")
        sub = _member_recipe(recipe, i, members_dir)
        finished = ctx.train_member(sub, data)
        member_run = members_dir / f"{i}-{member.type}"
        finished.rename(member_run)
        member_meta = read_json(member_run / MODEL_DIR / MODEL_META)
        if list(member_meta["labels"]) != labels:
            raise ModelError(f"ensemble member {i} saved labels {member_meta['labels']}, expected {labels}")
        shutil.move(str(member_run / MODEL_DIR), str(model_dir / MEMBERS_DIR / str(i)))
        (member_run / MOVED_NOTE).write_text(
            f"This member's model/ directory was moved into the ensemble's model: ../../model/{MEMBERS_DIR}/{i}\n",
            encoding="utf-8",
        )
        manifest = read_json(member_run / MANIFEST)
        manifest["model_moved_to"] = f"model/{MEMBERS_DIR}/{i}"
        manifest.pop("files", None)  # the member's model/ checksums now belong to the ensemble's manifest
        write_json(member_run / MANIFEST, manifest)
        train_seconds += float(manifest.get("train_time_s") or 0.0)
        n_params += int((manifest.get("model") or {}).get("parameters") or 0)
        frame = pd.read_parquet(member_run / PREDICTIONS)
        for split in ("valid", "test"):
            probs[split].append(_split_probs(frame, split, texts[split], labels, member_run))
        member_rows.append(
            {
                "index": i,
                "type": member.type,
                "backbone": member_meta.get("backbone"),
                "max_length": member_meta.get("max_length"),
                "run": f"{MEMBERS_DIR}/{member_run.name}",
                "metrics": read_json(member_run / METRICS),
            }
        )

    rounds = recipe.model.ensemble.selection_rounds
    weights = select_weights(probs["valid"], ys["valid"], rounds)
    blends = {split: sum(w * p for w, p in zip(weights, probs[split], strict=True)) for split in ("valid", "test")}
    accuracy = {split: float(np.mean(blends[split].argmax(axis=1) == ys[split])) for split in blends}

    backbone = "ensemble: " + " + ".join(
        f"{r['type']} {r['backbone']}" if r["backbone"] not in (None, r["type"]) else r["type"] for r in member_rows
    )
    meta = text_model_metadata(recipe, labels, backbone=backbone, model_type="ensemble")
    # The longest input a member reads (members without a max_length, e.g. tfidf-logreg, read whole texts).
    tokenized = [int(r["max_length"]) for r in member_rows if r["max_length"]]
    meta["max_length"] = max(tokenized) if tokenized else None
    meta["members"] = [
        {"path": f"{MEMBERS_DIR}/{r['index']}", "type": r["type"], "weight": float(w)}
        for r, w in zip(member_rows, weights, strict=True)
    ]
    meta["ensemble"] = recipe.model.ensemble.model_dump(mode="json")
    write_json(model_dir / MODEL_META, meta)

    table = Table(title="ensemble")
    for col in ("member", "type", "weight", "valid acc", "test acc"):
        table.add_column(col, justify="left" if col in ("member", "type") else "right")
    for r, w in zip(member_rows, weights, strict=True):
        m = r["metrics"]
        table.add_row(
            str(r["index"]), r["type"], f"{w:.3f}", f"{m['valid']['accuracy']:.4f}", f"{m['test']['accuracy']:.4f}"
        )
    table.add_row("ensemble", "", "1.000", f"{accuracy['valid']:.4f}", f"{accuracy['test']:.4f}")
    console.print(table)

    info: dict[str, Any] = {
        "model": f"ensemble of {len(member_rows)} (weights: {rounds} selection rounds on valid)",
    }
    for r, w in zip(member_rows, weights, strict=True):
        m = r["metrics"]
        info[f"member {r['index']}"] = (
            f"{r['type']} ({r['backbone']}) · weight {w:.3f} · valid acc {m['valid']['accuracy']:.4f}"
            f" · test acc {m['test']['accuracy']:.4f} · {r['run']}"
        )
    info["train time (s)"] = round(train_seconds, 2)
    manifest = {
        "seed": {"train": recipe.train.seed, "data": recipe.data.seed},
        "train_seconds": train_seconds,
        "device": "cpu",
        "precision": "fp64",
        "model": {"type": "ensemble", "backbone": backbone, "parameters": n_params},
        "members": [
            {"type": r["type"], "run": r["run"], "seed": recipe.train.seed + r["index"], "weight": float(w)}
            for r, w in zip(member_rows, weights, strict=True)
        ],
    }
    return FitResult(probs=blends, info=info, manifest=manifest)


class EnsembleSettings(ModelSettings):
    """A weighted average of several ordinary models trained in the same run (`ensemble`)."""

    type: Literal["ensemble"] = "ensemble"
    members: list[SerializeAsAny[ModelSettings]] = Field(
        default_factory=list,
        validate_default=True,
        description="Two or more ordinary model sections (kinds that can be ensemble members: text classifiers, "
        "a zero-shot `prompt` model included; not ensembles or image models), each trained in the same run "
        "(member i with seed train.seed + i) and averaged with weights fitted on the validation split.",
    )
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig, description="Selection settings.")

    @field_validator("members", mode="before")
    @classmethod
    def _members(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        members = []
        for i, raw in enumerate(value):
            member = validate_model_settings(raw, where=f"model.members[{i}]")
            if isinstance(member, EnsembleSettings):
                raise ValueError(
                    f"model.members[{i}] is itself an ensemble; nested ensembles are not supported - "
                    "list its members directly in model.members"
                )
            if not get_kind(member.type).can("ensemble_member"):
                able = kinds_with("ensemble_member")
                raise ValueError(
                    f"model.members[{i}] has type '{member.type}'; ensemble members must be text classifiers "
                    f"({', '.join(able)}), not ensembles or image models - list their members directly"
                )
            members.append(member)
        if len(members) < 2:
            raise ValueError(
                f"model.type 'ensemble' needs at least 2 entries in model.members (got {len(members)}); "
                "list two or more model sections, e.g. [{type: hf-encoder}, {type: tfidf-logreg}]"
            )
        return members


def _prepare(cfg: EnsembleSettings, recipe: Any, labels: list[str]) -> None:
    for member in cfg.members:  # every member's backbone/template before a run directory exists
        kind = get_kind(member.type)
        if kind.prepare is not None:
            kind.prepare(member, recipe, labels)


def _load(model_dir: Path, meta: dict[str, Any], *, device: str = "auto", batch_size: int = 64) -> EnsembleClassifier:
    return EnsembleClassifier(model_dir, device=device, batch_size=batch_size)


def _check_artifacts(model_dir: Path, meta: dict[str, Any]) -> None:
    """Each ``members[i].path`` must be a folder inside the directory that passes its own kind's check."""

    members = meta.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError("an ensemble without a `members` list")
    for i, member in enumerate(members):
        rel = Path(str(member.get("path", ""))) if isinstance(member, dict) else Path()
        if not rel.parts or rel.is_absolute() or ".." in rel.parts or not (model_dir / rel).is_dir():
            raise ValueError(f"members[{i}].path must name a folder inside the model directory (got {rel})")
        sub = model_dir / rel
        if not (sub / MODEL_META).is_file():
            raise ValueError(f"members[{i}] ({rel}): no {MODEL_META}")
        sub_meta = read_json(sub / MODEL_META)
        try:
            kind = kind_of_meta(sub_meta, sub)
        except ModelError as err:
            raise ValueError(f"members[{i}] at {rel}: {err}") from None
        if kind.check_artifacts is None:
            raise ValueError(f"members[{i}] at {rel}: model kind '{kind.name}' declares no safe artefact format")
        try:
            kind.check_artifacts(sub, sub_meta)
        except ValueError as err:
            raise ValueError(f"members[{i}] at {rel}: {err}") from None


KIND = register_kind(
    ModelKind(
        name="ensemble",
        settings=EnsembleSettings,
        modality="text",
        fit=fit_ensemble_run,
        prepare=_prepare,
        load=_load,
        check_artifacts=_check_artifacts,
        display_name=lambda cfg: "ensemble: " + " + ".join(get_kind(m.type).name_of(m) for m in cfg.members),
        supports=frozenset({"distill_teacher"}),
        instead="an ensemble is a weighted average of several models with no single network: use a member "
        "instead, RUN/model/members/<i>",
    )
)
