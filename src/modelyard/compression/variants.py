"""Compressed variants as classifiers with the same protocol as :class:`modelyard.models.text_classifier.Classifier`.

Every variant *is* a ``Classifier`` subclass: ``encode`` and ``predict`` are inherited unchanged, so input
normalisation (``modelyard.data.cleaning.clean_text`` with the run's cleaning config), tokenization and the
padding-aware batching (:func:`~modelyard._internal.batching.padding_aware_batches`) are the very same code
for the source model and for every variant. Only the forward pass differs (and, for ONNX, the request path
stays in numpy — no torch tensors between the tokenizer and the session):

* ``torch`` / ``prune`` / ``distill``: a Hugging Face safetensors model (``Classifier`` itself); the
  distilled student has fewer encoder layers.
* ``onnx`` / ``onnx-int8``: an ``onnxruntime.InferenceSession`` (CPU) behind a small adapter that
  looks like a ``transformers`` model call (``model(input_ids=…, attention_mask=…).logits``) and also
  takes numpy directly (``model.logits(input_ids, attention_mask)``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from modelyard._internal.integrity import check_file, verify_records
from modelyard._internal.io import read_json
from modelyard._internal.labels import MULTI_LABEL
from modelyard._internal.layout import MANIFEST, MODEL_DIR, MODEL_META
from modelyard.errors import ModelError, ModelyardError
from modelyard.kinds import kind_of_meta
from modelyard.models.text_classifier import Classifier

METHODS = ("onnx", "onnx-int8", "prune", "distill")
# Methods that existed once → what replaces them (a clear error instead of "unknown method").
# dynamic-int8 (torch.ao.quantization.quantize_dynamic, deprecated by torch) was dropped for onnx-int8: on the
# test suite's tiny BERT and on a MiniLM-L6 run, onnx-int8 agreed with fp32 as well or better (MiniLM: 0.989
# vs 0.964 argmax agreement on 2,000 texts) and ran 2-6x faster at batch 1; torchao's int8 replacement was
# slower than fp32 on CPU.
REMOVED_METHODS = {"dynamic-int8": "onnx-int8"}
RUNTIMES = ("torch", *METHODS)
COMPRESSED_DIR = "compressed"
VARIANT_FILE = "variant.json"
ONNX_FILE = "model.onnx"
ONNX_INPUTS = ("input_ids", "attention_mask")


def variant_dir(run_dir: Path, method: str) -> Path:
    """Where a method's variant lives: ``<run>/compressed/<method>/``."""
    return Path(run_dir) / COMPRESSED_DIR / method


def check_runtime(runtime: str, allowed: tuple[str, ...] = RUNTIMES) -> str:
    """Return ``runtime`` if valid, else raise a :class:`ModelyardError` naming the valid choices."""
    if runtime in REMOVED_METHODS:
        replacement = REMOVED_METHODS[runtime]
        raise ModelyardError(
            f"compression method/runtime {runtime!r} was removed; use {replacement!r} instead "
            f"(modelyard compress RUN --methods {replacement}); valid: {', '.join(allowed)}"
        )
    if runtime not in allowed:
        raise ModelyardError(f"unknown compression method/runtime {runtime!r}; valid: {', '.join(allowed)}")
    return runtime


def source_model_dir(run_dir: Path) -> Path:
    """The run's fp32 ``model/`` directory, or a clear error if the run has none."""
    from modelyard._internal.rundir import find_run

    model_dir = find_run(Path(run_dir)) / MODEL_DIR
    meta_path = model_dir / MODEL_META
    if meta_path.is_file() and not (kind := kind_of_meta(read_json(meta_path), meta_path)).can("compress"):
        raise ModelError(f"{run_dir}: " + kind.unsupported("compression (it works on one torch network at a time)"))
    if meta_path.is_file() and read_json(meta_path).get("task") == MULTI_LABEL:
        # the variants' parity checks, quality table and runtimes score softmax classes, not label sets
        raise ModelError(
            f"{run_dir}: compression of multi-label models is not supported yet; serve the fp32 model "
            "(modelyard serve RUN) — it needs no variant"
        )
    if not meta_path.is_file() or not (model_dir / "model.safetensors").is_file():
        raise ModelError(
            f"{run_dir} has no trained model (expected model/modelyard.json and model/model.safetensors); "
            "pass a finished run directory from `modelyard train`"
        )
    return model_dir


class VariantClassifier(Classifier):
    """Base of the variants: ``runtime`` in ``info()`` and raw logits for parity checks."""

    runtime: str = "torch"
    variant_path: Path | None = None

    def info(self) -> dict[str, Any]:
        out = super().info()
        run_dir = self.run_dir
        out["run_id"] = run_dir.name if run_dir is not None and (run_dir / MANIFEST).is_file() else None
        out["runtime"] = self.runtime
        return out

    @property
    def run_dir(self) -> Path | None:
        base = self.variant_path or self.model_dir
        # <run>/model or <run>/compressed/<method>
        return base.parent.parent if base.parent.name == COMPRESSED_DIR else base.parent

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Raw logits, shape ``(n, k)``, float32; ``softmax(predict_logits(x)) == predict_proba(x)``.

        Same steps as ``Classifier.predict_proba`` (normalise → tokenize → sorted batches) minus the
        softmax; the tests check that both agree so the two paths cannot drift apart.
        """
        from modelyard._internal.batching import pad_batch, padding_aware_batches

        ids = self.encode(texts)
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        if not ids:
            return out
        torch = self._torch
        with self._lock, torch.inference_mode():
            for idx in padding_aware_batches([len(x) for x in ids], self.batch_size):
                batch = {k: v.to(self.device) for k, v in pad_batch([ids[i] for i in idx], self.pad_id).items()}
                out[idx] = self.model(**batch).logits.float().cpu().numpy()
        return out


class TorchClassifier(VariantClassifier):
    """The source fp32 model (``runtime="torch"``) or a safetensors variant (``prune``, ``distill``)."""

    def __init__(self, model_dir: Path, *, runtime: str = "torch", batch_size: int = 64) -> None:
        super().__init__(model_dir, device="cpu", batch_size=batch_size)
        self.runtime = runtime
        self.variant_path = model_dir if runtime != "torch" else None


# ONNX Runtime graph transformers every variant session turns off (``InferenceSession(disabled_optimizers=…)``):
# SkipLayerNormFusion would put back what ``fusion.unfuse_skip_layer_norm`` took apart (its CPU kernel is slower).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class _OrtModel:
    """Adapter: an ONNX Runtime session called like a ``transformers`` sequence classifier.

    Session options for one request at a time on a CPU (measured with ``benchmarks/inference.py``):
    sequential execution (encoder graphs are one chain: a parallel executor only adds scheduling),
    ``intra_op_num_threads`` = the cores this process may use, and the memory arena and pattern planner on
    (repeated shapes reuse their buffers). I/O binding is not used: on the CPU provider ``run`` already
    reads numpy inputs in place and the logits are a few floats.
    """

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.enable_cpu_mem_arena = True
        opts.enable_mem_pattern = True
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),  # keep the unfused SkipLayerNormalization unfused
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits ``(n, k)`` float32 for int64 ``input_ids``/``attention_mask`` (numpy in, numpy out)."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        (logits,) = self.session.run(["logits"], {name: feeds[name] for name in self.input_names})
        return logits

    def __call__(self, **inputs: Any) -> SimpleNamespace:
        import torch

        logits = self.logits(*(inputs[k].cpu().numpy().astype(np.int64) for k in ("input_ids", "attention_mask")))
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def eval(self) -> _OrtModel:
        return self

    def to(self, _device: Any) -> _OrtModel:
        return self


class OnnxClassifier(VariantClassifier):
    """An exported ONNX model (fp32 or int8) run by onnxruntime on CPU."""

    def __init__(self, vdir: Path, *, runtime: str = "onnx", batch_size: int = 64, num_threads: int | None = None):
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from modelyard.config import CleaningConfig
        from modelyard.data.cleaning import clean_text

        _read_variant(vdir, runtime)
        # Classifier.__init__ always loads safetensors weights, so the text front end is set up here
        # with the same attributes and the same helpers (CleaningConfig + clean_text, the saved
        # tokenizer); only the forward pass and the softmax below run on numpy instead of torch.
        self.model_dir = vdir
        self.variant_path = vdir
        self.runtime = runtime
        self.meta = read_json(vdir / MODEL_META)
        self.labels = list(self.meta["labels"])
        self.max_length = int(self.meta["max_length"])
        self._cleaning = CleaningConfig.model_validate(self.meta.get("cleaning", {}))
        self._normalize = clean_text
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        hf_logging.set_verbosity_error()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(vdir, local_files_only=True, trust_remote_code=False)
            self.model = _OrtModel(vdir / ONNX_FILE, num_threads or torch.get_num_threads())
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the {runtime} variant in {vdir}: {err}") from None
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._torch = torch
        self._lock = threading.Lock()

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """As :meth:`VariantClassifier.predict_logits`, numpy end to end (no torch tensors on the request path)."""
        from modelyard._internal.batching import pad_batch_numpy, padding_aware_batches

        ids = self.encode(texts)
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        with self._lock:
            for idx in padding_aware_batches([len(x) for x in ids], self.batch_size):
                out[idx] = self.model.logits(*pad_batch_numpy([ids[i] for i in idx], self.pad_id))
        return out

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Softmax of :meth:`predict_logits` in float64 (compressed variants are single-label models)."""
        if isinstance(texts, str):
            raise TypeError("predict_proba expects a list of texts, not a single string")
        logits = self.predict_logits(texts).astype(np.float64)
        if not len(logits):
            return np.zeros((0, len(self.labels)))
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def check_variant(run_dir: Path, runtime: str) -> None:
    """Refuse, naming the file, a variant whose files are missing or damaged (before a server starts on it)."""
    if runtime != "torch":
        _read_variant(variant_dir(Path(run_dir), runtime), runtime)


def _read_variant(vdir: Path, method: str) -> dict[str, Any]:
    path = vdir / VARIANT_FILE
    if not path.is_file():
        run = vdir.parent.parent
        raise ModelError(f"no {method} variant in {vdir}; create it with `modelyard compress {run} --methods {method}`")
    run = vdir.parent.parent
    fix = f"re-create it: modelyard compress {run} --methods {method}"
    check_file(path, fix)
    spec = read_json(path)
    if spec.get("method") != method:
        raise ModelError(f"{path} describes method {spec.get('method')!r}, expected {method!r}")
    if isinstance(spec.get("files"), dict):
        verify_records(vdir, spec["files"], fix)
    return spec


def load_variant(run_dir: Path, runtime: str = "torch", *, batch_size: int = 64) -> Classifier:
    """Load a run's source model (``runtime="torch"``) or one of its compressed variants.

    Args:
        run_dir: a finished run directory.
        runtime: one of ``torch``, ``onnx``, ``onnx-int8``, ``prune``, ``distill``.

    Returns:
        A :class:`~modelyard.models.text_classifier.Classifier` (subclass); ``info()["runtime"]`` names the runtime.

    Raises:
        ModelyardError: unknown or removed runtime (``dynamic-int8`` → ``onnx-int8``), no trained model, or
            the variant has not been created.
    """
    run_dir = Path(run_dir)
    check_runtime(runtime)
    source = source_model_dir(run_dir)
    if runtime == "torch":
        return TorchClassifier(source, batch_size=batch_size)
    vdir = variant_dir(run_dir, runtime)
    if runtime in ("prune", "distill"):
        _read_variant(vdir, runtime)  # OnnxClassifier reads (and checks) its variant itself
        return TorchClassifier(vdir, runtime=runtime, batch_size=batch_size)
    return OnnxClassifier(vdir, runtime=runtime, batch_size=batch_size)
