"""CPU inference of a trained run against what a user would otherwise run, side by side in one process.

    python benchmarks/inference.py RUN_DIR [--repeats 30] [--threads N] [--compile] [--no-http]

Measured on the run's own test texts (the same texts for everyone):

* ``hf-pipeline``: ``transformers.pipeline("text-classification")`` on torch fp32 — the usual choice;
* ``torch``: modelyard's loaded model (``inference_mode``, length-sorted batches, dynamic padding);
* ``torch.compile`` (``--compile``): the same model wrapped in ``torch.compile``;
* every variant ``modelyard compress`` left in ``RUN/compressed/`` (onnx, onnx-int8 …);
* ``http``: ``modelyard serve RUN --runtime auto`` on loopback, one text per ``POST /v1/predict`` over a kept-alive
  ``http.client`` connection — its p50 minus the in-process p50 of the runtime it chose is the HTTP overhead (also
  measured paired, block by block; the p50 from an ``httpx`` client is printed for reference).

For each: p50/p95 ms at batch 1 and texts/s at batch 32, with ratios to the pipeline. For BERT-family encoders a
roofline line follows: the FLOPs of one request (the encoder's matrix products at the texts' mean token length)
divided by this machine's measured fp32 GEMM throughput (a torch matmul micro-benchmark here) is a latency floor;
each runtime's p50 is shown as a multiple of it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _timed(fn: Any, batches: list[list[str]], repeats: int) -> list[float]:
    fn(batches[0])  # warm-up (lazy init, allocator, kernels)
    out = []
    for i in range(repeats):
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        fn(batch)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _row(name: str, fn: Any, texts: list[str], repeats: int) -> dict[str, Any]:
    ones = [[t] for t in texts[: max(repeats, 1)]]
    b32 = [texts[i : i + 32] for i in range(0, max(len(texts) - 31, 1), 32)] or [texts[:32]]
    b1 = _timed(fn, ones, repeats)
    t32 = _timed(fn, b32, max(3, repeats // 5))
    return {
        "name": name,
        "p50_b1": statistics.median(b1),
        "p95_b1": float(np.percentile(b1, 95)),
        "tps_b32": 32_000.0 / statistics.median(t32),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_row(
    run: Path, texts: list[str], repeats: int, overrides: list[str], load_inproc: Any
) -> tuple[dict[str, Any] | None, str, list[float], float | None]:
    """``modelyard serve RUN --runtime auto`` on loopback: one text per request over one kept-alive connection.

    The timed client is the standard library's ``http.client`` (the lightest keep-alive client: what is measured
    is the server, not the client); the p50 of ``httpx``, a typical Python client, is returned for reference.
    Then blocks of 10 texts are timed in-process (the runtime the server chose, ``load_inproc(runtime)``, read
    from the response's ``model.runtime``) and over HTTP, block after block, so both see the same machine state;
    the difference of each pair of block medians is one paired HTTP overhead. Blocks, not single requests: on a
    2-core machine the in-process session's onnxruntime workers keep spinning for a moment after a call and would
    steal the server's core from the request that follows.
    """
    import http.client
    import json

    import httpx

    port = _free_port()
    env = {**os.environ, "MODELYARD_LOG_LEVEL": "warning", "COLUMNS": "400"}  # its "runtime auto" line unwrapped
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", str(run), "--runtime", "auto", "--port", str(port), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    diffs: list[float] = []
    httpx_p50 = None
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=30) as client:
            for _ in range(600):
                try:
                    if client.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    return None, (proc.stderr.read() if proc.stderr else ""), [], None
                time.sleep(0.1)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Content-Type": "application/json"}

            def call(batch: list[str]) -> None:
                conn.request("POST", "/v1/predict", json.dumps({"texts": batch}), headers)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"POST /v1/predict → {response.status}: {body[:200]!r}")

            row = _row("http (serve --runtime auto)", call, texts, repeats)

            def call_httpx(batch: list[str]) -> None:
                client.post(f"{url}/v1/predict", json={"texts": batch}).raise_for_status()

            httpx_p50 = _row("httpx", call_httpx, texts, repeats)["p50_b1"]
            served = client.post(f"{url}/v1/predict", json={"texts": texts[:1]}).json()["model"].get("runtime", "torch")
            inproc = load_inproc(served)
            inproc(texts[:1])
            block = 10
            sample = texts[: max(repeats, block)]
            for start in range(0, len(sample) - block + 1, block):
                chunk = sample[start : start + block]
                in_ms, http_ms = [], []
                for text in chunk:
                    t0 = time.perf_counter()
                    inproc([text])
                    in_ms.append(time.perf_counter() - t0)
                for text in chunk:
                    t0 = time.perf_counter()
                    call([text])
                    http_ms.append(time.perf_counter() - t0)
                diffs.append((statistics.median(http_ms) - statistics.median(in_ms)) * 1000.0)
            conn.close()
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    chosen = next((line for line in (err or "").splitlines() if "runtime auto" in line), "")
    return row, chosen, diffs, httpx_p50


def _gemm_gflops(h: int, inner: int, rows: int = 64, repeats: int = 50) -> float:
    """Measured fp32 GEMM throughput of torch on this machine at the encoder's shapes (GFLOP/s)."""
    import torch

    a, b = torch.randn(rows, h), torch.randn(h, inner)
    for _ in range(5):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2.0 * rows * h * inner * repeats / (time.perf_counter() - t0) / 1e9


def _encoder_flops(config: Any, tokens: float) -> float | None:
    """Matrix-product FLOPs of one forward pass of a BERT-style encoder over ``tokens`` tokens."""
    h = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    inner = getattr(config, "intermediate_size", None)
    if not (h and layers and inner):
        return None
    s = tokens
    per_layer = 2 * s * (4 * h * h + 2 * h * inner) + 2 * 2 * s * s * h  # QKV+out, FFN, scores+context
    return float(layers * per_layer + 2 * h * h + 2 * h * config.num_labels)  # + pooler and head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=30, help="timed batch-1 calls per runtime")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compiles first: slow)")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP round trip")
    parser.add_argument(
        "--serve",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a serve override for the HTTP row, e.g. serve.max_wait_ms=0 for a run whose recipe predates that default",
    )
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from modelyard.compression import load_variant
    from modelyard.models.loading import load
    from modelyard.rundir import RunDir

    run = RunDir.finished(args.run_dir).path
    texts = pd.read_parquet(run / "splits" / "test.parquet")["text"].astype(str).tolist()
    texts = (texts * (1 + 96 // max(len(texts), 1)))[: max(96, args.repeats)]
    rows = []

    clf = load(run)
    model_dir = run / "model"
    if hasattr(clf, "model") and hasattr(clf, "tokenizer"):
        from transformers import pipeline

        pipe = pipeline("text-classification", model=str(model_dir), device=-1, top_k=None)
        max_length = int(getattr(clf, "max_length", 512))  # the user's pipeline truncates as the model was trained
        rows.append(
            _row(
                "hf-pipeline (torch fp32)",
                lambda b: pipe(b, batch_size=len(b), truncation=True, max_length=max_length),
                texts,
                args.repeats,
            )
        )
    rows.append(_row("modelyard torch", clf.predict_proba, texts, args.repeats))
    if args.compile and hasattr(clf, "model"):
        clf.model = torch.compile(clf.model)
        rows.append(_row("modelyard torch.compile", clf.predict_proba, texts, args.repeats))
        clf = load(run)
    variants = sorted(p.name for p in (run / "compressed").iterdir()) if (run / "compressed").is_dir() else []
    for name in variants:
        try:
            variant = load_variant(run, name)
        except Exception as err:  # noqa: BLE001 - a benchmark reports what it could not load and goes on
            print(f"skip {name}: {err}")
            continue
        rows.append(_row(f"modelyard {name}", variant.predict_proba, texts, args.repeats))
    chosen, diffs, httpx_p50 = "", [], None
    if not args.no_http:

        def load_inproc(runtime: str) -> Any:
            return (load_variant(run, runtime) if runtime != "torch" else clf).predict_proba

        http, chosen, diffs, httpx_p50 = _http_row(run, texts, args.repeats, args.serve, load_inproc)
        if http is not None:
            rows.append(http)
        else:
            print(f"http: the server did not start: {chosen[-500:]}")

    base = rows[0]
    print(f"\n{run.name}: {len(texts)} test texts, torch threads {torch.get_num_threads()}")
    print(f"{'runtime':34} {'p50 b1 ms':>10} {'p95 b1 ms':>10} {'× pipe':>7} {'texts/s b32':>12} {'× pipe':>7}")
    for r in rows:
        print(
            f"{r['name']:34} {r['p50_b1']:10.2f} {r['p95_b1']:10.2f} {base['p50_b1'] / r['p50_b1']:7.2f} "
            f"{r['tps_b32']:12.1f} {r['tps_b32'] / base['tps_b32']:7.2f}"
        )
    if chosen:
        print(chosen.strip())
        http = next((r for r in rows if r["name"].startswith("http")), None)
        picked = chosen.split("→", 1)[-1].split(":", 1)[0].strip()
        inproc = next((r for r in rows if r["name"] == f"modelyard {picked}"), None)
        if http and inproc:
            print(f"HTTP overhead over in-process {picked}: {http['p50_b1'] - inproc['p50_b1']:+.2f} ms p50 at batch 1")
    if diffs:
        print(
            f"HTTP overhead, paired (blocks of 10 texts in-process, then the same 10 over HTTP; "
            f"{len(diffs)} pairs of block medians): median {statistics.median(diffs):+.2f} ms, "
            f"max {max(diffs):+.2f} ms"
        )
    if httpx_p50 is not None:
        print(f"(the same requests from an httpx client: p50 {httpx_p50:.2f} ms at batch 1)")
    config = getattr(getattr(clf, "model", None), "config", None)
    if config is not None and getattr(config, "num_hidden_layers", None):
        tokens = float(np.mean([len(x) for x in clf.encode(texts)]))
        flops = _encoder_flops(config, tokens)
        if flops:
            gflops = _gemm_gflops(config.hidden_size, config.intermediate_size)
            floor = flops / (gflops * 1e9) * 1000.0
            print(
                f"roofline: {flops / 1e6:.1f} MFLOP per request ({tokens:.0f} tokens) ÷ {gflops:.1f} GFLOP/s "
                f"(measured fp32 GEMM) = {floor:.2f} ms floor at batch 1"
            )
            for r in rows:
                print(f"  {r['name']:32} {r['p50_b1'] / floor:6.1f}× the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
