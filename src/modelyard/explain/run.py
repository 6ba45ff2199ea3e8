"""``explain_run``: explain texts with a trained run and save the heat map and the numbers in the run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from modelyard._internal.io import atomic_write_text, write_json
from modelyard._internal.layout import EXPLANATIONS_DIR, REPORT
from modelyard.evaluation.report import add_stage_section
from modelyard.explain.core import METHODS, Explanation, explain
from modelyard.explain.render import render_html
from modelyard.models.loading import load, model_dir_of

__all__ = ["explain_run"]


def _run_dir_of(model_dir: Path) -> Path:
    # A run directory holds model/; a bare model directory gets its explanations next to itself.
    return model_dir.parent if model_dir.name == "model" else model_dir


def explain_run(
    run_dir: str | Path,
    texts: list[str],
    method: str = "ig",
    output: Path | None = None,
    *,
    target: str | None = None,
    n_steps: int = 32,
    device: str = "auto",
    classifier: Any = None,
) -> tuple[Path, list[Explanation]]:
    """Explain ``texts`` with the model of ``run_dir`` and write an HTML heat map plus its JSON.

    Args:
        run_dir: A run directory (or its ``model/`` folder).
        texts: Texts to explain.
        method: One of :data:`~modelyard.explain.METHODS`.
        output: Where to write the HTML (the JSON goes next to it, same name, ``.json``); default
            ``<run>/explanations/<UTC time>-<method>.html``.
        target: Label to explain instead of the predicted one.
        n_steps: Integration steps for ``ig``.
        device: ``auto``, ``cpu``, ``cuda`` … (ignored when ``classifier`` is given).
        classifier: An already loaded classifier of ``run_dir`` (saves loading it again).

    Returns:
        The HTML path and the explanations. Both files are written atomically.

    Raises:
        ModelError: ``run_dir`` holds no usable model.
        ValueError: Unknown method or target, or no texts.
    """

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("no texts to explain")
    model_dir = model_dir_of(run_dir)
    clf = classifier if classifier is not None else load(model_dir, device=device)
    explanations = explain(clf, texts, method=method, target=target, n_steps=n_steps)
    if output is None:
        folder = _run_dir_of(model_dir) / EXPLANATIONS_DIR
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        output = folder / f"{stamp}-{method}.html"
        n = 1
        while output.exists() or output.with_suffix(".json").exists():
            output = folder / f"{stamp}-{method}-{n}.html"
            n += 1
    output = Path(output)
    info = clf.info() if hasattr(clf, "info") else {}
    title = f"{info.get('name') or model_dir.name}: {method} explanations"
    write_json(
        output.with_suffix(".json"),
        {
            "model": info,
            "method": method,
            "target": target,
            "n_steps": n_steps if method == "ig" else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "explanations": [ex.to_dict() for ex in explanations],
        },
    )
    page = render_html(explanations, title=title)
    atomic_write_text(output, page)
    run_dir = _run_dir_of(model_dir)
    if (run_dir / REPORT).is_file():
        add_stage_section(
            run_dir / REPORT,
            "explanations",
            f"Explanations (latest: {method})",
            page,
            link=os.path.relpath(output.resolve(), run_dir.resolve()),
        )
    return output, explanations
