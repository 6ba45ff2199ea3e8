"""The self-contained HTML report of a search: history, parameter importances, per-epoch curves, trials.

Same rules as the evaluation report: one file, no network, no JavaScript; figures are matplotlib
SVG inlined (built on :class:`~matplotlib.figure.Figure`, never pyplot) and the template is rendered
with jinja2 autoescaping, only the generated SVG being marked safe.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from modelyard._internal.io import atomic_write_text
from modelyard.evaluation.html import fig_text, figure_env, new_figure, svg
from modelyard.tuning.trials import TuneSettings

if TYPE_CHECKING:  # pragma: no cover
    import optuna


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; }
td.l, th.l { text-align: left; }
tr.best td { background: #eef8ee; font-weight: 600; }
.note { color: #666; font-style: italic; }
svg { max-width: 100%; height: auto; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<table>
{% for key, value in summary %}
<tr><th class="l">{{ key }}</th><td class="l">{{ value }}</td></tr>
{% endfor %}
</table>
{% if best_params %}
<h2>Best parameters</h2>
<table>
<tr><th class="l">key</th><th>value</th></tr>
{% for key, value in best_params %}
<tr><td class="l">{{ key }}</td><td>{{ value }}</td></tr>
{% endfor %}
</table>
{% endif %}
<h2>Optimisation history</h2>
{% if history_svg %}{{ history_svg }}{% else %}<p class="note">No finished trial to plot.</p>{% endif %}
<h2>Parameter importances</h2>
{% if importance_svg %}{{ importance_svg }}{% endif %}
{% if importance_note %}<p class="note">{{ importance_note }}</p>{% endif %}
<h2>Validation metric per epoch</h2>
{% if curves_svg %}{{ curves_svg }}{% else %}<p class="note">No per-epoch values were reported.</p>{% endif %}
<h2>Trials</h2>
<table>
<tr><th>trial</th><th class="l">state</th><th>value</th>{% for key in keys %}<th>{{ key }}</th>{% endfor %}
<th>seconds</th><th class="l">run / error</th></tr>
{% for r in rows %}
<tr{% if r.best %} class="best"{% endif %}><td>{{ r.number }}</td><td class="l">{{ r.state }}</td><td>{{ r.value }}</td>
{% for v in r.params %}<td>{{ v }}</td>{% endfor %}<td>{{ r.seconds }}</td><td class="l">{{ r.where }}</td></tr>
{% endfor %}
</table>
</body>
</html>
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _history_figure(study: optuna.Study, direction: str, metric: str) -> Markup | None:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.PRUNED and t.intermediate_values]
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    best, running = [], None
    for y in ys:
        if running is None or (y < running if direction == "minimize" else y > running):
            running = y
        best.append(running)
    with figure_env("tune-history"):
        fig = new_figure(7.0, 3.4)
        ax = fig.subplots()
        ax.plot(xs, ys, "o", color="#1f77b4", label="complete")
        ax.step(xs, best, where="post", color="#d62728", label="best so far")
        if pruned:
            last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
            ax.plot([t.number for t in pruned], last, "x", color="#999999", label="pruned (last epoch)")
        ax.set_xlabel("trial")
        ax.set_ylabel(fig_text(metric, 40))
        ax.set_title(f"Objective per trial ({direction})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return svg(fig)


def _importance_figure(study: optuna.Study) -> tuple[Markup | None, str | None]:
    import optuna

    try:
        with warnings.catch_warnings():
            # With a handful of trials the evaluator warns that all importances are equal; the note says so.
            warnings.simplefilter("ignore", UserWarning)
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return None, f"Parameter importances unavailable: {err}"
    if not importances:
        return None, "Parameter importances unavailable: fewer than two finished trials or no parameter varied."
    names = list(importances)[::-1]
    values = [importances[n] for n in names]
    with figure_env("tune-importance"):
        fig = new_figure(7.0, 0.5 + 0.45 * len(names))
        ax = fig.subplots()
        ax.barh([fig_text(n, 40) for n in names], values, color="#1f77b4")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, max(values) * 1.2 or 1)
        ax.set_xlabel("importance (optuna default evaluator, normalised)")
        ax.grid(alpha=0.3, axis="x")
    note = None
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if finished < 10:
        note = f"Estimated from only {finished} finished trials: treat as a rough hint."
    return svg(fig), note


def _curves_figure(study: optuna.Study, metric: str) -> Markup | None:
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    with figure_env("tune-curves"):
        fig = new_figure(7.0, 3.4)
        ax = fig.subplots()
        for t in trials:
            steps = sorted(t.intermediate_values)
            style = "--" if t.state.name == "PRUNED" else "-"
            ax.plot(
                steps,
                [t.intermediate_values[s] for s in steps],
                style,
                marker="o",
                markersize=3,
                linewidth=1.1,
                label=f"trial {t.number} ({t.state.name.lower()})",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(fig_text(metric, 40))
        ax.grid(alpha=0.3)
        if len(trials) <= 12:
            ax.legend(fontsize=7)
        return svg(fig)


def _baseline_text(records: list[dict[str, Any]]) -> str:
    base = next((r for r in records if r.get("baseline")), None)
    if base is None:
        return "not run (tune.baseline_first off, or the recipe's values are outside the space)"
    return f"trial {base['number']} · {base['state'].lower()} · value {_fmt(base['value'], 6)}"


def write_tune_report(path: Path, study: optuna.Study, settings: TuneSettings, records: list[dict[str, Any]]) -> Path:
    """Render ``tune_report.html`` for a study (any state: failed and pruned trials are listed too)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    counts = {s: sum(r["state"] == s for r in records) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    summary = [
        ("study", study.study_name),
        ("objective", f"{settings.direction} {settings.metric}"),
        ("trials", ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "none"),
        ("best value", _fmt(best.value, 6) if best else "-"),
        ("best trial", f"{best.number} · {best.user_attrs.get('run_dir')}" if best else "-"),
        ("baseline (the recipe's own values)", _baseline_text(records)),
        ("search space", "; ".join(f"{k}: {v.model_dump(mode='json')}" for k, v in settings.space.items())),
    ]
    keys = list(settings.space)
    rows = [
        {
            "number": r["number"],
            "state": r["state"] + (" · baseline" if r.get("baseline") else ""),
            "value": _fmt(r["value"]),
            "params": [_fmt(r["params"].get(k)) for k in keys],
            "seconds": _fmt(r["duration_s"]),
            "where": r["error"] if r["state"] == "FAIL" else (r["run_dir"] or ""),
            "best": best is not None and r["number"] == best.number,
        }
        for r in records
    ]
    importance_svg, importance_note = _importance_figure(study) if len(complete) >= 2 else (None, None)
    if len(complete) < 2:
        importance_note = "Parameter importances need at least two finished trials."
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    html = env.from_string(_TEMPLATE).render(
        title=f"Hyper-parameter search · {study.study_name}",
        summary=summary,
        best_params=[(k, _fmt(v, 6)) for k, v in best.params.items()] if best else [],
        history_svg=_history_figure(study, settings.direction, settings.metric),
        importance_svg=importance_svg,
        importance_note=importance_note,
        curves_svg=_curves_figure(study, settings.metric),
        keys=keys,
        rows=rows,
    )
    atomic_write_text(path, html)
    return path
