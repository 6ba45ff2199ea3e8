"""``modelyard federate RECIPE``: simulate federated training (FedAvg with Flower) and write a normal run directory.

The training data is split across simulated clients (``--partition iid | dirichlet:ALPHA | by-column:COL``) or
taken from one file per client (``--client-data a.csv b.csv``); each client trains locally with the shared loop
for ``--local-epochs`` per round, and the server averages the clients' models weighted by their example counts
(:mod:`modelyard.training.federated`). The run loads, evaluates, predicts, serves and registers like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard._internal.cli_errors import err_console, friendly_errors
from modelyard.errors import ConfigError


def split_overrides(overrides: list[str], client_files: list[str]) -> tuple[list[str], list[Path]]:
    """``KEY=VALUE`` overrides, and the client files: ``--client-data`` values (comma-separated too) plus the
    arguments after them that are not overrides (so ``--client-data a.csv b.csv`` works as written).

    Raises:
        ConfigError: A bare argument without ``--client-data``.
    """
    files = [f for item in client_files for f in item.split(",") if f]
    plain = [o for o in overrides if "=" in o]
    extra = [o for o in overrides if "=" not in o]
    if extra and not files:
        raise ConfigError(f"{extra[0]!r} is not an override (KEY=VALUE); client files go after --client-data")
    return plain, [Path(f) for f in [*files, *extra]]


@friendly_errors
def federate_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (a kind that trains with gradients).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.learning_rate=1e-3.")
    ] = None,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Simulated clients (partitions).")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="FedAvg rounds.")] = 3,
    partition: Annotated[
        str,
        typer.Option(
            "--partition",
            help="iid, dirichlet:ALPHA (label skew; small ALPHA such as 0.1 is very skewed) or by-column:COL "
            "(one client per value of a column of data.path).",
        ),
    ] = "iid",
    local_epochs: Annotated[int, typer.Option("--local-epochs", min=1, help="Epochs per client per round.")] = 1,
    fraction: Annotated[
        float, typer.Option("--fraction", min=0.01, max=1.0, help="Share of clients sampled per round.")
    ] = 1.0,
    client_data: Annotated[
        list[str] | None,
        typer.Option(
            "--client-data",
            help="One data file per client instead of partitioning data.path (text recipes): "
            "--client-data a.csv b.csv c.csv; each is split by the recipe's data settings.",
        ),
    ] = None,
) -> None:
    """Federated training simulation (Flower FedAvg); prints the run directory on the last stdout line."""
    from modelyard.config import load_recipe
    from modelyard.training.federated import FederationSpec, federate

    plain, files = split_overrides(list(overrides or []), list(client_data or []))
    for f in files:
        if not f.is_file():
            raise ConfigError(f"--client-data {f}: no such file")
    cfg = load_recipe(recipe, plain)
    spec = FederationSpec(
        clients=len(files) if files else clients,
        rounds=rounds,
        local_epochs=local_epochs,
        partition=partition,
        fraction_fit=fraction,
    )
    run_dir = federate(cfg, spec, client_files=files, console=err_console)
    print(run_dir)
