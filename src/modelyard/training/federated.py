"""Federated learning simulation (``modelyard federate``): FedAvg over simulated clients, each training locally
with the shared loop, written out as a normal run directory.

    federate(recipe, FederationSpec(clients=5, rounds=10, partition="dirichlet:0.5"))
      ├─ data: the recipe's training split partitioned across clients (iid | dirichlet:ALPHA | by-column:COL),
      │  or one file per client (each split by the recipe's data settings; valid/test = their union)
      ├─ server: a FineTuneRecipe on the pooled splits — builds the model (and, for kinds that learn a
      │  vocabulary, the tokenizer: a simulation shortcut, a real federation would agree on one first),
      │  evaluates the global model on the pooled valid split after every round, finalizes the run
      ├─ Flower: Server.fit(rounds) with the FedAvg strategy (client sampling, the sample-weighted average,
      │  centralised evaluation); each client is a NumPyClient whose fit() runs the shared loop
      │  (setup → train for --local-epochs) from the global weights on its own shard only
      └─ the best round's weights → model/, metrics.json (+ "federation"), report.html (per-round curves, class
         mix per client), manifest.json (+ "federation"), federation.json, then the atomic rename

Why Flower's in-process API and not its simulation engine (``flwr[simulation]`` on Ray): flwr pins fastapi,
starlette, uvicorn, typer, rich and protobuf to older minors than modelyard's server needs, and its simulation
extra pins ray==2.55.1, so it cannot be installed next to modelyard without downgrading the serving stack;
and on a small machine a Ray actor per client re-imports torch and the model (seconds each) for models that
train in less. So the loop is Flower's own (``flwr.server.Server`` with ``FedAvg``), driving in-process client
proxies sequentially: deterministic for a seed, every client's updates aggregated by Flower's code.

Every kind that trains in the shared loop federates (text and image classifiers); one-shot fits (tf-idf,
prompts, ensembles), generative kinds and multi-label tasks are refused with a message, as is ``train.privacy``
(each client's ε would be spent again every round, and composing it across rounds is not accounted yet).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from modelyard._internal.packages import install_command
from modelyard.config import LOWER_IS_BETTER, Recipe
from modelyard.errors import ConfigError, ModelyardError
from modelyard.evaluation.metrics import HEADLINE
from modelyard.kinds import get_kind
from modelyard.training.federated_run import (
    FederationSpec,
    load_arrays,
    prepare_clients,
    state_arrays,
    write_federated_run,
)
from modelyard.training.loop import FineTuneRecipe
from modelyard.training.partition import class_mix, parse_partition, split_clients

__all__ = ["FederationSpec", "class_mix", "federate", "load_arrays", "parse_partition", "split_clients", "state_arrays"]


class _ClientLoop(FineTuneRecipe):
    """The shared loop on one client's shard, starting from a given model instead of building a new one."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: Any, console: Console, model: Any, tokenizer: Any):
        super().__init__(recipe, run_dir, data, console)
        self.kind = dataclasses.replace(self.kind, build=lambda *_a, **_k: (model, tokenizer))


def _client_class() -> type:
    from flwr.client import NumPyClient

    class LoopClient(NumPyClient):
        """A simulated client: ``fit`` = the shared loop for ``local_epochs`` on its shard from the global weights."""

        def __init__(self, index: int, recipe: Recipe, data: Any, workdir: Path, server: FineTuneRecipe) -> None:
            self.index, self.recipe, self.data, self.workdir, self.server = index, recipe, data, workdir, server
            self.names = state_arrays(server.model)[0]

        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return state_arrays(self.server.model)[1]

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
            rnd = int(config["round"])
            recipe = self.recipe.model_copy(deep=True)
            recipe.train.seed = self.recipe.train.seed + 1000 * rnd + self.index  # fresh shuffles per round/client
            model = copy.deepcopy(self.server.model)
            load_arrays(model, self.names, parameters)
            shutil.rmtree(self.workdir / "checkpoints", ignore_errors=True)  # the previous round's
            loop = _ClientLoop(recipe, self.workdir, self.data, Console(quiet=True), model, self.server.tokenizer)
            loop.setup()
            loop.train()
            last = loop.state.history[-1]
            n = len(loop.splits["train"].labels)
            return (
                state_arrays(loop.eval_model)[1],
                n,
                {"train_loss": float(last["train_loss"]), "steps": loop.state.global_step},
            )

    return LoopClient


def _proxy_class() -> type:
    from flwr.server.client_proxy import ClientProxy

    class InProcessProxy(ClientProxy):
        """A Flower client proxy that calls its client in this process (what a transport would deliver)."""

        def __init__(self, cid: str, client: Any) -> None:
            super().__init__(cid)
            self.client = client.to_client()

        def get_properties(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
            return self.client.get_properties(ins)

        def get_parameters(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
            return self.client.get_parameters(ins)

        def fit(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
            return self.client.fit(ins)

        def evaluate(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
            return self.client.evaluate(ins)

        def reconnect(self, ins: Any, timeout: float | None, group_id: int | None) -> Any:
            from flwr.common import DisconnectRes

            return DisconnectRes(reason="")

    return InProcessProxy


def _server_class(on_fit: Callable[[int, list, Any], None]) -> Any:
    from flwr.server import Server

    class StrictServer(Server):
        """Flower's server, except that a client that fails stops the run (instead of being averaged out)."""

        def fit_round(self, server_round: int, timeout: float | None) -> Any:
            res = super().fit_round(server_round, timeout)
            if res is not None:
                results, failures = res[2]
                if failures:
                    failure = failures[0]
                    raise (
                        failure if isinstance(failure, BaseException) else ModelyardError(f"a client failed: {failure}")
                    )
                on_fit(server_round, results, res[0])
            return res

    return StrictServer


class _Rounds:
    """The server side of each round: records clients' results, evaluates the global model, keeps the best."""

    def __init__(self, server: FineTuneRecipe, names: list[str], console: Console, on_round: Callable | None) -> None:
        self.server, self.names, self.console, self.on_round = server, names, console, on_round
        self.history: list[dict[str, Any]] = []
        self.clients: dict[int, list[dict[str, Any]]] = {}
        self.best: tuple[float, int, list[np.ndarray]] | None = None
        self.steps = 0

    def fit_done(self, rnd: int, results: list, aggregated: Any) -> None:
        from flwr.common import parameters_to_ndarrays

        rows = sorted(
            ({"client": int(p.cid), "examples": r.num_examples, **r.metrics} for p, r in results),
            key=lambda row: row["client"],
        )
        self.clients[rnd] = rows
        self.steps += sum(int(row["steps"]) for row in rows)
        if self.on_round is not None:
            updates = {int(p.cid): (r.num_examples, parameters_to_ndarrays(r.parameters)) for p, r in results}
            self.on_round(rnd, updates, parameters_to_ndarrays(aggregated) if aggregated else None)

    def evaluate(self, rnd: int, arrays: list[np.ndarray], _config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        server = self.server
        load_arrays(server.model, self.names, arrays)
        metrics, _ = server.evaluate_split("valid")
        if rnd == 0:
            return float(metrics["loss"]), {}
        clients = self.clients[rnd]
        total = sum(c["examples"] for c in clients)
        entry: dict[str, Any] = {
            "epoch": rnd,  # the report's x axis: one point per round
            "round": rnd,
            "step": self.steps,
            "train_loss": sum(c["train_loss"] * c["examples"] for c in clients) / total,
            "valid_loss": metrics["loss"],
        }
        entry |= {f"valid_{k}": metrics.get(k) for k in HEADLINE}
        entry |= {f"client {c['client']} train_loss": c["train_loss"] for c in clients}
        self.history.append(entry)
        metric = server.cfg.metric
        value = entry["valid_loss"] if metric == "loss" else entry.get(f"valid_{metric}")
        score = float(entry["valid_loss"]) if value is None else float(value)
        score = -score if (metric in LOWER_IS_BETTER or value is None) else score
        if self.best is None or score > self.best[0]:
            self.best = (score, rnd, [a.copy() for a in arrays])
        self.console.print(
            f"round {rnd}: {len(clients)} clients · train loss {entry['train_loss']:.4f} · valid loss "
            f"{entry['valid_loss']:.4f} · valid accuracy {entry['valid_accuracy']:.4f} · valid macro-F1 "
            f"{entry['valid_macro_f1']:.4f}" + (" · best so far" if self.best[1] == rnd else "")
        )
        return float(metrics["loss"]), {"accuracy": float(metrics["accuracy"])}


def _check(recipe: Recipe, spec: FederationSpec) -> None:
    kind = get_kind(recipe.model.type)
    if not kind.trains_in_loop or kind.can("generative"):
        raise ConfigError(
            f"federate trains with the shared loop; model.type {kind.name} is "
            + ("generative" if kind.can("generative") else "a one-shot fit")
            + "; use a kind that trains with gradients (e.g. textcnn, hf-encoder, cnn-small)"
        )
    if recipe.task == "multi-label-classification":
        raise ConfigError("federate supports single-label classification; this recipe is multi-label")
    if getattr(recipe.train, "privacy", None) is not None:
        raise ConfigError(
            "train.privacy is not supported by federate yet: each client's ε would be spent again every round "
            "and the composition across rounds is not accounted; remove train.privacy"
        )
    if recipe.train.distill is not None:
        raise ConfigError("train.distill is not supported by federate; remove it")
    if spec.rounds < 1 or spec.local_epochs < 1 or not 0 < spec.fraction_fit <= 1:
        raise ConfigError("--rounds and --local-epochs must be ≥ 1, --fraction in (0, 1]")
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ModelyardError(
            f"federate needs Flower: {install_command('flwr')} (or, to keep your fastapi/typer/protobuf versions, "
            'pip install --no-deps "flwr>=1.42,<2" pycryptodome iterators)'
        ) from None


def federate(
    recipe: Recipe,
    spec: FederationSpec,
    *,
    client_files: Sequence[Path] = (),
    console: Console | None = None,
    on_round: Callable[[int, dict[int, tuple[int, list[np.ndarray]]], list[np.ndarray] | None], None] | None = None,
) -> Path:
    """Simulate federated training of ``recipe`` and write a run directory (see the module docstring).

    Args:
        recipe: A recipe whose kind trains in the shared loop.
        spec: Clients, rounds, local epochs, partition, fraction of clients per round.
        client_files: One data file per client instead of partitioning ``data.path`` (text recipes).
        console: Where progress goes (default stderr).
        on_round: Called after each round's aggregation with ``{client: (examples, arrays)}`` and the
            aggregated arrays (tests check FedAvg with it).

    Returns:
        The finished run directory.

    Raises:
        ModelyardError: An unsupported recipe, a bad partition, or Flower missing (before any directory).
    """
    console = console or Console(stderr=True)
    _check(recipe, spec)
    t0 = time.time()
    data, shards, federation = prepare_clients(recipe, spec, client_files, console)
    return write_federated_run(recipe, spec, data, shards, federation, console, t0, _simulate, on_round)


def _simulate(
    server: FineTuneRecipe,
    recipe: Recipe,
    spec: FederationSpec,
    shards: list[Any],
    workdir: Path,
    console: Console,
    on_round: Callable | None,
) -> _Rounds:
    """Run Flower's server loop over in-process clients; returns the per-round record."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.strategy import FedAvg

    names, initial = state_arrays(server.model)
    rounds = _Rounds(server, names, console, on_round)
    local = recipe.model_copy(deep=True)
    local.train.epochs, local.train.patience, local.train.report_to = spec.local_epochs, None, []
    local.train.checkpoint_every_steps = 0  # the loop checkpoints at the end of each epoch only
    client_cls, proxy_cls = _client_class(), _proxy_class()
    manager = SimpleClientManager()
    for i, shard in enumerate(shards):
        (workdir / f"client-{i}").mkdir(parents=True, exist_ok=True)
        manager.register(proxy_cls(str(i), client_cls(i, local, shard, workdir / f"client-{i}", server)))
    n = len(shards)
    sampled = max(1, round(spec.fraction_fit * n))
    strategy = FedAvg(
        fraction_fit=spec.fraction_fit,
        fraction_evaluate=0.0,  # evaluation is centralised, on the pooled valid split
        min_fit_clients=sampled,
        min_available_clients=n,
        evaluate_fn=rounds.evaluate,
        on_fit_config_fn=lambda rnd: {"round": rnd},
        accept_failures=False,
        initial_parameters=ndarrays_to_parameters(initial),
        fit_metrics_aggregation_fn=lambda metrics: {
            "train_loss": sum(k * m["train_loss"] for k, m in metrics) / max(sum(k for k, _ in metrics), 1)
        },
    )
    flower = _server_class(rounds.fit_done)(client_manager=manager, strategy=strategy)
    flower.set_max_workers(1)  # clients train one after another: the loop seeds the process-wide RNGs
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    try:
        flower.fit(num_rounds=spec.rounds, timeout=None)
    finally:
        flwr_log.setLevel(level)
    return rounds
