"""The data and the run directory of a federated simulation (:mod:`modelyard.training.federated` runs the rounds).

:func:`prepare_clients` gives each simulated client its shard (a partition of the training split, or its own
file) and describes the federation (class mix per client); :func:`write_federated_run` writes a run directory
like ``modelyard train`` does — recipe, splits, data report, ``model/``, metrics, predictions, history, report,
manifest — staged hidden and renamed into place when complete, so ``evaluate``, ``predict``, ``serve``,
``registry register`` and ``runs`` read it like any other run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from modelyard._internal.io import read_json, write_json
from modelyard._internal.rundir import discard_run, finish_run, run_manifest, start_run
from modelyard._internal.storage import storage_errors
from modelyard.config import Recipe
from modelyard.data import PreparedData, prepare_data
from modelyard.data.images import prepare_images
from modelyard.errors import ConfigError
from modelyard.evaluation.image_report import add_mistake_grid
from modelyard.evaluation.predictions import print_metrics
from modelyard.evaluation.report import write_report
from modelyard.kinds import get_kind
from modelyard.rundir import RunDir
from modelyard.training.loop import FineTuneRecipe
from modelyard.training.partition import (
    class_mix,
    column_groups,
    label_names,
    parse_partition,
    require_rows,
    split_clients,
    subset,
)

FEDERATION = "federation.json"
WORKDIR = "federation"  # the clients' own progress logs (their checkpoints are removed at the end)
LOCAL_VALID = 16  # rows of its own shard a client validates on after each local epoch (its progress log only)


@dataclass(frozen=True)
class FederationSpec:
    """How to federate: ``clients`` simulated clients, ``rounds`` of FedAvg, ``local_epochs`` per round.

    ``partition``: ``iid``, ``dirichlet:ALPHA`` (label skew; smaller is more skewed) or ``by-column:COL``
    (one client per value of a column of the data file); ``fraction_fit``: share of clients trained per round.
    """

    clients: int
    rounds: int
    local_epochs: int = 1
    partition: str = "iid"
    fraction_fit: float = 1.0


def state_arrays(model: Any) -> tuple[list[str], list[np.ndarray]]:
    """The floating-point entries of a model's state (weights, batch-norm statistics) as numpy arrays.

    Integer buffers (position ids, batch counters) are constants of the architecture and are not averaged.
    """
    items = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    return [k for k, _ in items], [v.detach().float().cpu().numpy().copy() for _, v in items]


def load_arrays(model: Any, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    """Load arrays from :func:`state_arrays` into a model of the same architecture."""
    import torch

    state = model.state_dict()
    for name, array in zip(names, arrays, strict=True):
        state[name] = torch.as_tensor(array, dtype=state[name].dtype, device=state[name].device)
    model.load_state_dict(state)


def _client_data(data: Any, shard: Any) -> Any:
    """A client's view for the loop: its shard to train on, a few of its own rows to validate on."""
    head = subset(shard, list(range(min(len(shard), LOCAL_VALID))))
    return replace(data, train=shard, valid=head, test=head, fingerprints={})


def _pooled(recipe: Recipe, files: Sequence[Path]) -> tuple[PreparedData, list[pd.DataFrame], list[str]]:
    """One text data set per client file (each split by the recipe's data settings), and their union."""
    parts = [prepare_data(recipe.data.model_copy(update={"path": str(f)}), recipe.base_dir) for f in files]
    labels = list(recipe.data.labels or sorted({lab for p in parts for lab in p.labels}))
    splits = {s: pd.concat([getattr(p, s) for p in parts], ignore_index=True) for s in ("train", "valid", "test")}
    report = {
        "source": f"{len(files)} client files",
        "rows_in": sum(int(p.report.get("rows_in", 0)) for p in parts),
        "rows_out": sum(int(p.report.get("rows_out", 0)) for p in parts),
        "class_balance": class_mix(splits["train"]["label"].tolist(), labels),
        "split_sizes": {s: len(f) for s, f in splits.items()},
        "clients": {str(f): p.report for f, p in zip(files, parts, strict=True)},
    }
    fingerprints = {k: v for p in parts for k, v in p.fingerprints.items()}
    data = PreparedData(splits["train"], splits["valid"], splits["test"], labels, report, fingerprints)
    return data, [p.train for p in parts], [Path(f).stem for f in files]


def prepare_clients(
    recipe: Recipe, spec: FederationSpec, client_files: Sequence[Path], console: Console
) -> tuple[Any, list[Any], dict[str, Any]]:
    """The pooled data, each client's data for the loop, and the federation's description (class mix per client).

    Raises:
        ModelyardError: Bad data, a partition that cannot be made, client files for an image recipe.
    """
    kind = get_kind(recipe.model.type)
    partition, column = parse_partition(spec.partition)
    if client_files:
        if kind.modality == "image":
            raise ConfigError("--client-data takes text files; image recipes are partitioned from data.path")
        data, shards, names = _pooled(recipe, client_files)
        source = {"client_files": [str(Path(f).resolve()) for f in client_files]}
        rows = []
        start = 0
        for shard in shards:
            rows.append(list(range(start, start + len(shard))))
            start += len(shard)
    else:
        data = (
            prepare_images(recipe.data, recipe.base_dir)
            if kind.modality == "image"
            else prepare_data(recipe.data, recipe.base_dir)
        )
        groups = None
        if partition == "by-column":
            if kind.modality == "image":
                raise ConfigError("--partition by-column needs a table of texts; use iid or dirichlet for images")
            groups = column_groups(recipe, data.train, column)
        y = label_names(data.train, data.labels)
        idx, names = split_clients(y, spec.clients, spec.partition, recipe.data.seed, groups)
        shards = [subset(data.train, i) for i in idx]
        source = {"partition": spec.partition, "seed": recipe.data.seed}
        rows = [i.tolist() for i in idx]
    require_rows(shards)
    labels = list(data.labels)
    clients = [
        {"name": name, "examples": len(shard), "class_mix": class_mix(label_names(shard, labels), labels), "rows": r}
        for name, shard, r in zip(names, shards, rows, strict=True)
    ]
    federation = {
        "strategy": "FedAvg",
        "framework": f"flwr {metadata.version('flwr')}",
        "clients": len(shards),
        "rounds": spec.rounds,
        "local_epochs": spec.local_epochs,
        "fraction_fit": spec.fraction_fit,
        "partition": "client files" if client_files else spec.partition,
        **source,
        "class_mix": {c["name"]: c["class_mix"] for c in clients},
        "per_client": clients,
    }
    print_class_mix(console, federation, labels)
    return data, [_client_data(data, s) for s in shards], federation


def print_class_mix(console: Console, federation: dict[str, Any], labels: Sequence[str]) -> None:
    """The class mix of every client, as a table."""
    table = Table(title=f"class mix per client ({federation['partition']})")
    table.add_column("client")
    table.add_column("examples", justify="right")
    for label in labels:
        table.add_column(str(label), justify="right")
    for name, mix in federation["class_mix"].items():
        table.add_row(name, str(sum(mix.values())), *(str(mix[str(lab)]) for lab in labels))
    console.print(table)


def _report_info(server: FineTuneRecipe, federation: dict[str, Any], best_round: int) -> dict[str, Any]:
    info = {k: v for k, v in server.report_info().items() if k != "best epoch"}
    info["federation"] = (
        f"{federation['strategy']} ({federation['framework']}) · {federation['clients']} clients · "
        f"{federation['rounds']} rounds × {federation['local_epochs']} local epoch(s) · partition "
        f"{federation['partition']} · {federation['fraction_fit']:.0%} of clients per round · the curves' "
        "'epoch' is the round"
    )
    info["best round"] = best_round
    for client in federation["per_client"]:
        mix = " · ".join(f"{label} {n}" for label, n in client["class_mix"].items())
        info[f"{client['name']} ({client['examples']} examples)"] = mix
    return info


def write_federated_run(
    recipe: Recipe,
    spec: FederationSpec,
    data: Any,
    clients: list[Any],
    federation: dict[str, Any],
    console: Console,
    t0: float,
    simulate: Callable[..., Any],
    on_round: Callable[..., None] | None,
) -> Path:
    """Create the run, let ``simulate`` run the rounds against the pooled model, finalize and rename into place."""
    from modelyard.training.run import print_data_report, write_run_inputs

    kind = get_kind(recipe.model.type)
    print_data_report(console, data.report)
    if kind.prepare is not None:
        kind.prepare(recipe.model, recipe, list(data.labels))
    run_id, run_dir = start_run(recipe.resolve(recipe.output_dir), resumable=False)
    try:
        with storage_errors("the run's recipe and splits", run_dir, "output_dir"):
            write_run_inputs(run_dir, recipe, data)
        console.print(f"federated run [bold]{run_id}[/] → {run_dir}")
        server = FineTuneRecipe(recipe, run_dir, data, console)
        server.setup()
        server.ema = None  # the server holds the aggregated weights; nothing is averaged over time here
        started = time.perf_counter()
        rounds = simulate(server, recipe, spec, clients, run_dir / WORKDIR, console, on_round)
        assert rounds.best is not None
        _, best_round, best_arrays = rounds.best
        load_arrays(server.model, rounds.names, best_arrays)
        st = server.state
        st.history, st.best_epoch, st.epoch, st.global_step = rounds.history, best_round, spec.rounds, rounds.steps
        st.train_seconds = time.perf_counter() - started
        metrics = server.finalize()
        summary = {**{k: v for k, v in federation.items() if k != "per_client"}, "best_round": best_round}
        summary["per_round"] = rounds.history
        write_json(run_dir / FEDERATION, {**summary, "per_client": federation["per_client"], "fits": rounds.clients})
        rd = RunDir(run_dir)
        write_json(rd.metrics_path, {**read_json(rd.metrics_path), "federation": summary})
        manifest = run_manifest(
            recipe,
            run_id,
            t0,
            seed={"train": recipe.train.seed, "data": recipe.data.seed},
            train_seconds=st.train_seconds,
            device=server.device,
            precision=str(server.dtype or "fp32"),
            data_fingerprints=data.fingerprints,
            data_sizes={k: len(v.labels) for k, v in server.splits.items()},
            model={"type": recipe.model.type, "backbone": kind.name_of(recipe.model), "parameters": server.n_params},
            epochs_completed=spec.rounds,
            best_epoch=best_round,
            total_steps=rounds.steps,
            federation={k: v for k, v in summary.items() if k != "per_round"},
        )
        write_json(rd.manifest_path, manifest)
        write_report(
            rd.report_path,
            title=f"{recipe.name} · {run_id} · federated",
            metrics=metrics,
            labels=server.labels,
            history=rounds.history,
            steps=[],
            predictions=rd.predictions(),
            info=_report_info(server, federation, best_round) | {"train time (s)": manifest["train_time_s"]},
        )
        if kind.modality == "image":
            add_mistake_grid(rd.report_path, server.splits["test"], server.labels, rd.predictions_path)
        for client_dir in (run_dir / WORKDIR).glob("client-*"):
            shutil.rmtree(client_dir / "checkpoints", ignore_errors=True)
        final = finish_run(run_dir)
    except BaseException:
        discard_run(run_dir)
        raise
    print_metrics(console, metrics)
    console.print(f"best round {best_round} · report: {RunDir(final).report_path}")
    return final
