"""Which int8 quantisation pays on this CPU: dynamic vs static (QDQ / QOperator), per-channel, u8/s8, side by side.

    python benchmarks/int8_choices.py RUN_DIR [--rows 1000] [--repeats 60]

Starts from the run's fused fp32 graph (``RUN/compressed/onnx/model.onnx``; ``modelyard compress RUN`` makes it),
runs onnxruntime's recommended pre-processing once, then builds each candidate in a temporary folder:

* ``dynamic s8 per-channel`` — what ``onnx-int8`` builds (``quantize_dynamic``, int8 weights, per-channel
  scales; activations quantised at run time, u8);
* ``dynamic s8 per-tensor``, ``dynamic u8u8`` (uint8 weights: no ``vpmaddubsw`` saturation on AVX2),
  ``dynamic reduce-range`` (7-bit weights, the other AVX2 remedy);
* ``dynamic s8 no-Gather`` (``rr``: with reduce-range) — only MatMul/Attention quantised, the embedding table
  (a Gather) kept fp32;
* ``ffn MatMuls fp32`` — the ladder's ``ffn-fp32`` level (feed-forward MatMuls not quantized);
* ``outlier channels fp32 (6×/3×)`` — the ladder's outlier levels: the input channels whose range exceeds 6× (3×)
  the median channel's stay fp32 in a side product, the rest of every MatMul is int8 (compression/outliers.py);
* ``static QDQ u8s8`` / ``static QDQ s8s8`` — ``quantize_static`` with QuantizeLinear/DequantizeLinear pairs,
  activation ranges calibrated (MinMax) on 256 *training* texts;
* ``static QOperator u8s8`` — the same calibration, QLinearMatMul operators.

For each: argmax agreement with torch fp32 on ``--rows`` training texts (and the one-sided 95% lower bound the
``onnx-int8`` ladder uses), agreement on the test split, p50 ms at batch 1 and texts/s at batch 32 — all through
the same padding-aware batching as serving — and the file size. The CPU's int8 kernel path is printed first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _logits(model: Any, ids: list[list[int]], pad_id: int, batch_size: int = 32) -> np.ndarray:
    from modelyard._internal.batching import pad_batch_numpy, padding_aware_batches

    out = None
    for idx in padding_aware_batches([len(x) for x in ids], batch_size):
        got = model.logits(*pad_batch_numpy([ids[i] for i in idx], pad_id))
        if out is None:
            out = np.zeros((len(ids), got.shape[1]), dtype=np.float32)
        out[idx] = got
    assert out is not None
    return out


def _speed(model: Any, ids: list[list[int]], pad_id: int, repeats: int) -> tuple[float, float]:
    singles = [[x] for x in ids[:repeats]]
    b32 = [ids[i : i + 32] for i in range(0, len(ids) - 31, 32)][:8]
    _logits(model, singles[0], pad_id)
    t1 = []
    for one in singles:
        t0 = time.perf_counter()
        _logits(model, one, pad_id)
        t1.append((time.perf_counter() - t0) * 1000)
    t32 = []
    for batch in b32:
        t0 = time.perf_counter()
        _logits(model, batch, pad_id)
        t32.append(time.perf_counter() - t0)
    return statistics.median(t1), 32 / statistics.median(t32)


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over padded batches of token ids."""

    def __init__(self, ids: list[list[int]], pad_id: int, input_names: list[str]) -> None:
        from modelyard._internal.batching import pad_batch_numpy

        self._batches = []
        for i in range(0, len(ids), 16):
            input_ids, mask = pad_batch_numpy(ids[i : i + 16], pad_id)
            feeds = {"input_ids": input_ids, "attention_mask": mask}
            self._batches.append({k: feeds[k] for k in input_names})
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rows", type=int, default=1000, help="training texts for the agreement estimate")
    parser.add_argument("--repeats", type=int, default=60, help="timed batch-1 calls per candidate")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime
    import pandas as pd
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelyard.compression.build import INT8_LADDER
    from modelyard.compression.cpu import cpu_summary
    from modelyard.compression.onnx_export import load_fp32
    from modelyard.compression.outliers import channel_ranges, split_outliers
    from modelyard.compression.parity import agreement_entry, calibration_texts, torch_logits
    from modelyard.compression.variants import _OrtModel
    from modelyard.models.text_classifier import Classifier
    from modelyard.rundir import RunDir

    run = RunDir.finished(args.run_dir).path
    fused = run / "compressed" / "onnx" / "model.onnx"
    if not fused.is_file():
        print(f"no fused fp32 graph at {fused}; run: modelyard compress {run} --methods onnx", file=sys.stderr)
        return 2
    front = Classifier(run / "model", device="cpu")
    pad = front.pad_id
    texts, _ = calibration_texts(run, rows=args.rows)
    train_ids = front.encode(texts)
    test_ids = front.encode(pd.read_parquet(run / "splits" / "test.parquet")["text"].astype(str).tolist())
    torch_model = load_fp32(run / "model")
    ref_train = torch_logits(torch_model, train_ids, pad)
    ref_test = torch_logits(torch_model, test_ids, pad)
    cpu = cpu_summary()
    print(f"{run.name}: onnxruntime {onnxruntime.__version__}, {cpu['processor']}, int8 kernels: {cpu['int8_kernels']}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        prep = tmpdir / "prep.onnx"
        quant_pre_process(str(fused), str(prep), skip_symbolic_shape=True)
        input_names = [i.name for i in onnx.load(str(prep)).graph.input]
        calib = train_ids[:256]

        def static(fmt: Any, act: Any, **extra: Any) -> Any:
            return lambda out: quantize_static(
                str(prep),
                str(out),
                _Reader(calib, pad, input_names),
                quant_format=fmt,
                activation_type=act,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"],
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
            )

        MATMULS = ["MatMul", "Attention"]  # the embedding Gather stays fp32
        ranges = channel_ranges(prep, train_ids)
        ffn_levels = dict(INT8_LADDER)["ffn-fp32"]
        ffn = [n.name for n in onnx.load(str(prep)).graph.node if any(p.search(n.name) for p in ffn_levels)]

        def split(threshold: float) -> Any:
            """What the onnx-int8 ladder's outlier levels build: outlier input channels fp32, the rest int8."""

            def build(out: Path) -> None:
                staged = out.with_name(out.stem + ".split.onnx")
                facts = split_outliers(prep, staged, ranges, threshold)
                quantize_dynamic(
                    str(staged),
                    str(out),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    nodes_to_exclude=facts["fp32_nodes"],
                )

            return build

        candidates = {
            "fp32 fused (onnx)": None,
            "dynamic s8 per-channel": lambda out: quantize_dynamic(
                str(prep), str(out), weight_type=QuantType.QInt8, per_channel=True
            ),
            "dynamic s8 per-tensor": lambda out: quantize_dynamic(
                str(prep), str(out), weight_type=QuantType.QInt8, per_channel=False
            ),
            "dynamic u8u8 per-channel": lambda out: quantize_dynamic(
                str(prep), str(out), weight_type=QuantType.QUInt8, per_channel=True
            ),
            "dynamic s8 reduce-range": lambda out: quantize_dynamic(
                str(prep), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
            ),
            "dynamic s8 no-Gather": lambda out: quantize_dynamic(
                str(prep), str(out), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=MATMULS
            ),
            "dynamic s8 no-Gather rr": lambda out: quantize_dynamic(
                str(prep),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                op_types_to_quantize=MATMULS,
            ),
            "ffn MatMuls fp32 (ffn-fp32)": lambda out: quantize_dynamic(
                str(prep), str(out), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=ffn
            ),
            "outlier channels fp32 (6×)": split(6.0),
            "outlier channels fp32 (3×)": split(3.0),
            "static QDQ u8s8": static(QuantFormat.QDQ, QuantType.QUInt8),
            "static QDQ s8s8": static(QuantFormat.QDQ, QuantType.QInt8, ActivationSymmetric=True),
            "static QOperator u8s8": static(QuantFormat.QOperator, QuantType.QUInt8),
        }
        for i, (name, build) in enumerate(candidates.items()):
            path = fused if build is None else tmpdir / f"c{i}.onnx"
            t0 = time.perf_counter()
            try:
                if build is not None:
                    build(path)
            except Exception as err:  # noqa: BLE001 - a benchmark reports the candidate it could not build
                print(f"  {name}: could not build: {type(err).__name__}: {str(err)[:200]}")
                continue
            built = time.perf_counter() - t0
            model = _OrtModel(path)
            train = agreement_entry(_logits(model, train_ids, pad), ref_train, 0.99)
            test = agreement_entry(_logits(model, test_ids, pad), ref_test, 0.99)
            p50, tps = _speed(model, test_ids, pad, args.repeats)
            rows.append((name, train, test, p50, tps, path.stat().st_size / 2**20, built))

    base = rows[0]
    print(
        f"{'candidate':26} {'train agr':>9} {'95% LB':>7} {'test agr':>8} {'p50 b1 ms':>9} {'× fp32':>6} "
        f"{'texts/s b32':>11} {'× fp32':>6} {'MiB':>6} {'build s':>7}"
    )
    for name, train, test, p50, tps, mib, built in rows:
        print(
            f"{name:26} {train['agreement']:9.4f} {train['lower_bound']:7.4f} {test['agreement']:8.4f} {p50:9.2f} "
            f"{base[3] / p50:6.2f} {tps:11.1f} {tps / base[4]:6.2f} {mib:6.1f} {built:7.1f}"
        )
    print(f"({train['n']} training texts, {test['n']} test texts; agreement = same argmax as torch fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
