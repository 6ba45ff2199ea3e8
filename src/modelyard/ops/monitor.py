"""``modelyard monitor NAME``: live traffic (the prediction log) against the training reference.

The reference is the served version's own valid + test splits (never trained on), scored by that
version. Four signals:

* prediction confidence (max probability): PSI and the two-sample Kolmogorov-Smirnov statistic;
* predicted-class mix: PSI over the classes (multi-label models: over each label's share of the predicted
  labels, plus the share of empty label sets; confidence is then the highest label probability);
* text length (characters): PSI and KS;
* embedding distance: cosine distance between the mean [CLS]-pooled encoder embedding of the
  reference texts and of the live texts (same model, so the spaces are comparable).

PSI uses quantile bins of the reference (about 20 reference rows per bin, 2-10 bins, so that
sampling noise stays well below the threshold) (``sum((a - e) * ln(a / e))`` with a 1e-4 floor);
rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant. A dashboard (self-contained HTML
with inline SVG charts drawn by the evaluation report's figure helpers, rendered from
``templates/drift.html.j2`` with autoescaping on, since labels are user data) and a JSON summary are
written; the CLI exits 1 when any signal crosses its threshold, so it can run from cron.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from modelyard._internal.batching import pad_batch
from modelyard._internal.io import atomic_write_text, write_json
from modelyard.evaluation.html import environment, fig_text, figure_env, new_figure, svg
from modelyard.models.loading import load
from modelyard.registry.names import RegistryError
from modelyard.registry.store import Registry, parse_since
from modelyard.training.run import load_splits

_FLOOR = 1e-4
_TEMPLATE_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds (a signal above its threshold is drift)."""

    psi: float = 0.2
    ks: float = 0.2
    embedding: float = 0.1
    min_samples: int = 30
    ood_share: float = 0.05  # image apps served with serve.ood_from: share of live inputs flagged unlike training


def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``live`` against ``reference`` over quantile bins of the reference."""
    reference, live = np.asarray(reference, dtype=float), np.asarray(live, dtype=float)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([reference.min() - 0.5, reference.max() + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    e = np.histogram(reference, edges)[0] / max(len(reference), 1)
    a = np.histogram(live, edges)[0] / max(len(live), 1)
    return categorical_psi(e, a)


def categorical_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI between two probability vectors (class mixes, or histogram shares)."""
    e = np.clip(np.asarray(expected, dtype=float), _FLOOR, None)
    a = np.clip(np.asarray(actual, dtype=float), _FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


NO_LABEL = "(no label)"


def predicted_mix(probs: np.ndarray, labels: list[str], thresholds: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """The predicted-class mix (shares summing to 1) and its categories.

    Single-label (``thresholds`` ``None``): the share of each argmax class. Multi-label: each label's share of all
    predicted labels (a label set counts each of its labels once), plus :data:`NO_LABEL` for predictions whose set
    is empty, so a model that starts predicting nothing shows as drift too.
    """
    n = max(len(probs), 1)
    if thresholds is None:
        return np.bincount(probs.argmax(axis=1), minlength=len(labels)) / n, list(labels)
    hits = probs >= thresholds[None, :]
    counts = np.append(hits.sum(axis=0), (~hits.any(axis=1)).sum()).astype(float)
    return counts / max(counts.sum(), 1.0), [*labels, NO_LABEL]


def _embed(clf: Any, texts: list[str], batch: int = 64) -> np.ndarray | None:
    """Mean [CLS] embedding of the encoder's last layer, or ``None`` for models without one."""
    model, tokenizer = getattr(clf, "model", None), getattr(clf, "tokenizer", None)
    if model is None or tokenizer is None or not texts:
        return None
    import torch

    ids = clf.encode(texts)
    total, n = None, 0
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            inputs = {k: v.to(clf.device) for k, v in pad_batch(ids[i : i + batch], clf.pad_id).items()}
            out = model(**inputs, output_hidden_states=True)
            cls = out.hidden_states[-1][:, 0, :].float().sum(dim=0).cpu().numpy()
            total = cls if total is None else total + cls
            n += len(ids[i : i + batch])
    return None if total is None else total / n


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _chart(ref: np.ndarray, live: np.ndarray, title: str, categorical: list[str] | None = None) -> Markup:
    """Reference vs live as an inline SVG: grouped bars for class shares, overlaid densities otherwise."""
    with figure_env(f"drift-{title}"):
        fig = new_figure(4.8, 3.0)
        ax = fig.add_subplot()
        if categorical is not None:
            x = np.arange(len(categorical))
            ax.bar(x - 0.2, ref, 0.4, label="reference", color="#4c78a8")
            ax.bar(x + 0.2, live, 0.4, label="live", color="#f58518")
            ax.set_xticks(x, [fig_text(label) for label in categorical], rotation=45 if len(x) > 4 else 0)
            ax.set_ylabel("share")
        else:
            bins = np.histogram_bin_edges(np.concatenate([ref, live]), bins=20)
            ax.hist(ref, bins=bins, alpha=0.6, density=True, label="reference", color="#4c78a8")
            ax.hist(live, bins=bins, alpha=0.6, density=True, label="live", color="#f58518")
            ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(fontsize=7)
        return svg(fig)


def monitor(
    registry: Registry,
    app: str,
    *,
    alias: str = "production",
    since: str | None = "7d",
    thresholds: Thresholds | None = None,
    output: Path | None = None,
    text_ood: bool = False,
) -> dict[str, Any]:
    """Compare the app's logged traffic with its reference; write the dashboard and JSON summary.

    Args:
        registry: The registry.
        app: The app.
        alias: Which version's reference to compare with.
        since: Window of live traffic, e.g. ``7d``, ``12h`` (``None``: everything).
        thresholds: Alert thresholds.
        output: Dashboard path (default ``<store>/monitor/<app>/drift-<UTC time>.html``).
        text_ood: Text apps with an encoder: also fit a VAE to the training texts' embeddings and report the
            share of live texts it flags as unlike them (``text_ood_flagged_share``; :mod:`modelyard.ops.text_ood`).

    Returns:
        The summary: ``status`` (``ok``, ``drift`` or ``insufficient_data``), every signal with its
        value, threshold and verdict, sample sizes and the dashboard path.
    """
    from scipy.stats import ks_2samp

    th = thresholds or Thresholds()
    version = registry.resolve(app, alias)
    live = registry.predictions(app, since=parse_since(since))
    import pandas as pd

    splits = load_splits(version.path)
    images = hasattr(splits.valid, "images")  # an image classifier: its valid/test images are the reference
    reference = (
        pd.DataFrame({"text": [*splits.valid.refs, *splits.test.refs]})
        if images
        else pd.concat([splits.valid, splits.test], ignore_index=True)  # held out from training
    )
    if reference.empty:
        raise RegistryError(f"{version.path}: the reference (valid + test splits) is empty")
    # PSI's sampling noise grows with bins/n: about 20 reference rows per bin, 2 to 10 bins.
    bins = max(2, min(10, len(reference) // 20))
    labels = list(version.labels)
    summary: dict[str, Any] = {
        "app": app,
        "version": version.version,
        "since": since,
        "n_reference": len(reference),
        "n_live": len(live),
        "at": datetime.now(timezone.utc).isoformat(),
        "signals": {},
    }
    when = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    output = Path(output or registry.store / "monitor" / app / f"drift-{when}.html")
    if len(live) < th.min_samples:
        summary["status"] = "insufficient_data"
        summary["message"] = f"{len(live)} live predictions since {since}; need at least {th.min_samples}"
        _write(output, summary, [])
        return summary

    clf = load(version.path)
    if images:
        charts = _image_signals(summary, clf, splits, live, labels, th, bins)
        _write(output, summary, charts)
        return summary
    ref_texts = reference["text"].astype(str).tolist()
    ref_probs = np.asarray(clf.predict_proba(ref_texts), dtype=float)
    live_texts = [r["text"] for r in live]
    live_probs = np.array([[float(r["scores"].get(lab, 0.0)) for lab in labels] for r in live])
    ref_conf, live_conf = ref_probs.max(axis=1), live_probs.max(axis=1)
    ref_len = np.array([len(t) for t in ref_texts], dtype=float)
    live_len = np.array([len(t) for t in live_texts], dtype=float)
    thresholds = np.asarray(clf.thresholds, dtype=float) if getattr(clf, "multi_label", False) else None
    ref_mix, mix_labels = predicted_mix(ref_probs, labels, thresholds)
    live_mix, _ = predicted_mix(live_probs, labels, thresholds)

    signals = {
        "confidence_psi": (psi(ref_conf, live_conf, bins), th.psi),
        "confidence_ks": (float(ks_2samp(ref_conf, live_conf).statistic), th.ks),
        "class_mix_psi": (categorical_psi(ref_mix, live_mix), th.psi),
        "text_length_psi": (psi(ref_len, live_len, bins), th.psi),
        "text_length_ks": (float(ks_2samp(ref_len, live_len).statistic), th.ks),
    }
    ref_emb, live_emb = _embed(clf, ref_texts), _embed(clf, live_texts)
    if ref_emb is not None and live_emb is not None:
        signals["embedding_cosine_distance"] = (_cosine_distance(ref_emb, live_emb), th.embedding)
    if text_ood:
        flagged = _text_ood_flags(clf, splits, live_texts, summary)
        if flagged is not None:
            signals["text_ood_flagged_share"] = (float(flagged.mean()), th.ood_share)
    summary["signals"] = {
        name: {"value": round(value, 6), "threshold": limit, "drift": bool(value > limit)}
        for name, (value, limit) in signals.items()
    }
    summary["class_mix"] = {
        "reference": dict(zip(mix_labels, ref_mix.round(4).tolist(), strict=True)),
        "live": dict(zip(mix_labels, live_mix.round(4).tolist(), strict=True)),
    }
    summary["status"] = "drift" if any(s["drift"] for s in summary["signals"].values()) else "ok"
    charts = [
        {"svg": _chart(ref_conf, live_conf, "prediction confidence"), "caption": "confidence_psi, confidence_ks"},
        {"svg": _chart(ref_mix, live_mix, "predicted-class mix", categorical=mix_labels), "caption": "class_mix_psi"},
        {"svg": _chart(ref_len, live_len, "text length (characters)"), "caption": "text_length_psi, text_length_ks"},
    ]
    _write(output, summary, charts)
    return summary


def _text_ood_flags(clf: Any, splits: Any, live_texts: list[str], summary: dict[str, Any]) -> np.ndarray | None:
    """Which live texts a VAE fitted to the training texts' embeddings flags (None: the model has no encoder)."""
    from modelyard.ops.text_ood import fit_text_ood, sentence_embeddings

    train = splits.train["text"].astype(str)
    train = train.sample(min(2000, len(train)), random_state=0).tolist()
    train_emb = sentence_embeddings(clf, train)
    valid_emb = sentence_embeddings(clf, splits.valid["text"].astype(str).tolist())  # encoder kinds have encode()
    live_emb = sentence_embeddings(clf, live_texts)
    if train_emb is None or valid_emb is None or live_emb is None:
        summary["text_ood"] = "not available: the model has no encoder embeddings"
        return None
    valid = splits.valid["text"].astype(str).tolist()
    fitted = fit_text_ood(
        train_emb,
        valid_emb,
        train_ids=clf.encode(train),
        valid_ids=clf.encode(valid),
        vocab_size=len(clf.tokenizer),
    )
    flagged = fitted.scores(live_emb, clf.encode(live_texts)) > fitted.threshold
    summary["text_ood"] = {
        "score": "max of robust z-scores: a VAE's negative ELBO over the embeddings (every layer, mean-pooled) "
        "and the mean unigram surprisal under the training texts' tokens",
        "fitted_on": fitted.n_train,
        "threshold": round(fitted.threshold, 4),
        "calibrated_on": f"valid ({len(valid_emb)} texts, quantile {fitted.quantile})",
        "scored": int(len(flagged)),
        "flagged": int(flagged.sum()),
    }
    return flagged


def _image_signals(
    summary: dict[str, Any],
    clf: Any,
    splits: Any,
    live: list[dict[str, Any]],
    labels: list[str],
    th: Thresholds,
    bins: int,
) -> list[dict[str, Any]]:
    """Image apps: confidence and class mix against the valid + test images, and the share of live inputs that
    ``serve.ood_from`` flagged as unlike the training data (read from the logged descriptions, serving/ood.py)."""
    from scipy.stats import ks_2samp

    from modelyard.serving.ood import parse_logged

    ref_images = np.concatenate([splits.valid.images, splits.test.images])
    ref_probs = np.asarray(clf.predict_proba(list(ref_images)), dtype=float)
    live_probs = np.array([[float(r["scores"].get(lab, 0.0)) for lab in labels] for r in live])
    ref_conf, live_conf = ref_probs.max(axis=1), live_probs.max(axis=1)
    ref_mix, mix_labels = predicted_mix(ref_probs, labels, None)
    live_mix, _ = predicted_mix(live_probs, labels, None)
    signals = {
        "confidence_psi": (psi(ref_conf, live_conf, bins), th.psi),
        "confidence_ks": (float(ks_2samp(ref_conf, live_conf).statistic), th.ks),
        "class_mix_psi": (categorical_psi(ref_mix, live_mix), th.psi),
    }
    _, flagged = parse_logged([str(r["text"]) for r in live])
    if len(flagged):
        signals["ood_flagged_share"] = (float(flagged.mean()), th.ood_share)
        summary["ood"] = {"scored": int(len(flagged)), "flagged": int(flagged.sum())}
    summary["signals"] = {
        name: {"value": round(value, 6), "threshold": limit, "drift": bool(value > limit)}
        for name, (value, limit) in signals.items()
    }
    summary["class_mix"] = {
        "reference": dict(zip(mix_labels, ref_mix.round(4).tolist(), strict=True)),
        "live": dict(zip(mix_labels, live_mix.round(4).tolist(), strict=True)),
    }
    summary["status"] = "drift" if any(s["drift"] for s in summary["signals"].values()) else "ok"
    charts = [
        {"svg": _chart(ref_conf, live_conf, "prediction confidence"), "caption": "confidence_psi, confidence_ks"},
        {"svg": _chart(ref_mix, live_mix, "predicted-class mix", categorical=mix_labels), "caption": "class_mix_psi"},
    ]
    return charts


def render_dashboard(summary: dict[str, Any], charts: list[dict[str, Any]]) -> str:
    """The drift dashboard page (self-contained HTML) for a :func:`monitor` summary.

    Args:
        summary: The summary (``app``, ``version``, ``status``, ``signals`` …; ``class_mix`` optional).
        charts: ``{"svg": Markup, "caption": str}`` figures; only the SVG is inserted unescaped.

    Returns:
        The page; every other value (labels, messages, names) is HTML-escaped by the template.
    """
    env = environment(_TEMPLATE_DIR)
    mix = summary.get("class_mix") or {}
    reference, live = mix.get("reference") or {}, mix.get("live") or {}
    return env.get_template("drift.html.j2").render(
        summary=summary,
        signals=summary.get("signals") or {},
        message=summary.get("message") or "",
        class_mix=[{"label": label, "reference": share, "live": live.get(label)} for label, share in reference.items()],
        charts=charts,
    )


def _write(output: Path, summary: dict[str, Any], charts: list[dict[str, Any]]) -> None:

    summary["dashboard"] = str(output)
    atomic_write_text(output, render_dashboard(summary, charts))
    write_json(output.with_suffix(".json"), json.loads(json.dumps(summary, default=str)))
