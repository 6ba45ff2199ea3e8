"""One rendering path for every HTML page modelyard writes: jinja2 with autoescaping, matplotlib as inline SVG.

The run report, the leaderboard, the pretraining and compression pages, the tuning report and the drift
dashboard all come through here: texts and labels are user data, so templates render with autoescaping on
and only the SVG drawn by these helpers is marked safe (matplotlib XML-escapes every text it writes).

Figures are built with :class:`matplotlib.figure.Figure` directly and pyplot is never imported:
that needs no GUI backend (the same effect as ``matplotlib.use("Agg")``) without changing the
process-wide backend of a notebook or application that imports modelyard, and there is no pyplot
figure registry that could leak figures, so nothing needs closing.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

TEMPLATE_DIR = Path(__file__).parent / "templates"
MAX_TICK_CHARS = 24


@contextlib.contextmanager
def figure_env(name: str) -> Iterator[None]:
    """Settings in force while one figure is built and saved.

    ``svg.fonttype = none`` keeps text as ``<text>`` so the browser renders it with its own fonts:
    Chinese labels then display even though matplotlib's bundled DejaVu Sans has no CJK glyphs (the
    "Glyph missing" warnings that layout emits for them are therefore noise and are silenced). A
    per-figure ``svg.hashsalt`` gives every inlined SVG its own clip-path/marker ids, so ids never
    collide between figures in the one HTML document, and keeps the output deterministic.
    """
    import matplotlib

    with (
        warnings.catch_warnings(),
        matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"modelyard-{name}", "font.size": 9}),
    ):
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def svg(fig: Figure) -> Markup:
    """Serialise a figure to an inline ``<svg>`` element (no XML prolog, DOCTYPE or metadata)."""
    buf = io.StringIO()
    # None drops each metadata entry; the defaults carry URLs and a timestamp that would make every
    # report differ and trip "no external URL" checks.
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    return Markup(text[text.index("<svg") :])


def fig_text(value: Any, limit: int = MAX_TICK_CHARS) -> str:
    """Make a user label safe to draw: no mathtext, not hidden from legends, not too long."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # An unescaped "$" pair switches matplotlib into mathtext (and can raise on odd input).
    text = text.replace("$", r"\$")
    # Legend entries starting with "_" are silently dropped by matplotlib.
    return " " + text if text.startswith("_") else text


def environment(template_dir: Path = TEMPLATE_DIR) -> Environment:
    """The jinja2 environment of every modelyard page (autoescape on, undefined names are errors)."""
    # autoescape=True rather than select_autoescape(): the template ends in .j2, which the extension
    # sniffing would not recognise as HTML, and every text here (run ids, labels, texts) is user data.
    env = Environment(
        loader=FileSystemLoader(template_dir),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env
