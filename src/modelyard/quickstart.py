"""``modelyard quickstart``: train the bundled example, print test metrics, smoke-test the server."""

from __future__ import annotations

import socket
import threading
import time
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console

from modelyard._internal.layout import RECIPE
from modelyard.config import apply_overrides, load_recipe, recipe_from_dict
from modelyard.errors import ModelyardError
from modelyard.models.loading import load
from modelyard.serving import create_app
from modelyard.training.run import train


def quickstart_recipe(output_dir: Path, overrides: list[str]):  # noqa: ANN201 - Recipe
    """The packaged quickstart recipe with ``output_dir`` and overrides applied (paths relative to cwd)."""

    raw = yaml.safe_load(resources.files("modelyard").joinpath("recipes/quickstart.yaml").read_text("utf-8"))
    raw["output_dir"] = str(output_dir)
    raw = apply_overrides(raw, overrides)
    return recipe_from_dict(raw, base_dir=Path.cwd(), source="quickstart recipe")


def run_quickstart(output_dir: Path, overrides: list[str], *, smoke_serve: bool, console: Console) -> Path:
    """Train + evaluate the quickstart recipe, then (optionally) serve it on loopback and call it once."""

    recipe = quickstart_recipe(output_dir, overrides)
    run_dir = train(recipe, console=console)
    if smoke_serve:
        smoke_test_server(run_dir, console)
    console.print(f"[bold green]quickstart done[/] · run: {run_dir} · report: {run_dir / 'report.html'}")
    console.print(f"next: modelyard serve {run_dir}   ·   modelyard evaluate {run_dir}")
    return run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_test_server(run_dir: Path, console: Console, timeout_s: float = 120.0) -> dict:
    """Start the real server on a free loopback port, wait for /readyz, POST /v1/predict, shut down."""
    import httpx
    import uvicorn

    cfg = load_recipe(run_dir / RECIPE).serve
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(lambda: load(run_dir), cfg), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ModelyardError(f"smoke test: server on {base} not ready after {timeout_s:.0f}s")
            time.sleep(0.2)
        texts = [
            "A warm, funny and beautifully acted film.",
            "A dull, lifeless mess that overstays its welcome.",
        ]
        resp = httpx.post(f"{base}/v1/predict", json={"texts": texts}, timeout=30)
        if resp.status_code != 200:
            raise ModelyardError(f"smoke test: POST /v1/predict returned {resp.status_code}: {resp.text[:200]}")
        body = resp.json()
        for text, pred in zip(texts, body["predictions"], strict=True):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in pred["scores"].items())
            console.print(f"served: {text!r} → [bold]{pred['label']}[/] ({scores})")
        return body
    finally:
        server.should_exit = True
        thread.join(timeout=30)
