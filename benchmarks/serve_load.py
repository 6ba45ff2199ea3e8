"""HTTP load benchmark of the server, with and without micro-batching (bounded, closed loop).

    python benchmarks/serve_load.py RUN_DIR [--concurrency 32] [--duration 15] [--texts 1] [--output FILE.md]
    python benchmarks/serve_load.py RUN_DIR --backend ray      # Ray Serve: 1 replica vs 2 replicas

For each mode a real uvicorn server is started on a loopback port in a child process (batched:
``max_batch_size=32, max_wait_ms=5``; unbatched: ``max_batch_size=1, max_wait_ms=0``), warmed up, and
``--concurrency`` async clients (httpx) send ``POST /v1/predict`` back to back for ``--duration``
seconds with texts from the run's test split. Prints a Markdown table with requests/s, texts/s,
p50/p99 latency, the error count, and the batched/unbatched throughput ratio.

With ``--backend ray`` the server is ``modelyard serve RUN --backend ray --replicas N`` (a local Ray Serve
instance, batched settings) for N = 1 and 2, and the ratio is 2 replicas over 1. On a machine with C cores each
replica gets C/N torch threads, so extra replicas pay off where one process cannot use every core (the GIL-bound
request path, small batches) — not on a 2-core box whose one replica already keeps both cores busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_SERVER = """
import sys
from modelyard.config import ServeConfig
from modelyard.models.loading import load
from modelyard.serving import serve
run, port, batch, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cfg = ServeConfig(max_batch_size=batch, max_wait_ms=wait, max_queue=100000, max_texts_per_request=64)
serve(lambda: load(run), cfg, host="127.0.0.1", port=port)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(base: str, texts: list[str], per_request: int, concurrency: int, duration: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = 0.0  # set after the warm-up

    async def client(c: httpx.AsyncClient, seed: int) -> None:
        nonlocal errors
        i = seed
        while time.perf_counter() < stop:
            batch = [texts[(i + k) % len(texts)] for k in range(per_request)]
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/predict", json={"texts": batch})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
        for t in texts[:8]:  # warm-up
            await c.post("/v1/predict", json={"texts": [t]})
        start = time.perf_counter()
        stop = start + duration
        await asyncio.gather(*(client(c, n) for n in range(concurrency)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_s": len(latencies) / wall,
        "texts_s": len(latencies) * per_request / wall,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
    }


def _ray_command(run: Path, port: int, replicas: int) -> list[str]:
    settings = ["serve.max_batch_size=32", "serve.max_wait_ms=5", "serve.max_queue=100000"]
    settings += ["serve.max_texts_per_request=64"]
    return [sys.executable, "-m", "modelyard", "serve", str(run), *settings, "--backend", "ray"] + [
        "--replicas",
        str(replicas),
        "--port",
        str(port),
    ]


def run_mode(run: Path, texts: list[str], batch: int, wait: float, args: argparse.Namespace, replicas: int = 0) -> dict:
    """One server under load: a uvicorn process (``replicas`` 0) or a Ray Serve deployment of ``replicas``."""
    import httpx

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    command = (
        _ray_command(run, port, replicas)
        if replicas
        else [sys.executable, "-c", _SERVER, str(run), str(port), str(batch), str(wait)]
    )
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        last = "no answer"
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                r = httpx.get(f"{base}/readyz", timeout=2)
                if r.status_code == 200:
                    break
                last = r.text
            except httpx.TransportError as err:
                last = repr(err)
            if time.monotonic() > deadline:
                raise SystemExit(f"server never became ready: {last}")
            time.sleep(0.2)
        return asyncio.run(_load(base, texts, args.texts, args.concurrency, args.duration))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run directory (e.g. the quickstart's)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per mode")
    parser.add_argument("--texts", type=int, default=1, help="texts per request")
    parser.add_argument("--threads", type=int, default=2, help="torch/OMP threads of the server")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--backend", choices=("uvicorn", "ray"), default="uvicorn")
    args = parser.parse_args(argv)

    texts = pd.read_parquet(args.run / "splits" / "test.parquet")["text"].astype(str).tolist()
    if args.backend == "ray":
        args.threads = os.cpu_count() or 1  # the replicas split the cores between them
        results = {
            "ray, 1 replica": run_mode(args.run, texts, 32, 5.0, args, replicas=1),
            "ray, 2 replicas": run_mode(args.run, texts, 32, 5.0, args, replicas=2),
        }
    else:
        results = {
            "batched (32, 5 ms)": run_mode(args.run, texts, 32, 5.0, args),
            "unbatched (1, 0 ms)": run_mode(args.run, texts, 1, 0.0, args),
        }
    lines = [
        f"concurrency {args.concurrency}, {args.texts} text(s)/request, {args.duration:.0f} s per mode, "
        f"server threads {args.threads}, {os.cpu_count()} CPUs",
        "",
        "| mode | requests | errors | req/s | texts/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['requests']} | {r['errors']} | {r['req_s']:.1f} | {r['texts_s']:.1f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    (_, a), (_, b) = results.items()
    ratio = a["req_s"] / max(b["req_s"], 1e-9)
    if args.backend == "ray":
        lines += ["", f"throughput ratio 2 replicas / 1 replica: {1 / max(ratio, 1e-9):.2f}x"]
    else:
        lines += ["", f"throughput ratio batched/unbatched: {ratio:.2f}x"]
    table = "\n".join(lines)
    print(table)
    print(json.dumps(results), file=sys.stderr)
    if args.output:
        args.output.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
