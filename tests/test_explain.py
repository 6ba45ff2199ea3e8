"""Explanations: faithfulness on a model whose decision is known, units, rollout, HTML, files, HTTP.

The model under test is a tiny BERT with *hand-set* weights (no training, so it is exact and fast):
queries and keys are zero, so every token attends uniformly and [CLS] receives the mean of all token
embeddings; only the embeddings of the sentiment keywords (conftest's POS / NEG) have a component on
the axis the pooler and classifier read, +4 for POS and -4 for NEG. Every other token contributes
nothing to that axis, so the label is decided by the one keyword and a text without one scores
exactly 0.5 / 0.5. A faithful method must therefore rank the keyword first in every text.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.explain import METHODS, ExplainUnsupportedError, Explanation, explain, explain_run, render_html
from modelyard.explain.units import map_tokens, split_units
from modelyard.models.loading import load
from modelyard.models.text_classifier import Classifier
from tests.conftest import FILLER, NEG, POS
from tests.test_serving import FakeClassifier, assert_error, make_cfg, run, running

LABELS = ["neg", "pos"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    # The suite shares a few cores; tiny models run much faster single-threaded than oversubscribed.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_keyword_model(backbone: Path, model_dir: Path) -> Path:
    """Save a modelyard model directory whose label is decided by one keyword (see module docstring)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(backbone)
    hidden = 32
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={lab: i for i, lab in enumerate(LABELS)},
    )
    model = BertForSequenceClassification(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        words = torch.randn(len(tok), hidden, generator=gen)
        words[:, :2] = 0
        words -= words.mean(dim=1, keepdim=True)  # zero-mean rows, so LayerNorm leaves axis 0/1 at exactly 0
        for word, sign in [(w, 1.0) for w in POS] + [(w, -1.0) for w in NEG]:
            assert tok.tokenize(word) == [word], word  # one token per keyword
            i = tok.convert_tokens_to_ids(word)
            words[i, 0], words[i, 1] = 4 * sign, -4 * sign
        emb, layer = model.bert.embeddings, model.bert.encoder.layer[0]
        emb.word_embeddings.weight.copy_(words)
        for ln in (emb.LayerNorm, layer.attention.output.LayerNorm, layer.output.LayerNorm):
            ln.weight.fill_(1.0)
        layer.attention.self.value.weight.copy_(torch.eye(hidden))
        layer.attention.output.dense.weight.copy_(torch.eye(hidden))
        model.bert.pooler.dense.weight[0, 0], model.bert.pooler.dense.weight[0, 1] = 1.0, -1.0
        model.classifier.weight[0, 0], model.classifier.weight[1, 0] = -4.0, 4.0
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    meta = {"format": 1, "name": "keyword", "labels": LABELS, "max_length": 32, "backbone": str(backbone)}
    (model_dir / "modelyard.json").write_text(json.dumps({**meta, "cleaning": {}}), encoding="utf-8")
    return model_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    """A run-like directory: ``<run>/model/`` holds the keyword model."""
    run = tmp_path_factory.mktemp("explain") / "run"
    (run / "model").mkdir(parents=True)
    build_keyword_model(tiny_backbone, run / "model")
    return run


@pytest.fixture(scope="module")
def clf(run_dir: Path) -> Classifier:
    return load(run_dir, device="cpu")


def keyword_texts(n: int = 20, seed: int = 11) -> list[tuple[str, str, str]]:
    """``(text, keyword, label)``: fillers plus one keyword at a random place."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 2]
        words = rng.sample(FILLER, rng.randint(3, 7))
        keyword = rng.choice(POS if label == "pos" else NEG)
        words.insert(rng.randint(0, len(words)), keyword)
        out.append((" ".join(words), keyword, label))
    return out


# ---------------------------------------------------------------- faithfulness


@pytest.mark.parametrize("method", ["ig", "occlusion"])
def test_the_deciding_keyword_ranks_first_in_every_text(clf: Classifier, method: str) -> None:
    cases = keyword_texts()
    exs = explain(clf, [t for t, _, _ in cases], method=method)
    for ex, (text, keyword, label) in zip(exs, cases, strict=True):
        assert ex.text == text and ex.method == method
        assert ex.label == label == ex.target, (text, ex.scores)
        assert len(ex.units) == len(ex.attributions) == len(text.split())
        assert ex.ranked()[0][0] == keyword, (text, ex.ranked()[:3])
        # ... and by a wide margin in absolute value too.
        strongest_other = max(abs(a) for u, a in zip(ex.units, ex.attributions, strict=True) if u != keyword)
        assert ex.attributions[ex.units.index(keyword)] > 10 * strongest_other, ex.ranked()
        p = ex.scores[label]
        if method == "ig":
            # Completeness: attributions sum to p(x) - p(baseline); the all-[PAD] baseline has no keyword: 0.5.
            assert ex.convergence_delta is not None and ex.convergence_delta < 1e-3
            assert sum(ex.attributions) == pytest.approx(p - 0.5, abs=1e-3)
        else:
            # Masking the keyword leaves no evidence: p drops to exactly 0.5.
            assert ex.attributions[ex.units.index(keyword)] == pytest.approx(p - 0.5, abs=1e-5)
            assert ex.convergence_delta is None


@pytest.mark.parametrize("method", ["ig", "occlusion"])
def test_explaining_the_other_label_flips_the_sign(clf: Classifier, method: str) -> None:
    [ex] = explain(clf, ["the film was great"], method=method, target="neg")
    assert ex.label == "pos" and ex.target == "neg"
    assert ex.attributions[ex.units.index("great")] < 0
    assert min(ex.attributions) == ex.attributions[ex.units.index("great")]


def test_attention_rollout_is_nonnegative_and_sums_to_one(clf: Classifier) -> None:
    impl = clf.model.config._attn_implementation
    exs = explain(clf, ["the film was great", "这个电影很好 great film", "a"], method="attention")
    for ex in exs:
        assert len(ex.attributions) == len(ex.units) > 0
        assert all(a >= 0 for a in ex.attributions)
        assert sum(ex.attributions) == pytest.approx(1.0, abs=1e-9)
        # This model attends uniformly, so rollout spreads [CLS]'s attention evenly over the units.
        assert np.allclose(ex.attributions, 1 / len(ex.units))
    # A model switched to eager attention for the weights is switched back (serving keeps SDPA).
    assert clf.model.config._attn_implementation == impl


def test_attention_falls_back_to_an_eager_reload(clf: Classifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose attention implementation can't be switched in place is reloaded with eager attention."""
    import contextlib

    import modelyard.explain.core as core

    monkeypatch.setattr(core, "_eager_attention", lambda model: contextlib.nullcontext())
    monkeypatch.setattr(core, "_EAGER_COPIES", core.weakref.WeakKeyDictionary())
    if clf.model.config._attn_implementation == "eager":
        pytest.skip("this transformers version loads eager attention by default")
    [ex] = explain(clf, ["the film was great"], method="attention")
    assert sum(ex.attributions) == pytest.approx(1.0) and len(ex.attributions) == 4
    assert clf.model in core._EAGER_COPIES  # reloaded once, then cached
    assert core._EAGER_COPIES[clf.model].config._attn_implementation == "eager"


# ---------------------------------------------------------------- units


def test_wordpiece_pieces_are_merged_into_words(clf: Classifier) -> None:
    assert len(clf.tokenizer.tokenize("unfunny")) > 1  # the tiny vocabulary splits it into pieces
    [ex] = explain(clf, ["an unfunny, great film"], method="occlusion")
    assert ex.units == ["an", "unfunny", ",", "great", "film"]
    assert ex.units[ex.attributions.index(max(ex.attributions))] == "great"
    for unit, (s, e) in zip(ex.units, ex.spans, strict=True):
        assert ex.normalized_text[s:e] == unit


def test_mixed_chinese_english_text_gives_one_unit_per_character_and_word(clf: Classifier) -> None:
    for method in METHODS:
        [ex] = explain(clf, ["这个电影很好 great film"], method=method)
        assert ex.units == ["这", "个", "电", "影", "很", "好", "great", "film"], method
        assert not any(u.startswith("[") for u in ex.units)  # no [CLS] / [SEP] / [UNK]
        assert len(ex.attributions) == len(ex.units)


def test_map_tokens_sums_pieces_and_drops_special_tokens() -> None:
    text = "a  unfunny 好!"
    assert [text[s:e] for s, e in split_units(text)] == ["a", "unfunny", "好", "!"]
    # Combining marks stay inside their word; kana and ideographs are one unit each.
    assert [t[s:e] for t in ["नमस्ते दुनिया"] for s, e in split_units(t)] == ["नमस्ते", "दुनिया"]
    assert [t[s:e] for t in ["e\u0301te\u0301 ok"] for s, e in split_units(t)] == ["e\u0301te\u0301", "ok"]
    assert [t[s:e] for t in ["こんにちは世界"] for s, e in split_units(t)] == list("こんにちは世界")
    offsets = [(0, 0), (0, 1), (3, 4), (4, 6), (6, 10), (11, 12), (12, 13), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 0, 1]
    m = map_tokens(text, offsets, special)
    assert m.token_unit == [-1, 0, 1, 1, 1, 2, 3, -1]
    assert not m.truncated
    # Byte-level BPE offsets that include the leading space still land on the word.
    assert map_tokens("a film", [(0, 1), (1, 6)], [0, 0]).token_unit == [0, 1]
    # Cut off after "a": the later units are absent and the map says so.
    cut = map_tokens(text, offsets[:3] + [(0, 0)], [1, 0, 0, 1])
    assert cut.truncated and len(cut.spans) == 2


def test_long_texts_are_truncated_and_flagged(clf: Classifier) -> None:
    text = " ".join(["the film"] * 40) + " great"
    [ex] = explain(clf, [text], method="occlusion")
    assert ex.truncated
    assert 0 < len(ex.units) < 80 and "great" not in ex.units
    json.dumps(ex.to_dict(), allow_nan=False)
    [short] = explain(clf, ["great"], method="occlusion")
    assert not short.truncated


def test_the_classifiers_own_normalisation_is_applied(clf: Classifier) -> None:
    # NFKC turns the full-width word into "great" and the whitespace is collapsed, as in predict().
    [ex] = explain(clf, ["  the   ｇｒｅａｔ\u3000film "], method="occlusion")
    assert ex.normalized_text == "the great film"
    assert ex.units == ["the", "great", "film"]
    assert ex.label == clf.predict(["  the   ｇｒｅａｔ\u3000film "])[0]["label"] == "pos"


def test_bad_arguments_are_refused(clf: Classifier) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        explain(clf, ["x"], method="shap")
    with pytest.raises(ValueError, match="unknown target"):
        explain(clf, ["x"], target="maybe")
    with pytest.raises(TypeError):
        explain(clf, "a single string")  # type: ignore[arg-type]
    with pytest.raises(ExplainUnsupportedError):
        explain(FakeClassifier(), ["x"])
    assert explain(clf, [], method="ig") == []


# ---------------------------------------------------------------- HTML and files


def test_html_escapes_user_text_and_is_self_contained(clf: Classifier) -> None:
    texts = ["<script>alert('x')</script> great", "这个电影很好 bad film"]
    exs = explain(clf, texts, method="ig") + explain(clf, texts[:1], method="attention")
    page = render_html(exs, title="<b>title</b>")
    assert "<script" not in page.lower()
    assert '>&lt;</span><span class="u"' in page and 'title="&lt;: ' in page  # "<" is a unit of its own
    hand = Explanation("x", "pos", "pos", {"pos": 1.0}, "ig", ["<script>alert(1)</script>", '"q"'], [1.0, -0.5])
    hand_page = render_html([hand])
    assert "<script" not in hand_page and "&lt;script&gt;alert(1)&lt;/script&gt;" in hand_page
    assert 'title="&#34;q&#34;: -0.5000"' in hand_page
    assert "<b>title" not in page and "&lt;b&gt;title" in page
    assert page.count('<span class="u"') == sum(len(ex.units) for ex in exs)
    for forbidden in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert forbidden not in page.lower(), forbidden
    assert "pos" in page and "neg" in page  # the header names the labels and scores
    assert 'title="great: +' in page  # tooltip with the signed value


def test_explain_run_writes_html_and_json_into_the_run(run_dir: Path, clf: Classifier) -> None:
    report = run_dir / "report.html"
    if not report.is_file():
        report.write_text("<html><body><h1>run</h1><!-- modelyard:stage-sections --></body></html>", encoding="utf-8")
    html_path, exs = explain_run(run_dir, ["a great film", "dull <plot>"], "occlusion", None, classifier=clf)
    assert html_path.parent == run_dir / "explanations" and html_path.name.endswith("-occlusion.html")
    data = json.loads(html_path.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["method"] == "occlusion" and data["model"]["name"] == "keyword"
    assert [d["units"] for d in data["explanations"]] == [ex.units for ex in exs]
    page = html_path.read_text(encoding="utf-8")
    assert "<plot" not in page and ">&lt;</span>" in page
    # A second run in the same second gets its own files; nothing temporary is left behind.
    again, _ = explain_run(run_dir, ["a great film"], "occlusion", None, classifier=clf)
    assert again != html_path
    assert not [p for p in (run_dir / "explanations").iterdir() if p.name.startswith(".")]
    out, _ = explain_run(run_dir, ["good"], "attention", run_dir / "custom" / "x.html", classifier=clf)
    assert out.is_file() and out.with_suffix(".json").is_file()
    # the run's report carries the latest explanations as one section
    html = report.read_text(encoding="utf-8")
    assert html.count('<section id="stage-explanations">') == 1 and 'href="custom/x.html"' in html


def test_to_dict_is_json_and_roundtrips() -> None:
    ex = Explanation("t", "pos", "pos", {"pos": 1.0}, "ig", ["t"], [0.5], "t", [(0, 1)], False, float("nan"))
    d = json.loads(json.dumps(ex.to_dict(), allow_nan=False))
    assert d["convergence_delta"] is None and d["spans"] == [[0, 1]] and d["units"] == ["t"]


# ---------------------------------------------------------------- HTTP


def test_http_explain_with_a_real_model(run_dir: Path) -> None:
    from modelyard.serving import create_app

    app = create_app(lambda: load(run_dir, device="cpu"), make_cfg(max_chars_per_text=200))

    async def main() -> None:
        async with running(app) as c:
            r = await c.post("/v1/explain", json={"text": "the film was great"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"explanation", "model"} and body["model"]["name"] == "keyword"
            ex = body["explanation"]
            assert ex["method"] == "ig" and ex["label"] == "pos" and ex["target"] == "pos"
            assert ex["units"] == ["the", "film", "was", "great"] and len(ex["attributions"]) == 4
            assert max(zip(ex["attributions"], ex["units"], strict=True))[1] == "great"
            assert set(ex["scores"]) == set(LABELS) and ex["convergence_delta"] is not None

            r = await c.post("/v1/explain", json={"text": "这个 bad", "method": "attention", "target": "neg"})
            assert r.status_code == 200, r.text
            assert sum(r.json()["explanation"]["attributions"]) == pytest.approx(1.0)

            err = assert_error(
                await c.post("/v1/explain", json={"text": "x", "method": "shap"}), 422, "invalid_request"
            )
            assert "method" in err["message"]
            err = assert_error(
                await c.post("/v1/explain", json={"text": "x", "target": "maybe"}), 422, "invalid_request"
            )
            assert "maybe" in err["message"] and err["details"][0]["loc"] == ["body", "target"]
            assert_error(await c.post("/v1/explain", json={"texts": ["x"]}), 422, "invalid_request")
            err = assert_error(await c.post("/v1/explain", json={"text": "y" * 201}), 413, "text_too_long")
            assert err["limit"] == 200
            r = await c.post("/v1/explain", content=b'{"text": "x"}', headers={"content-type": "text/plain"})
            assert_error(r, 415, "unsupported_media_type")
            # Prediction still works next to explanations.
            r = await c.post("/v1/predict", json={"texts": ["great", "bad"]})
            assert [p["label"] for p in r.json()["predictions"]] == ["pos", "neg"]

            spec = (await c.get("/openapi.json")).json()
            post = spec["paths"]["/v1/explain"]["post"]
            assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ExplainRequest")
            assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ExplainResponse"
            )
            assert {"413", "422", "501", "503"} <= set(post["responses"])

    run(main(), timeout=60)


def test_http_explain_is_501_for_a_model_without_internals() -> None:
    from modelyard.serving import create_app

    async def main() -> None:
        async with running(create_app(FakeClassifier, make_cfg())) as c:
            assert_error(await c.post("/v1/explain", json={"text": "good"}), 501, "explain_unsupported")
            r = await c.post("/v1/predict", json={"texts": ["good"]})
            assert r.status_code == 200

    run(main())


def test_http_explain_is_503_until_the_model_is_ready() -> None:
    from modelyard.serving import create_app

    gate = threading.Event()

    def slow_load() -> FakeClassifier:
        assert gate.wait(10)
        return FakeClassifier()

    async def main() -> None:
        async with running(create_app(slow_load, make_cfg()), ready=False) as c:
            r = await c.post("/v1/explain", json={"text": "good"})
            assert_error(r, 503, "model_not_ready")
            assert r.headers["retry-after"] == "1"
            gate.set()

    run(main())


def test_http_explanations_hold_the_model_lock_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explanations run in their own thread while holding the lock the batcher's model calls take."""
    import modelyard.explain
    from modelyard.serving import create_app

    class Explainable(FakeClassifier):
        model = object()
        tokenizer = object()

    seen: dict[str, Any] = {}
    app = create_app(Explainable, make_cfg())

    def fake_explain(classifier: Any, texts: list[str], **kw: Any) -> list[Explanation]:
        seen["locked"] = app.state.runtime.model_lock.locked()
        seen["thread"] = threading.current_thread().name
        seen["kw"] = kw
        return [Explanation(texts[0], "pos", "pos", {"neg": 0.2, "pos": 0.8}, kw["method"], ["good"], [1.0])]

    monkeypatch.setattr(modelyard.explain, "explain", fake_explain)

    async def main() -> None:
        async with running(app) as c:
            r = await c.post("/v1/explain", json={"text": "good", "method": "occlusion"})
            assert r.status_code == 200, r.text
            assert r.json()["explanation"]["units"] == ["good"]

    run(main())
    assert seen["locked"] is True
    assert seen["thread"].startswith("modelyard-explain") and seen["thread"] != threading.main_thread().name
    assert seen["kw"]["method"] == "occlusion"


def test_http_too_many_pending_explanations_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import modelyard.explain
    from modelyard.serving import create_app
    from modelyard.serving.app import MAX_PENDING_EXPLANATIONS

    class Explainable(FakeClassifier):
        model = object()
        tokenizer = object()

    gate = threading.Event()

    def slow_explain(classifier: Any, texts: list[str], **kw: Any) -> list[Explanation]:
        assert gate.wait(10)
        return [Explanation(texts[0], "pos", "pos", {"neg": 0.2, "pos": 0.8}, kw["method"], ["good"], [1.0])]

    monkeypatch.setattr(modelyard.explain, "explain", slow_explain)

    async def main() -> None:
        async with running(create_app(Explainable, make_cfg())) as c:
            busy = [
                asyncio.create_task(c.post("/v1/explain", json={"text": "good"}))
                for _ in range(MAX_PENDING_EXPLANATIONS)
            ]
            await asyncio.sleep(0.2)
            r = await c.post("/v1/explain", json={"text": "good"})
            assert_error(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1"
            gate.set()
            assert [r.status_code for r in await asyncio.gather(*busy)] == [200] * MAX_PENDING_EXPLANATIONS

    run(main())
