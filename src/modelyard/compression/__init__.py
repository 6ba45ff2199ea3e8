"""Compressed variants of a trained run: ONNX, ONNX int8, pruning and distillation, measured side by side.

Example::

    from modelyard.compression import compress, load_variant

    compress(run_dir, ["onnx-int8"])  # writes <run>/compressed/onnx-int8/, compression.json and .html
    clf = load_variant(run_dir, "onnx-int8")  # same protocol as modelyard.models.text_classifier.Classifier
"""

from __future__ import annotations

from modelyard.compression.compress import ROW_KEYS, SOURCE, TOLERANCES, compress, parse_methods
from modelyard.compression.variants import METHODS, RUNTIMES, load_variant

__all__ = ["METHODS", "ROW_KEYS", "RUNTIMES", "SOURCE", "TOLERANCES", "compress", "load_variant", "parse_methods"]
