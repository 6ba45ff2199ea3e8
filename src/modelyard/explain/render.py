"""A self-contained HTML heat map of explanations: inline CSS, no JavaScript, no external resources.

Texts, units and labels are user data: the template is rendered with jinja2 autoescaping on and
nothing is marked safe.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, StrictUndefined

from modelyard.explain.core import Explanation

__all__ = ["render_html"]

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 60rem; }
.ex { border: 1px solid #ddd; border-radius: 6px; padding: 1rem; margin: 1rem 0; }
.meta { color: #555; font-size: 0.9rem; margin-bottom: 0.5rem; }
.label { font-weight: bold; }
.text { font-size: 1.15rem; line-height: 2.1; white-space: pre-wrap; }
.u { padding: 0.15rem 0.1rem; border-radius: 3px; }
.legend span { padding: 0.1rem 0.5rem; border-radius: 3px; margin-right: 0.5rem; }
.warn { color: #a15c00; }
table.scores { border-collapse: collapse; font-size: 0.85rem; }
table.scores td { padding: 0 0.6rem 0 0; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="legend">
{%- if signed %}
<span style="background: rgba(22, 163, 74, 0.6)">supports the explained label</span>
<span style="background: rgba(220, 38, 38, 0.6)">opposes it</span>
{%- else %}
<span style="background: rgba(37, 99, 235, 0.6)">attention received</span>
{%- endif %}
Colours are scaled per text to its strongest unit; hover a word for its value.</p>
{% for ex in items %}
<div class="ex">
<div class="meta">
predicted <span class="label">{{ ex.label }}</span>
{%- if ex.target != ex.label %}, explaining <span class="label">{{ ex.target }}</span>{% endif %}
&middot; method {{ ex.method }}
{%- if ex.delta is not none %} &middot; convergence delta {{ '%.2g' | format(ex.delta) }}{% endif %}
{%- if ex.truncated %} &middot; <span class="warn">truncated to the model's max_length</span>{% endif %}
<table class="scores"><tr>
{%- for name, p in ex.scores %}<td>{{ name }}: {{ '%.3f' | format(p) }}</td>{% endfor -%}
</tr></table>
</div>
<div class="text">
{%- for seg in ex.segments -%}
{%- if seg.unit -%}
<span class="u" style="background: {{ seg.color }}" title="{{ seg.text }}: {{ seg.value }}">{{ seg.text }}</span>
{%- else -%}
{{ seg.text }}
{%- endif -%}
{%- endfor -%}
</div>
</div>
{% endfor %}
</body>
</html>
"""

_ENV = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)


def _color(value: float, scale: float, signed: bool) -> str:
    alpha = 0.0 if scale <= 0 else min(1.0, abs(value) / scale) * 0.75
    if not signed:
        return f"rgba(37, 99, 235, {alpha:.3f})"
    return f"rgba(22, 163, 74, {alpha:.3f})" if value >= 0 else f"rgba(220, 38, 38, {alpha:.3f})"


def _segments(ex: Explanation) -> list[dict[str, Any]]:
    text = ex.normalized_text
    spans = ex.spans
    if not text or len(spans) != len(ex.units):  # built by hand: show the units separated by spaces
        text = " ".join(ex.units)
        spans, pos = [], 0
        for u in ex.units:
            spans.append((pos, pos + len(u)))
            pos += len(u) + 1
    signed = ex.method != "attention"
    scale = max((abs(a) for a in ex.attributions), default=0.0)
    out: list[dict[str, Any]] = []
    pos = 0
    for (s, e), value in zip(spans, ex.attributions, strict=True):
        if s > pos:
            out.append({"unit": False, "text": text[pos:s]})
        out.append(
            {
                "unit": True,
                "text": text[s:e],
                "value": f"{value:+.4f}" if signed else f"{value:.4f}",
                "color": _color(value, scale, signed),
            }
        )
        pos = e
    if pos < len(text):
        out.append({"unit": False, "text": text[pos:]})
    return out


def render_html(explanations: list[Explanation], title: str = "modelyard explanations") -> str:
    """Render explanations as one self-contained HTML page.

    Each unit is a ``<span class="u">`` coloured by its attribution, scaled per text to the strongest
    unit (green: supports the explained label, red: opposes it; blue intensity for attention), with
    the value in its tooltip. Each text is headed by its predicted label and scores.

    Args:
        explanations: From :func:`modelyard.explain.explain`.
        title: Page title (escaped).

    Returns:
        The HTML document.
    """
    items = [
        {
            "label": ex.label,
            "target": ex.target,
            "method": ex.method,
            "delta": ex.convergence_delta,
            "truncated": ex.truncated,
            "scores": list(ex.scores.items()),
            "segments": _segments(ex),
        }
        for ex in explanations
    ]
    signed = not explanations or any(ex.method != "attention" for ex in explanations)
    return _ENV.from_string(_TEMPLATE).render(title=title, items=items, signed=signed)
