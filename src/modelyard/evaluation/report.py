"""The self-contained HTML evaluation report.

One file, no network: figures are drawn with matplotlib and inlined as SVG, styles are inline, and
there is no JavaScript. Rendering (autoescaping, SVG figures) goes through :mod:`modelyard.evaluation.html`,
the one path every modelyard page uses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from modelyard.evaluation.html import environment, fig_text, figure_env, new_figure, svg
from modelyard.evaluation.metrics import expected_calibration_error, reliability_bins

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = ["write_report", "MAX_MISTAKES"]

MAX_MISTAKES = 20
_MAX_LEGEND = 10  # more one-vs-rest curves than this make an unreadable legend
_MAX_CURVE_POINTS = 500  # PR curves keep one point per distinct score; thin them to keep the file small
_MAX_TEXT_CHARS = 500
_MAX_TICK_CHARS = 24
_RELIABILITY_BINS = 15
_TEMPLATE_DIR = Path(__file__).parent / "templates"
_REQUIRED_COLUMNS = ("split", "text", "label", "pred", "confidence")

_HEADLINE = [
    ("accuracy", "Accuracy"),
    ("macro_f1", "Macro-F1"),
    ("micro_f1", "Micro-F1"),
    ("weighted_f1", "Weighted-F1"),
    ("roc_auc", "ROC-AUC"),
    ("log_loss", "Log loss"),
    ("ece", "ECE"),
    ("n", "n"),
]


# --------------------------------------------------------------------------------------------- figures


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = _MAX_CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` evenly spaced points (always the first and last)."""
    if len(x) <= max_points:
        return x, y
    index = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
    return x[index], y[index]


def _number(value: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _series(records: list[dict], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, record in enumerate(records):
        y = _number(record.get(y_key))
        if y is None:
            continue
        x = _number(record.get(x_key))
        xs.append(float(i + 1) if x is None else x)
        ys.append(y)
    return xs, ys


def _learning_curves(history: list[dict], steps: list[dict]) -> tuple[Markup | None, str | None]:
    """Train loss (and learning rate) per step; losses and validation metrics per epoch."""
    panels: list[tuple[str, str, str, list[tuple[str, list[float], list[float]]]]] = []
    step_loss = _series(steps, "step", "loss")
    if step_loss[0]:
        panels.append(("Training loss per step", "step", "loss", [("train loss", *step_loss)]))
    history_keys = list(dict.fromkeys(key for record in history for key in record if key != "epoch"))
    loss_keys = [key for key in history_keys if key.endswith("loss")]
    metric_keys = [key for key in history_keys if key.startswith("valid_") and not key.endswith("loss")]
    epoch_losses = [(key, *_series(history, "epoch", key)) for key in loss_keys]
    epoch_losses = [line for line in epoch_losses if line[1]]
    if epoch_losses:
        panels.append(("Loss per epoch", "epoch", "loss", epoch_losses))
    epoch_metrics = [(key.removeprefix("valid_"), *_series(history, "epoch", key)) for key in metric_keys]
    epoch_metrics = [line for line in epoch_metrics if line[1]]
    if epoch_metrics:
        panels.append(("Validation metrics per epoch", "epoch", "value", epoch_metrics))
    step_lr = _series(steps, "step", "lr")
    if step_lr[0]:
        panels.append(("Learning rate", "step", "lr", [("lr", *step_lr)]))
    if not panels:
        return None, "No training history: this model was not trained in this run (or logged nothing)."

    note = None
    if not step_loss[0]:
        note = "No per-step training records."
    elif not history:
        note = "No per-epoch history."
    cols = len(panels) if len(panels) <= 2 else 2
    rows = math.ceil(len(panels) / cols)
    with figure_env("learning-curves"):
        fig = new_figure(5.0 * cols, 3.4 * rows)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, (heading, xlabel, ylabel, lines) in zip(axes, panels, strict=False):
            for name, xs, ys in lines:
                tx, ty = _thin(np.asarray(xs), np.asarray(ys), 2000)
                # Per-epoch series have few points: markers make single epochs visible.
                marker = "o" if xlabel == "epoch" else None
                ax.plot(tx, ty, marker=marker, markersize=3, linewidth=1.2, label=fig_text(name, 40))
            ax.set_title(heading)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if len(lines) > 1:
                ax.legend(fontsize=8)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        return svg(fig), note


def _confusion_figure(y: np.ndarray, pred: np.ndarray, labels: list[str], split: str) -> Markup:
    """Counts in the cells, colour = row-normalised fraction (recall per true class)."""
    from sklearn.metrics import confusion_matrix

    k = len(labels)
    counts = confusion_matrix(y, pred, labels=list(range(k)))
    totals = counts.sum(axis=1, keepdims=True)
    # A class absent from this split has an all-zero row; leave it uncoloured instead of 0/0.
    fraction = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    side = min(max(4.5, 0.32 * k + 3.0), 12.5)
    fontsize = max(5.0, min(10.0, 130.0 / k))
    with figure_env("confusion"):
        fig = new_figure(side + 1.2, side)
        ax = fig.add_subplot()
        mesh = ax.pcolormesh(fraction, cmap="Blues", vmin=0.0, vmax=1.0, edgecolors="white", linewidth=0.5)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if fraction[i, j] > 0.55 else "#222222",
                )
        ticks = np.arange(k) + 0.5
        names = [fig_text(label) for label in labels]
        ax.set_xticks(ticks, names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
        ax.set_yticks(ticks, names)
        ax.tick_params(labelsize=max(6.0, min(9.0, 180.0 / k)))
        ax.set_xlim(0, k)
        ax.set_ylim(k, 0)  # first label on top, like the table it mirrors
        ax.set_aspect("equal")
        ax.set_xlabel("Predicted label")
        ax.set_ylabel("True label")
        ax.set_title(f"Confusion matrix ({fig_text(split, 40)}, n = {len(y)})")
        colorbar = fig.colorbar(mesh, ax=ax, shrink=0.8, label="fraction of true class")
        # Colorbars with many colours are rasterised by default, which would nest a PNG in the SVG.
        colorbar.solids.set_rasterized(False)
        return svg(fig)


def _one_vs_rest(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class, binary target, score) for each curve to draw, most frequent class first.

    Binary tasks get one curve for the positive class (``labels[1]``). A class is drawn only if the
    split holds both positives and negatives for it: otherwise its ROC/PR curve is undefined.
    """
    k = len(labels)
    classes = [1] if k == 2 else list(range(k))
    out = []
    for c in classes:
        target = (y == c).astype(int)
        if 0 < target.sum() < len(y):
            out.append((c, target, probs[:, c]))
    out.sort(key=lambda item: -int(item[1].sum()))
    return out


def _legend(ax: Axes, drawn: int, loc: str) -> None:
    extra = drawn - _MAX_LEGEND
    title = f"{extra} less frequent class(es) in grey" if extra > 0 else None
    ax.legend(fontsize=7, title=title, title_fontsize=7, loc=loc)


def _curve_style(rank: int) -> dict[str, Any]:
    """Label the most frequent classes; draw the rest thin and unlabelled to cap the legend."""
    if rank < _MAX_LEGEND:
        return {"linewidth": 1.4}
    return {"linewidth": 0.7, "alpha": 0.5, "color": "#999999"}


def _roc_figure(y: np.ndarray, probs: np.ndarray, labels: list[str], split: str) -> tuple[Markup | None, str | None]:
    from sklearn.metrics import roc_auc_score, roc_curve

    curves = _one_vs_rest(y, probs, labels)
    if not curves:
        return None, f"ROC curves are undefined for split {split!r}: it holds only one class."
    with figure_env("roc"):
        fig = new_figure(5.6, 4.8)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=0.8)
        for rank, (c, target, score) in enumerate(curves):
            fpr, tpr, _ = roc_curve(target, score)
            fpr, tpr = _thin(fpr, tpr)
            auc = roc_auc_score(target, score)
            name = f"{fig_text(labels[c])} (AUC {auc:.3f})" if rank < _MAX_LEGEND else "_nolegend_"
            ax.plot(fpr, tpr, label=name, **_curve_style(rank))
        kind = f"positive class {fig_text(labels[1])}" if len(labels) == 2 else "one-vs-rest"
        ax.set_title(f"ROC ({fig_text(split, 40)}, {kind})")
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        _legend(ax, len(curves), loc="lower right")
        return svg(fig), None


def _pr_figure(y: np.ndarray, probs: np.ndarray, labels: list[str], split: str) -> tuple[Markup | None, str | None]:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    curves = _one_vs_rest(y, probs, labels)
    if not curves:
        return None, f"Precision–recall curves are undefined for split {split!r}: it holds only one class."
    with figure_env("pr"):
        fig = new_figure(5.6, 4.8)
        ax = fig.add_subplot()
        for rank, (c, target, score) in enumerate(curves):
            precision, recall, _ = precision_recall_curve(target, score)
            recall, precision = _thin(recall, precision)
            ap = average_precision_score(target, score)
            name = f"{fig_text(labels[c])} (AP {ap:.3f})" if rank < _MAX_LEGEND else "_nolegend_"
            # Step plot: PR curves are piecewise constant and linear interpolation overstates them.
            ax.step(recall, precision, where="post", label=name, **_curve_style(rank))
        if len(curves) == 1:
            prevalence = float(curves[0][1].mean())
            ax.axhline(prevalence, linestyle="--", color="#888888", linewidth=0.8, label="chance")
        kind = f"positive class {fig_text(labels[1])}" if len(labels) == 2 else "one-vs-rest"
        ax.set_title(f"Precision–recall ({fig_text(split, 40)}, {kind})")
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        _legend(ax, len(curves), loc="lower left")
        return svg(fig), None


def _reliability_figure(y: np.ndarray, probs: np.ndarray, split: str) -> Markup:
    bins = reliability_bins(y, probs, _RELIABILITY_BINS)
    ece = expected_calibration_error(y, probs, _RELIABILITY_BINS)
    lowers = np.array([b["lower"] for b in bins])
    widths = np.array([b["upper"] - b["lower"] for b in bins])
    with figure_env("reliability"):
        fig = new_figure(5.6, 5.4)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        filled = [b for b in bins if b["count"]]
        top.bar(
            [b["lower"] for b in filled],
            [b["accuracy"] for b in filled],
            width=[b["upper"] - b["lower"] for b in filled],
            align="edge",
            color="#4c78a8",
            edgecolor="white",
            label="accuracy",
        )
        top.plot(
            [b["confidence"] for b in filled],
            [b["accuracy"] for b in filled],
            "o",
            color="#e45756",
            markersize=3,
            label="(mean confidence, accuracy)",
        )
        top.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=0.8, label="perfect calibration")
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"Reliability ({fig_text(split, 40)}, ECE {ece:.4f}, {len(bins)} bins)")
        top.legend(fontsize=7, loc="upper left")
        top.grid(alpha=0.3)
        bottom.bar(lowers, [b["count"] for b in bins], width=widths, align="edge", color="#9ecae9")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("confidence (max probability)")
        bottom.set_ylabel("count")
        bottom.grid(alpha=0.3)
        return svg(fig)


# --------------------------------------------------------------------------------------------- tables


def _format(value: Any, digits: int = 4) -> str:
    """Table cell text: fixed decimals for floats, an em dash for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def _format_info(value: Any) -> str:
    """Info values: general float format (learning rates, seconds), JSON for nested values."""
    if isinstance(value, (float, np.floating)) and math.isfinite(float(value)):
        return f"{float(value):.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return _format(value)


def _headline(metrics: dict[str, dict]) -> list[dict[str, Any]]:
    return [
        {"split": split, "cells": [_format(values.get(key)) for key, _ in _HEADLINE]}
        for split, values in metrics.items()
        if isinstance(values, dict)
    ]


def _per_class(metrics: dict[str, dict], labels: list[str]) -> list[dict[str, Any]]:
    tables = []
    for split, values in metrics.items():
        per_class = values.get("per_class") if isinstance(values, dict) else None
        if not per_class:
            continue
        order = [label for label in (values.get("labels") or labels) if label in per_class]
        order += [label for label in per_class if label not in order]
        rows = [
            {
                "label": label,
                "precision": _format(per_class[label].get("precision")),
                "recall": _format(per_class[label].get("recall")),
                "f1": _format(per_class[label].get("f1")),
                "support": _format(per_class[label].get("support")),
            }
            for label in order
        ]
        tables.append({"split": split, "rows": rows})
    return tables


def _truncate(text: str, limit: int = _MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mistakes(frame: pd.DataFrame) -> list[dict[str, str]]:
    wrong = frame[frame["label"] != frame["pred"]]
    # Stable sort: equally confident mistakes keep their file order, so reports are reproducible.
    top = wrong.sort_values("confidence", ascending=False, kind="mergesort").head(MAX_MISTAKES)
    return [
        {
            "text": _truncate(str(row.text)),
            "label": str(row.label),
            "pred": str(row.pred),
            "confidence": _format(_number(row.confidence)),
        }
        for row in top.itertuples(index=False)
    ]


# --------------------------------------------------------------------------------------------- data


def _focus_split(predictions: pd.DataFrame) -> str | None:
    """The split the figures describe: ``test`` if present, else the first split in the frame."""
    if predictions.empty:
        return None
    splits = [str(split) for split in pd.unique(predictions["split"])]
    return "test" if "test" in splits else splits[0]


def _indices(values: pd.Series, labels: list[str], column: str) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise ValueError(f"predictions column {column!r} holds values not in labels: {unknown[:5]}")
    return values.map(index).to_numpy(dtype=np.int64)


def _probabilities(frame: pd.DataFrame, labels: list[str]) -> tuple[np.ndarray | None, str | None]:
    """The ``prob_<label>`` columns as an (n, k) array, or None and the reason they cannot be used."""
    columns = [f"prob_{label}" for label in labels]
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        return None, f"No per-class probabilities in the predictions (missing {', '.join(missing[:3])})."
    try:
        probs = frame[columns].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        return None, "The prob_<label> columns are not numeric."
    if not np.all(np.isfinite(probs)):
        return None, "The prob_<label> columns hold missing or infinite values."
    return probs, None


# --------------------------------------------------------------------------------------------- output


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + ``os.replace``: readers never see half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_report(
    path: Path,
    *,
    title: str,
    metrics: dict[str, dict],
    labels: list[str],
    history: list[dict],
    steps: list[dict],
    predictions: pd.DataFrame,
    info: dict[str, Any],
) -> Path:
    """Write the evaluation report as one self-contained HTML file.

    Figures (confusion matrix, ROC, precision–recall, reliability, most confident mistakes) describe
    the ``test`` rows of ``predictions`` if there are any, else the first split present. Every
    section without data says so instead of failing.

    Args:
        path: Where to write the ``.html`` file; parent directories are created. The file is
            replaced atomically.
        title: Page title and heading.
        metrics: ``{split: compute_metrics(...) output}``, e.g. ``{"valid": ..., "test": ...}``.
        labels: Class names in model order.
        history: Per-epoch records such as ``{"epoch": 1, "train_loss": .., "valid_loss": ..,
            "valid_accuracy": .., "valid_macro_f1": ..}``; may be empty.
        steps: Per-step training records such as ``{"step": 10, "epoch": 0.3, "loss": .., "lr": ..}``;
            may be empty.
        predictions: One row per example with columns ``split``, ``text``, ``label``, ``pred``,
            ``confidence`` and ``prob_<label>`` for each label.
        info: Flat run facts (run id, backbone, wall time, device, data source, ...).

    Returns:
        ``path``.

    Raises:
        ValueError: If ``predictions`` lacks a required column or holds labels not in ``labels``.
    """
    path = Path(path)
    labels = [str(label) for label in labels]
    predictions = predictions if predictions is not None else pd.DataFrame()
    if not predictions.empty:
        missing = [column for column in _REQUIRED_COLUMNS if column not in predictions.columns]
        if missing:
            raise ValueError(f"predictions lacks column(s) {missing}; it has {list(predictions.columns)}")

    figures: dict[str, dict[str, Any]] = {}
    learning_svg, learning_note = _learning_curves(list(history or []), list(steps or []))
    figures["learning"] = {"svg": learning_svg, "note": learning_note}

    split = _focus_split(predictions)
    mistakes: list[dict[str, str]] = []
    n_wrong = 0
    if split is None:
        no_data = "No predictions to plot."
        for key in ("confusion", "roc", "pr", "reliability"):
            figures[key] = {"svg": None, "note": no_data}
    else:
        frame = predictions[predictions["split"].astype(str) == split].copy()
        frame["label"] = frame["label"].astype(str)
        frame["pred"] = frame["pred"].astype(str)
        y = _indices(frame["label"], labels, "label")
        pred = _indices(frame["pred"], labels, "pred")
        figures["confusion"] = {"svg": _confusion_figure(y, pred, labels, split), "note": None}
        probs, no_probs = _probabilities(frame, labels)
        if probs is None:
            for key in ("roc", "pr", "reliability"):
                figures[key] = {"svg": None, "note": no_probs}
        else:
            roc_svg, roc_note = _roc_figure(y, probs, labels, split)
            pr_svg, pr_note = _pr_figure(y, probs, labels, split)
            figures["roc"] = {"svg": roc_svg, "note": roc_note}
            figures["pr"] = {"svg": pr_svg, "note": pr_note}
            try:
                figures["reliability"] = {"svg": _reliability_figure(y, probs, split), "note": None}
            except ValueError as exc:  # e.g. probabilities rounded so hard their rows no longer sum to 1
                figures["reliability"] = {"svg": None, "note": f"Reliability diagram unavailable: {exc}"}
        n_wrong = int((frame["label"] != frame["pred"]).sum())
        mistakes = _mistakes(frame)

    metrics = {str(name): values for name, values in (metrics or {}).items()}
    html = (
        environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            info=[(str(key), _format_info(value)) for key, value in (info or {}).items()],
            headline_columns=[heading for _, heading in _HEADLINE],
            headline=_headline(metrics),
            per_class=_per_class(metrics, labels),
            figures=figures,
            focus_split=split,
            mistakes=mistakes,
            n_wrong=n_wrong,
            max_mistakes=MAX_MISTAKES,
        )
    )
    _write_atomic(path, html)
    return path


STAGE_SECTIONS_MARKER = "<!-- modelyard:stage-sections -->"
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S | re.I)


def add_stage_section(report: Path, key: str, title: str, page_html: str, link: str | None = None) -> bool:
    """Embed a later stage's page (tune, compress, explain) as a section of a run's ``report.html``.

    The stage page's ``<body>`` becomes ``<section id="stage-KEY">`` (its ``<h1>`` dropped, ``<h2>``
    demoted to ``<h3>``); running the stage again replaces its section instead of adding another.
    The pages are modelyard's own, rendered with autoescaping, so their markup is trusted here.
    Returns False (and writes nothing) when the run has no report.
    """
    report = Path(report)
    if not report.is_file() or not re.fullmatch(r"[a-z0-9-]+", key):
        return False
    match = _BODY.search(page_html)
    body = match.group(1) if match else page_html
    body = re.sub(r"<h1[^>]*>.*?</h1>", "", body, count=1, flags=re.S | re.I)
    body = re.sub(r"<(/?)h2\b", r"<\1h3", body, flags=re.I)
    href = Markup.escape(link or "")
    link_html = f'<p class="muted">Full page: <a href="{href}">{href}</a></p>' if link else ""
    end = f"</section><!-- /stage-{key} -->"
    section = f'<section id="stage-{key}">\n<h2>{Markup.escape(title)}</h2>\n{link_html}\n{body.strip()}\n{end}'
    html = report.read_text(encoding="utf-8")
    existing = re.compile(rf'<section id="stage-{key}">.*?{re.escape(end)}', re.S)
    if existing.search(html):
        html = existing.sub(lambda _: section, html, count=1)
    elif STAGE_SECTIONS_MARKER in html:
        html = html.replace(STAGE_SECTIONS_MARKER, f"{section}\n{STAGE_SECTIONS_MARKER}", 1)
    else:  # a report written before sections existed
        html = html.replace("</body>", f"{section}\n</body>", 1)
    _write_atomic(report, html)
    return True
