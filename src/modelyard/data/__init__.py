"""The data stage: read labelled texts, clean them, validate them and split them.

Entry point: :func:`prepare_data` turns a recipe's ``data`` section into a :class:`PreparedData`.
The building blocks (:func:`read_table`, :func:`clean_frame`, :func:`stratified_split`) are public
so that other stages and tests can reuse them; bundled corpora live in :data:`BUNDLED_SOURCES`.
"""

from __future__ import annotations

from modelyard.data.cleaning import clean_frame
from modelyard.data.multilabel import label_sets, multi_hot, prepare_multilabel
from modelyard.data.pipeline import PreparedData, prepare_data
from modelyard.data.sources import BUNDLED_SOURCES, load_bundled, read_table, register_source, write_table
from modelyard.data.split import min_examples_per_class, stratified_sample, stratified_split

__all__ = [
    "BUNDLED_SOURCES",
    "PreparedData",
    "clean_frame",
    "label_sets",
    "load_bundled",
    "multi_hot",
    "min_examples_per_class",
    "prepare_data",
    "prepare_multilabel",
    "read_table",
    "register_source",
    "stratified_sample",
    "stratified_split",
    "write_table",
]
