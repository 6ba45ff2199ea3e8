"""``model.type: prompt`` through the product: train → run directory → load → serve, prompt try, label, distil."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.config import load_recipe
from modelyard.errors import ConfigError
from modelyard.models.loading import load
from modelyard.training.run import train
from tests.test_llm import tiny_llama  # noqa: F401 - the shared module-scoped fixture
from tests.test_training import EXPECTED_RUN_FILES

LABELS = ["neg", "pos"]
VERBALIZERS = {"neg": ["negative", "bad"], "pos": ["positive", "good"]}
# A fine-tuned run's files minus the weights/tokenizer (the LM is referenced, not copied) and the step log.
EXPECTED_PROMPT_RUN_FILES = EXPECTED_RUN_FILES - {
    "progress.jsonl",
    "model/config.json",
    "model/model.safetensors",
    "model/tokenizer.json",
    "model/tokenizer_config.json",
}


def _data(path: Path, n: int = 40) -> Path:
    rows = []
    for i in range(n):
        good = i % 2 == 0
        word = ("great", "superb")[i % 4 // 2] if good else ("awful", "dull")[i % 4 // 2]
        rows.append({"text": f"the {'film' if i % 3 else 'story'} was {word} {i % 9 + 1}", "label": LABELS[good]})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _recipe(tmp_path: Path, lm: Path, **prompt: object) -> Path:
    raw = {
        "name": "prompt-tiny",
        "data": {"path": str(_data(tmp_path / "reviews.csv")), "valid_size": 0.25, "test_size": 0.25, "seed": 1},
        "model": {
            "type": "prompt",
            "backbone": str(lm),
            "max_length": 64,
            "prompt": {"verbalizers": VERBALIZERS, "batch_size": 4, **prompt},
        },
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "prompt.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def test_prompt_run_has_the_run_layout_and_serves_probabilities(tmp_path: Path, tiny_llama: Path) -> None:  # noqa: F811
    run = train(load_recipe(_recipe(tmp_path, tiny_llama)))
    assert _files(run) == EXPECTED_PROMPT_RUN_FILES  # no weights are copied: the LM is referenced
    meta = json.loads((run / "model" / "modelyard.json").read_text())
    assert meta["model_type"] == "prompt" and meta["verbalizers"] == VERBALIZERS and meta["labels"] == LABELS
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        set(metrics) == {"valid", "test"}
        and metrics["test"]["n"] == len(pd.read_parquet(run / "splits" / "test.parquet")) > 0
    )
    preds = pd.read_parquet(run / "predictions.parquet")
    np.testing.assert_allclose(preds[["prob_neg", "prob_pos"]].sum(axis=1), 1.0, atol=1e-9)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["type"] == "prompt" and manifest["scoring_ms_per_example"] > 0

    clf = load(run)  # the same entry point as fine-tuned runs
    assert clf.info()["runtime"] == "prompt"
    out = clf.predict(["the film was great", "the story was dull"])
    for p in out:
        assert p["label"] in LABELS and math.isclose(sum(p["scores"].values()), 1.0, abs_tol=1e-9)
    # the stored probabilities are what load() predicts (same prompt, same LM)
    test = preds[preds["split"] == "test"].reset_index(drop=True)
    np.testing.assert_allclose(clf.predict_proba(test["text"].tolist())[:, 1], test["prob_pos"], atol=1e-6)

    import asyncio

    import httpx

    from modelyard.config import ServeConfig
    from modelyard.serving import create_app

    async def main() -> None:
        app = create_app(lambda: clf, ServeConfig(max_wait_ms=2.0))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                for _ in range(200):
                    if (await c.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                r = await c.post("/v1/predict", json={"texts": ["the film was superb", "dull"]})
                assert r.status_code == 200, r.text
                body = r.json()
                direct = clf.predict(["the film was superb", "dull"])
                assert [p["label"] for p in body["predictions"]] == [p["label"] for p in direct]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_few_shot_run_keeps_its_shot_pool(tmp_path: Path, tiny_llama: Path) -> None:  # noqa: F811
    run = train(load_recipe(_recipe(tmp_path, tiny_llama, shots=2, shot_seed=3)))
    pool = pd.read_parquet(run / "model" / "shots.parquet")
    train_split = pd.read_parquet(run / "splits" / "train.parquet")
    assert len(pool) == len(train_split) and set(pool["text"]) == set(train_split["text"])
    rendered = load(run).render_prompts(["the film was great"])[0]
    assert sum(t in rendered for t in pool["text"]) == 2  # exactly k examples in the prompt


def test_prompt_errors_fail_before_a_run_directory_exists(tmp_path: Path, tiny_llama: Path) -> None:  # noqa: F811
    bad = _recipe(tmp_path, tiny_llama, verbalizers={"pos": ["good"], "meh": ["so-so"]})
    with pytest.raises(ConfigError, match=r"missing \['neg'\].*not in the data \['meh'\]"):
        train(load_recipe(bad))
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    with pytest.raises(ConfigError, match="template_file"):
        train(load_recipe(_recipe(tmp_path, tiny_llama, template_file="nope.j2")))


def test_prompt_try_keeps_a_history_of_versions(tmp_path: Path, tiny_llama: Path) -> None:  # noqa: F811
    from rich.console import Console

    from modelyard.training.prompt import prompt_try

    console = Console(record=True, width=200)
    first = prompt_try(load_recipe(_recipe(tmp_path, tiny_llama)), sample=6, console=console)
    template = "Review: {{ text }}\nIs it {{ label_words | join(' or ') }}?\nAnswer:"
    second = prompt_try(load_recipe(_recipe(tmp_path, tiny_llama, template=template)), sample=6, console=console)
    history = (tmp_path / "runs" / "prompts" / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["template_sha256"] for h in history] == [first["template_sha256"], second["template_sha256"]]
    assert first["template_sha256"] != second["template_sha256"] and second["template"] == template
    assert first["n"] == 6 and 0.0 <= first["accuracy"] <= 1.0
    text = console.export_text()
    assert "prompt versions of prompt-tiny" in text and "accuracy" in text
    if first["accuracy"] < 1.0:  # mistakes are shown with their rendered prompt
        assert "Answer:" in text or "rendered prompt" in text


def test_label_writes_confidence_and_splits_on_threshold(tmp_path: Path, tiny_llama: Path) -> None:  # noqa: F811
    from rich.console import Console

    from modelyard.training.prompt import label_file

    recipe = _recipe(tmp_path, tiny_llama)
    unlabelled = tmp_path / "unlabelled.jsonl"
    pd.DataFrame({"text": ["the film was great", "the story was awful", "dull plot", "superb"]}).to_json(
        unlabelled, orient="records", lines=True
    )
    everything = label_file(recipe, unlabelled, tmp_path / "all.jsonl", console=Console(record=True))
    out = pd.read_json(tmp_path / "all.jsonl", lines=True)
    assert everything["accepted"] == 4 and list(out.columns) == [
        "text", "pred", "confidence", "prob_neg", "prob_pos", "label", "accepted"
    ]  # fmt: skip
    assert (out["label"] == out["pred"]).all()  # the shared prediction columns + `label` for training
    np.testing.assert_allclose(out[["prob_neg", "prob_pos"]].sum(axis=1), 1.0, atol=1e-9)
    assert (out["confidence"] == out[["prob_neg", "prob_pos"]].max(axis=1)).all()
    cut = float(out["confidence"].median())
    split = label_file(recipe, unlabelled, tmp_path / "kept.jsonl", console=Console(record=True), threshold=cut)
    kept = pd.read_json(tmp_path / "kept.jsonl", lines=True)
    rejected = pd.read_json(tmp_path / "kept.rejected.jsonl", lines=True) if split["rejected"] else pd.DataFrame()
    assert len(kept) + len(rejected) == 4 and (kept["confidence"] >= cut).all()
    assert split["accepted"] == len(kept) and split["rejected"] == len(rejected)


def test_student_distils_from_a_prompt_teacher(tmp_path: Path, tiny_llama: Path, tiny_backbone: Path) -> None:  # noqa: F811
    from tests.conftest import write_tiny_recipe

    teacher = train(load_recipe(_recipe(tmp_path, tiny_llama)))
    student_dir = tmp_path / "student"
    student_dir.mkdir()
    recipe = load_recipe(
        write_tiny_recipe(
            student_dir,
            tmp_path / "reviews.csv",
            tiny_backbone,
            epochs=1,
            distill={"teacher": str(teacher), "temperature": 1.0, "alpha": 0.0},
        )
    )
    student = train(recipe)
    assert (student / "model" / "model.safetensors").is_file()
    saved = yaml.safe_load((student / "recipe.yaml").read_text())
    assert saved["train"]["distill"]["teacher"] == str(teacher) and saved["train"]["distill"]["alpha"] == 0.0


def test_prompt_model_is_an_ensemble_member_blended_with_a_trained_model(
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
) -> None:
    """Small data's prompt + student recipe: a zero-shot prompt member and a trained member in one ensemble run; the
    blend's probabilities are the weighted average of the members' (each reloaded from model/members/<i>)."""
    raw = yaml.safe_load(_recipe(tmp_path, tiny_llama).read_text())
    prompt_member = raw["model"]
    raw["model"] = {
        "type": "ensemble",
        "members": [prompt_member, {"type": "tfidf-logreg"}],
        "ensemble": {"selection_rounds": 4},
    }
    raw["name"] = "prompt-ensemble"
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    run = train(load_recipe(path))
    meta = json.loads((run / "model" / "modelyard.json").read_text())
    assert [m["type"] for m in meta["members"]] == ["prompt", "tfidf-logreg"]
    weights = [m["weight"] for m in meta["members"]]
    assert math.isclose(sum(weights), 1.0)
    texts = pd.read_parquet(run / "splits" / "test.parquet")["text"].tolist()
    blend = np.asarray(load(run).predict_proba(texts))
    parts = [np.asarray(load(run / "model" / "members" / str(i)).predict_proba(texts)) for i in range(2)]
    np.testing.assert_allclose(blend, weights[0] * parts[0] + weights[1] * parts[1], atol=1e-6)
    assert json.loads((run / "model" / "members" / "0" / "modelyard.json").read_text())["model_type"] == "prompt"
