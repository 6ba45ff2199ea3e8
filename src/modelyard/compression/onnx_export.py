"""ONNX export of a run's sequence classifier: ``(input_ids, attention_mask) → logits`` with dynamic axes.

The ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``) is the default; the deprecated
TorchScript exporter remains only as a recorded fallback (see :data:`_LEGACY_EXPORT`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelyard.compression.variants import ONNX_INPUTS
from modelyard.errors import ModelyardError

# The dynamo exporter's lowest opset (onnxruntime >= 1.14 runs it); the TorchScript fallback keeps 17.
ONNX_OPSET = 18
LEGACY_ONNX_OPSET = 17
# config.model_type → why its models go straight to the TorchScript exporter (measured with torch 2.13).
_LEGACY_EXPORT: dict[str, str] = {
    "modelyard-bilstm": (
        "torch.export cannot trace pack_padded_sequence: its lengths come from the attention mask "
        "(data-dependent shapes)"
    ),
}


class _LogitsOnly:
    """Wrap a sequence classifier so the exported graph has exactly (input_ids, attention_mask) → logits."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

        # eval() on the wrapper: the exporter restores the wrapper's training flag afterwards, and a
        # fresh Module is in training mode, which would switch dropout on in the inner model.
        return Wrapper(model).eval()


@contextlib.contextmanager
def no_hf_progress_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" / "Writing model shards" bars for the duration."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()


def load_fp32(source: Path, **kwargs: Any) -> Any:
    """The source model in fp32 on the CPU, in eval mode (safetensors only, never a pickle)."""
    from transformers import AutoModelForSequenceClassification

    with no_hf_progress_bars():
        model = AutoModelForSequenceClassification.from_pretrained(
            source, local_files_only=True, trust_remote_code=False, use_safetensors=True, **kwargs
        )
    return model.cpu().eval()


def export_onnx(source: Path, path: Path, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export ``source`` to ONNX (dynamic batch and sequence axes) and check the graph.

    The ``torch.export``-based exporter (``dynamo=True``, opset 18) is used; a model it cannot export
    falls back to the deprecated TorchScript exporter (opset 17) and the reason is returned, logged and
    recorded in ``variant.json``, so a fallback is never silent.

    Returns:
        ``{"exporter": "dynamo" | "torchscript", "opset": int, "fallback_reason": str | None}``.
    """
    import onnx
    import torch

    # Eager attention exports to plain MatMul/Softmax that every onnxruntime version runs.
    model = _LogitsOnly.wrap(load_fp32(source, attn_implementation="eager"))
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 3], [2, 5, 6, 3, 0, 0, 0, 0]], dtype=torch.long)
    mask = (torch.arange(8)[None, :] < torch.tensor([[8], [4]])).long()
    reason = _LEGACY_EXPORT.get(getattr(model.inner.config, "model_type", ""))
    if reason is None:
        try:
            _export_dynamo(model, (ids, mask), path)
            onnx.checker.check_model(str(path))
            return {"exporter": "dynamo", "opset": ONNX_OPSET, "fallback_reason": None}
        except Exception as err:  # noqa: BLE001 - any exporter failure: the legacy exporter is the fallback
            first = (str(err).strip().splitlines() or [""])[0][:300]
            reason = f"dynamo exporter failed: {type(err).__name__}: {first}"
            for leftover in (path, path.with_name(path.name + ".data")):
                leftover.unlink(missing_ok=True)
    if log is not None:
        log(f"onnx: TorchScript exporter (opset {LEGACY_ONNX_OPSET}) because {reason}")
    _export_torchscript(model, (ids, mask), path)
    onnx.checker.check_model(str(path))
    return {"exporter": "torchscript", "opset": LEGACY_ONNX_OPSET, "fallback_reason": reason}


def _export_dynamo(model: Any, args: tuple[Any, ...], path: Path) -> None:
    """``torch.onnx.export(..., dynamo=True)`` with symbolic batch/sequence axes and module-path node names."""
    import logging

    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {0: batch, 1: sequence}
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        # "torchvision is not installed. Skipping torchvision::…" and similar registration chatter.
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                input_names=list(ONNX_INPUTS),
                output_names=["logits"],
                dynamic_shapes={name: dims for name in ONNX_INPUTS},
                opset_version=ONNX_OPSET,
                verbose=False,
            )
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    graph = program.model.graph
    for value in graph.inputs:
        shape = value.shape
        # A specialised (constant) axis would make the model reject other batch sizes or lengths at run time.
        if shape is None or any(isinstance(shape[axis], int) for axis in (0, 1)):
            raise ModelyardError(f"the export fixed the shape of {value.name!r} to {shape}")
    if not _name_nodes_by_module(graph) and any(node.op_type in ("MatMul", "Gemm") for node in graph):
        # Without module names the onnx-int8 ladder could not keep any MatMul in fp32.
        raise ModelyardError("the export carries no module names (node metadata pkg.torch.onnx.name_scopes)")
    _drop_export_metadata(graph)
    program.save(str(path))


def _name_nodes_by_module(graph: Any) -> int:
    """Name nodes after the module that produced them (``/inner/bert/encoder/layer.0/output/dense/MatMul``).

    The dynamo exporter names nodes ``node_MatMul_94`` and keeps the module path in the node metadata;
    the onnx-int8 fallback ladder (:data:`INT8_LADDER`) selects MatMuls by module path, so they get the
    names the TorchScript exporter gives (which the ladder's patterns were written for).

    Returns:
        How many nodes were renamed (0 when the exporter recorded no module paths).
    """
    import ast

    seen: dict[str, int] = {}
    for node in graph:
        raw = node.metadata_props.get("pkg.torch.onnx.name_scopes")
        if not raw:
            continue
        try:
            # ['', 'inner', 'inner.bert', …, 'inner.bert.pooler.dense', 'linear_12']: the root, cumulative
            # module paths, then the FX node's own name (dropped: the op type takes its place).
            scopes = [str(x) for x in ast.literal_eval(raw)][:-1]
        except (ValueError, SyntaxError):
            continue
        parts = [b[len(a) + 1 :] if a else b for a, b in zip(["", *scopes], scopes, strict=False)]
        parts = [part for part in parts if part]
        name = "/" + "/".join(parts) + "/" + node.op_type
        count = seen.get(name, 0)
        seen[name] = count + 1
        node.name = name if count == 0 else f"{name}_{count}"
    return sum(seen.values())


def _drop_export_metadata(graph: Any) -> None:
    """Remove the exporters' per-node metadata (stack traces with local source paths, FX node dumps, namespaces).

    It is debugging information only, names this machine's file paths, and on a small model outweighs
    the weights (tiny test BERT: 0.38 MB with it, 0.14 MB without; its weights take 0.11 MB).
    """
    for node in graph:
        node.metadata_props.clear()


def _export_torchscript(model: Any, args: tuple[Any, ...], path: Path) -> None:
    """The deprecated TorchScript exporter (``dynamo=False``): :data:`_LEGACY_EXPORT` and dynamo failures."""
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python control flow on shapes, the deprecation
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            input_names=list(ONNX_INPUTS),
            output_names=["logits"],
            dynamic_axes=axes | {"logits": {0: "batch"}},
            opset_version=LEGACY_ONNX_OPSET,
        )
