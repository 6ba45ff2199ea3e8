"""Explain predictions: which words pushed the model toward its label.

Example:
    >>> import modelyard
    >>> from modelyard.explain import explain, render_html
    >>> clf = modelyard.load("runs/reviews-20260101T120000Z")
    >>> [ex] = explain(clf, ["a great film"], method="ig")
    >>> ex.ranked()[0]
    ('great', 0.47)
"""

from modelyard.explain.core import METHODS, ExplainUnsupportedError, Explanation, explain
from modelyard.explain.render import render_html
from modelyard.explain.run import explain_run

__all__ = ["METHODS", "Explanation", "ExplainUnsupportedError", "explain", "explain_run", "render_html"]
