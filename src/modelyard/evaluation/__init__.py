"""Evaluation: metrics on predicted probabilities and the self-contained HTML report.

Submodules are imported on demand (``modelyard.evaluation.metrics``, ``modelyard.evaluation.report``)
so that importing the package stays cheap: scikit-learn and matplotlib load only when used.
"""
