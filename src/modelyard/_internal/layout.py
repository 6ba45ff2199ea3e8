"""File names of a run directory and a model directory — the one place they are spelled.

:class:`modelyard.rundir.RunDir` gives typed access to a run; lower layers that only need a name
(the data layer writing splits, a model kind writing ``modelyard.json``) import the constant from here.
"""

from __future__ import annotations

INCOMPLETE = ".incomplete"  # suffix of a run directory still being written
STAGING = ".staging-"  # hidden prefix of a run that cannot be resumed while it is written (pretrain, one-shot fits)

RECIPE = "recipe.yaml"
MANIFEST = "manifest.json"
DATA_REPORT = "data_report.json"
FINGERPRINTS = "fingerprints.json"
SPLITS_DIR = "splits"
LABELS = "labels.json"
PROGRESS = "progress.jsonl"
HISTORY = "history.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.parquet"
REPORT = "report.html"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
COMPRESSED_DIR = "compressed"
EXPLANATIONS_DIR = "explanations"
EVALUATIONS_DIR = "evaluations"

MODEL_META = "modelyard.json"  # inside model/: labels, kind, cleaning, backbone
