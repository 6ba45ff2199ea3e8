"""Federated learning simulation: a complete run directory that loads, evaluates, predicts and serves; Dirichlet
partitions that are really non-IID (class mix per client); the aggregate is FedAvg's sample-weighted average."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelyard.cli import app as cli_app
from modelyard.config import ServeConfig, load_recipe
from modelyard.errors import ConfigError, DataError
from modelyard.training.federated import FederationSpec, federate, split_clients
from tests.conftest import synthetic_sentiment, write_tiny_recipe
from tests.production_helpers import run

pytest.importorskip("flwr")
runner = CliRunner()


@pytest.fixture()
def data_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path / "cache"))  # learned tokenizers are cached there
    frame = synthetic_sentiment(240)
    frame["shop"] = [f"shop-{i % 4}" for i in range(len(frame))]
    data = tmp_path / "reviews.csv"
    frame.to_csv(data, index=False)
    return data


def _recipe(tmp_path: Path, data: Path, model: dict) -> Path:
    recipe = {
        "name": "fed",
        "data": {"path": str(data), "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": model,
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-2, "warmup_ratio": 0.0, "seed": 7},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / f"{model['type']}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture()
def textcnn_recipe(tmp_path: Path, data_csv: Path) -> Path:
    """textcnn learns its vocabulary from the training texts: the server's tokenizer is the federation's."""
    tokenizer = {"type": "wordpiece", "vocab_size": 200, "min_frequency": 1}
    arch = {"embedding_dim": 16, "num_filters": 16, "dropout": 0.1}
    return _recipe(tmp_path, data_csv, {"type": "textcnn", "max_length": 32, "tokenizer": tokenizer, "arch": arch})


@pytest.fixture()
def bert_recipe(tmp_path: Path, data_csv: Path, tiny_backbone: Path) -> Path:
    return write_tiny_recipe(tmp_path, data_csv, tiny_backbone, epochs=1, warmup_ratio=0.0)


def test_three_clients_two_rounds_write_a_run_that_loads_predicts_and_serves(textcnn_recipe: Path) -> None:
    import httpx

    from modelyard.models.loading import load
    from modelyard.rundir import RunDir
    from modelyard.serving import create_app

    args = ["--clients", "3", "--rounds", "2", "--local-epochs", "2"]
    r = runner.invoke(cli_app, ["federate", str(textcnn_recipe), *args])
    assert r.exit_code == 0, r.output
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    rd = RunDir(run_dir)
    assert not rd.is_incomplete and rd.model_dir.is_dir()
    for name in ("metrics.json", "manifest.json", "report.html", "history.json", "predictions.parquet", "recipe.yaml"):
        assert (run_dir / name).is_file(), name
    assert not list((run_dir / "federation").glob("client-*/checkpoints"))  # the clients' checkpoints are gone

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["valid"]) >= {"accuracy", "macro_f1"} and metrics["test"]["accuracy"] > 0.5
    fed = metrics["federation"]
    assert fed["clients"] == 3 and fed["rounds"] == 2 and fed["partition"] == "iid"
    assert [e["round"] for e in fed["per_round"]] == [1, 2] and 1 <= fed["best_round"] <= 2
    assert sum(sum(m.values()) for m in fed["class_mix"].values()) == len(rd.splits().train)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["federation"]["class_mix"] == fed["class_mix"] and manifest["federation"]["strategy"] == "FedAvg"
    assert manifest["epochs_completed"] == 2 and manifest["best_epoch"] == fed["best_round"]
    report = (run_dir / "report.html").read_text()
    assert "FedAvg" in report and "client 2" in report and "client 0 train_loss" in report  # per-round curves
    assert "class mix per client" in r.output  # printed

    # loads and predicts like any run, evaluates with the CLI, serves over HTTP
    clf = load(run_dir)
    probs = np.asarray(clf.predict_proba(["a great superb film", "an awful boring film"]))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1)
    ev = runner.invoke(cli_app, ["evaluate", str(run_dir)])
    assert ev.exit_code == 0, ev.output
    pred_in, pred_out = run_dir.parent / "in.csv", run_dir.parent / "out.csv"
    pd.DataFrame({"text": ["lovely film", "terrible plot"]}).to_csv(pred_in, index=False)
    pr = runner.invoke(cli_app, ["predict", str(run_dir), "-i", str(pred_in), "-o", str(pred_out)])
    assert pr.exit_code == 0, pr.output and len(pd.read_csv(pred_out)) == 2

    app = create_app(lambda: load(run_dir), ServeConfig())

    async def serve() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                for _ in range(200):
                    if (await c.get("/readyz")).status_code == 200:
                        break
                    await __import__("asyncio").sleep(0.05)
                return await c.post("/v1/predict", json={"texts": ["a brilliant fun movie"]})

    resp = run(serve())
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["label"] in ("pos", "neg")


def test_an_image_kind_federates_too(tmp_path: Path) -> None:
    from modelyard.config import recipe_from_dict
    from modelyard.models.loading import load
    from modelyard.rundir import RunDir

    recipe = recipe_from_dict(
        {
            "task": "image-classification",
            "data": {"path": "bundled:digits"},
            "model": {"type": "cnn-small"},
            "train": {"epochs": 1, "batch_size": 64, "learning_rate": 3e-3, "seed": 0, "num_threads": 1},
            "output_dir": str(tmp_path / "runs"),
        },
        base_dir=tmp_path,
    )
    run_dir = federate(recipe, FederationSpec(clients=3, rounds=1, partition="dirichlet:1.0"))
    fed = json.loads((run_dir / "federation.json").read_text())
    assert len(fed["class_mix"]) == 3 and set(next(iter(fed["class_mix"].values()))) == {str(i) for i in range(10)}
    clf = load(run_dir)
    image = RunDir(run_dir).splits().test.images[0]  # (C, H, W) uint8
    probs = np.asarray(clf.predict_proba([image[0]]))
    assert probs.shape == (1, 10) and np.isclose(probs.sum(), 1)


def test_dirichlet_with_small_alpha_is_really_non_iid() -> None:
    y = ["a"] * 200 + ["b"] * 200 + ["c"] * 200
    labels = ["a", "b", "c"]

    def shares(spec: str) -> np.ndarray:
        parts, _ = split_clients(y, 5, spec, seed=0)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))  # every row once
        mix = np.array([[sum(y[i] == lab for i in p) for lab in labels] for p in parts], dtype=float)
        return mix / mix.sum(axis=1, keepdims=True)

    skewed, iid = shares("dirichlet:0.1"), shares("iid")
    assert np.abs(iid - 1 / 3).max() < 0.15  # iid: every client close to the global mix
    assert skewed.max(axis=1).mean() > 0.8  # dirichlet:0.1: most of each client's rows are one class
    assert np.abs(skewed - 1 / 3).max() > 0.5
    assert len({tuple(np.round(row, 2)) for row in skewed}) == 5  # no two clients with the same mix
    assert np.array_equal(shares("dirichlet:0.1"), skewed)  # seeded
    assert shares("dirichlet:1000").max() < 0.5  # a huge alpha is close to iid
    with pytest.raises(ConfigError, match="ALPHA must be a positive number"):
        split_clients(y, 3, "dirichlet:-1", seed=0)
    with pytest.raises(DataError, match="fewer than 2 examples"):
        split_clients(["a"] * 5 + ["b"] * 5, 5, "dirichlet:0.01", seed=0)


def test_one_round_aggregate_is_the_sample_weighted_average_of_the_client_models(bert_recipe: Path) -> None:
    from safetensors.numpy import load_file

    seen: dict[str, object] = {}

    def on_round(rnd: int, updates: dict, aggregated: list) -> None:
        seen.update(round=rnd, updates=updates, aggregated=aggregated)

    recipe = load_recipe(bert_recipe)
    run_dir = federate(recipe, FederationSpec(clients=3, rounds=1, partition="dirichlet:0.3"), on_round=on_round)

    updates: dict = seen["updates"]  # type: ignore[assignment]
    sizes = [updates[c][0] for c in sorted(updates)]  # examples per client, in client order
    assert len(updates) == 3 and len(set(sizes)) > 1  # unequal shards: the weights matter
    total = sum(sizes)
    expected = [
        sum(n / total * arrays[i].astype(np.float64) for n, arrays in updates.values())
        for i in range(len(seen["aggregated"]))  # type: ignore[arg-type]
    ]
    for got, want in zip(seen["aggregated"], expected, strict=True):  # type: ignore[call-overload]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = [np.mean([arrays[i] for _, arrays in updates.values()], axis=0) for i in range(len(expected))]
    assert max(np.abs(p - w).max() for p, w in zip(plain, expected, strict=True)) > 1e-6  # not the plain mean

    # the saved model is that aggregate (one round: the best round), in the model's own parameter names
    saved = {k: v for f in (run_dir / "model").glob("*.safetensors") for k, v in load_file(str(f)).items()}
    fed = json.loads((run_dir / "federation.json").read_text())
    assert fed["partition"] == "dirichlet:0.3" and [c["examples"] for c in fed["per_client"]] == sizes
    mixes = list(fed["class_mix"].values())
    assert mixes[0] != mixes[1] or mixes[1] != mixes[2]  # the reported class mix differs between clients
    biggest = max(range(len(expected)), key=lambda i: expected[i].size)
    assert any(
        v.shape == expected[biggest].shape and np.allclose(v, expected[biggest], atol=1e-6) for v in saved.values()
    )


def test_by_column_and_one_file_per_client(textcnn_recipe: Path, tmp_path: Path) -> None:
    r = runner.invoke(
        cli_app,
        ["federate", str(textcnn_recipe), "--rounds", "1", "--partition", "by-column:shop", "train.batch_size=32"],
    )
    assert r.exit_code == 0, r.output
    fed = json.loads((Path(r.stdout.strip().splitlines()[-1]) / "federation.json").read_text())
    assert sorted(fed["class_mix"]) == [f"shop=shop-{i}" for i in range(4)]

    frame = synthetic_sentiment(240, seed=5).sample(frac=1.0, random_state=0)
    files = []
    for i in range(2):
        files.append(tmp_path / f"client{i}.csv")
        frame.iloc[i * 120 : (i + 1) * 120].to_csv(files[-1], index=False)
    r = runner.invoke(cli_app, ["federate", str(textcnn_recipe), "--rounds", "1", "--client-data", *map(str, files)])
    assert r.exit_code == 0, r.output
    fed = json.loads((Path(r.stdout.strip().splitlines()[-1]) / "federation.json").read_text())
    assert fed["partition"] == "client files" and sorted(fed["class_mix"]) == ["client0", "client1"]


def test_refusals_are_one_line(textcnn_recipe: Path, data_csv: Path, tmp_path: Path) -> None:
    r = runner.invoke(cli_app, ["federate", str(textcnn_recipe), "--partition", "shards"])
    assert r.exit_code == 2 and "use iid, dirichlet:ALPHA" in r.output
    r = runner.invoke(cli_app, ["federate", str(textcnn_recipe), "--partition", "by-column:nope"])
    assert r.exit_code == 2 and "no column 'nope'" in r.output
    r = runner.invoke(cli_app, ["federate", str(textcnn_recipe), "--clients", "500"])
    assert r.exit_code == 2 and "use 1 to 144 clients" in r.output
    r = runner.invoke(cli_app, ["federate", str(textcnn_recipe), "stray.csv"])
    assert r.exit_code == 2 and "client files go after --client-data" in r.output
    tfidf = _recipe(tmp_path, data_csv, {"type": "tfidf-logreg"})
    r = runner.invoke(cli_app, ["federate", str(tfidf)])
    assert r.exit_code == 2 and "one-shot fit" in r.output, r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing left behind
