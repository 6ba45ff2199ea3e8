"""What ``modelyard serve TARGET`` builds, for any server that runs it: uvicorn here, or each Ray Serve replica.

A target is a finished run directory (with a runtime: torch, a compressed variant, or ``auto``) or
``NAME@ALIAS`` in the registry. :func:`build_app` returns the FastAPI app with the same routes, auth, limits,
batching and logging whichever server runs it; it is a plain function of JSON-able settings so a Ray Serve
replica can call it in its own process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from modelyard.errors import ModelyardError


@dataclass(frozen=True)
class Target:
    """One ``modelyard serve`` invocation's choices (everything a replica needs to rebuild the app)."""

    target: str
    runtime: str = "torch"
    overrides: list[str] = field(default_factory=list)
    store: str | None = None
    db: str | None = None

    @property
    def is_registry(self) -> bool:
        return "@" in self.target and not Path(self.target).exists()


def is_multi_label(run_dir: Path) -> bool:
    """Whether the model of a run directory (or model directory) learns label sets."""
    from modelyard.models.loading import model_dir_of, read_model_meta

    try:
        return read_model_meta(model_dir_of(run_dir)).get("task") == "multi-label-classification"
    except (ModelyardError, OSError, ValueError):
        return False  # not a readable model: the command's own loading reports it


def run_loader(run_dir: Path, runtime: str, say: Callable[[str], None] = lambda line: None) -> Callable[[], Any]:
    """Check a run directory and return how to load its classifier in ``runtime`` (``auto``: the fastest variant
    that passed parity, announced through ``say``)."""
    from modelyard.models.loading import check_model_files, model_dir_of, require_classifier

    check_model_files(model_dir_of(run_dir))  # fail fast on a bad path or a damaged file, before the server starts
    require_classifier(run_dir, "serve")
    if runtime == "auto":
        from modelyard.compression.choice import choose_runtime

        runtime, why = choose_runtime(run_dir, measure=True)
        say(f"runtime auto → {runtime}: {why}")
    if runtime == "torch":
        from modelyard.models.loading import load

        return lambda: load(run_dir)
    from modelyard.compression import load_variant
    from modelyard.compression.variants import check_runtime, check_variant
    from modelyard.rundir import RunDir

    check_runtime(runtime)  # names the replacement of a removed variant (dynamic-int8 → onnx-int8)
    if is_multi_label(run_dir):  # variants softmax one label; a label set needs per-label sigmoids
        raise ModelyardError(
            f"{run_dir} is a multi-label model; compressed runtimes ('{runtime}') cannot serve label sets yet; "
            "serve it with --runtime torch"
        )
    if not (RunDir(run_dir).compressed_dir / runtime).is_dir():
        raise ModelyardError(
            f"{run_dir} has no '{runtime}' variant; create it with: modelyard compress {run_dir} --methods {runtime}"
        )
    check_variant(run_dir, runtime)
    return lambda: load_variant(run_dir, runtime)


def serve_settings(target: Target) -> Any:
    """The target's ``serve`` section with the command line's ``serve.KEY=VALUE`` overrides."""
    from modelyard.rundir import RunDir

    if target.is_registry:
        from modelyard.registry import open_registry
        from modelyard.serving.production import parse_target, serve_config_of

        name, alias = parse_target(target.target)
        registry = open_registry(_path(target.store), target.db)
        return serve_config_of(registry.resolve(name, alias), target.overrides)
    return RunDir(Path(target.target)).serve_settings(target.overrides)


def build_app(
    target: Target,
    drift_monitor: Callable[..., dict[str, Any]] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> FastAPI:
    """The app ``modelyard serve`` runs for ``target``: a run directory's, or the registry's production app."""
    from modelyard.serving import create_app

    cfg = serve_settings(target)
    if target.is_registry:
        from modelyard.registry import open_registry
        from modelyard.serving.production import create_production_app, parse_target

        name, alias = parse_target(target.target)
        registry = open_registry(_path(target.store), target.db)
        return create_production_app(registry, name, alias, cfg, drift_monitor=drift_monitor)
    app = create_app(run_loader(Path(target.target), target.runtime, say), cfg)
    if cfg.auth:  # serve.auth: true → API keys from the registry
        from modelyard.registry import open_registry
        from modelyard.serving.security import install_auth

        install_auth(
            app, open_registry(_path(target.store), target.db).lookup_key, max_in_flight=cfg.max_in_flight_per_key
        )
    return app


def _path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None
