"""The OpenAI-compatible prompt backend: first-token label scoring, response parsing, retries, errors,
and a real llama.cpp server on the bundled SmolLM2 GGUF when llama-cpp-python is installed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.errors import ModelError
from modelyard.llm.classifier import load_prompt_model, save_prompt_model
from modelyard.llm.openai_backend import OpenAIScorer, label_probs_from_top, parse_top_logprobs

VERBS = {"fresh": ["positive", "good"], "rotten": ["negative"]}
LABELS = ["fresh", "rotten"]


def test_label_probs_pool_matching_tokens_and_normalise() -> None:
    top = {" Positive": math.log(0.5), "pos": math.log(0.1), "good": math.log(0.1), "Neg": math.log(0.2), "The": -1.0}
    p = label_probs_from_top(top, VERBS, LABELS)
    assert p == pytest.approx([0.7 / 0.9, 0.2 / 0.9])
    assert p.sum() == pytest.approx(1.0)


def test_label_probs_ambiguous_token_counts_for_neither_and_missing_label_gets_a_floor() -> None:
    verbs = {"a": ["neutral"], "b": ["negative"], "c": ["positive"]}
    top = {"ne": math.log(0.6), "negative": math.log(0.3), "x": math.log(0.04)}
    p = label_probs_from_top(top, verbs, ["a", "b", "c"])
    # "ne" starts both neutral and negative → ignored; a and c are unlisted → half the smallest listed prob (0.02)
    assert p == pytest.approx(np.array([0.02, 0.3, 0.02]) / 0.34)


def test_parse_chat_and_legacy_responses() -> None:
    chat = {
        "choices": [
            {
                "logprobs": {
                    "content": [
                        {"token": "positive", "logprob": -0.1, "top_logprobs": [{"token": "negative", "logprob": -2.0}]}
                    ]
                }
            }
        ]
    }
    assert parse_top_logprobs(chat, "x") == {"negative": -2.0, "positive": -0.1}
    legacy = {"choices": [{"logprobs": {"top_logprobs": [{" positive": -0.3, " negative": -1.4}]}}]}
    assert parse_top_logprobs(legacy, "x") == {" positive": -0.3, " negative": -1.4}
    with pytest.raises(ModelError, match="no usable top_logprobs"):
        parse_top_logprobs({"choices": [{"message": {"content": "positive"}}]}, "http://h/v1 (chat)")


class _Stub(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: answers from the prompt's last word; scripted failures first."""

    script: list[int] = []
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if type(self).script:
            status = type(self).script.pop(0)
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "scripted"}}')
            return
        prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
        good = "great" in prompt
        top = [{"token": "positive", "logprob": math.log(0.8 if good else 0.1)}]
        top.append({"token": "negative", "logprob": math.log(0.1 if good else 0.8)})
        if "messages" in body:
            out = {"choices": [{"logprobs": {"content": [{**top[0], "top_logprobs": top}]}}]}
        else:
            out = {"choices": [{"logprobs": {"top_logprobs": [{t["token"]: t["logprob"] for t in top}]}}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_url() -> Any:
    _Stub.script, _Stub.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_scorer_requests_retries_and_auth(stub_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test")
    scorer = OpenAIScorer(stub_url, "m", "MY_KEY", 5.0, concurrency=1)
    _Stub.script = [429, 503]  # two transient failures, then success
    probs = scorer.score(["a great film", "a dull film"], VERBS, LABELS, chat=True)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] == pytest.approx(0.8 / 0.9) and probs[1, 1] == pytest.approx(0.8 / 0.9)
    first = _Stub.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["max_tokens"] == 1 and first["body"]["logprobs"] is True
    assert len(_Stub.seen) == 4  # 2 retried + 2 answered
    legacy = scorer.score(["great"], VERBS, LABELS, chat=False)
    assert _Stub.seen[-1]["path"] == "/v1/completions" and legacy[0, 0] > 0.8


def test_scorer_errors_name_the_url_status_and_fix(stub_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    scorer = OpenAIScorer(stub_url, "m", "NOPE_KEY", 5.0, max_retries=0)
    _Stub.script = [401]
    with pytest.raises(ModelError, match=r"chat/completions answered HTTP 401 \(set the API key in \$NOPE_KEY\)"):
        scorer.score(["x"], VERBS, LABELS, chat=True)
    assert _Stub.seen[-1]["auth"] is None  # unset key → no Authorization header
    with sock() as port:
        dead = OpenAIScorer(f"http://127.0.0.1:{port}/v1", "m", None, 2.0)
        with pytest.raises(ModelError, match="cannot reach"):
            dead.score(["x"], VERBS, LABELS, chat=True)
    with pytest.raises(ModelError, match="must start with http"):
        OpenAIScorer("ftp://h", "m")


class sock:
    """A free loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: Any) -> None:
        pass


def _remote_model(tmp_path: Path, url: str, **kw: Any) -> Path:
    return save_prompt_model(
        tmp_path / "model",
        labels=LABELS,
        backbone="any-remote-name",
        template=kw.pop("template", "Review: {{ text }}\nSentiment:"),
        verbalizers=VERBS,
        shots_cfg=None,
        pool=None,
        cleaning={},
        name="remote",
        max_length=kw.pop("max_length", 64),
        chat=kw.pop("chat", True),
        backend="openai",
        openai={"base_url": url, "model": "m", "api_key_env": None, "timeout_s": 5.0},
    )


def test_prompt_classifier_with_remote_backend(tmp_path: Path, stub_url: str) -> None:
    clf = load_prompt_model(_remote_model(tmp_path, stub_url, max_length=16))
    assert clf.info()["backend"] == "openai" and clf.model is None
    out = clf.predict(["a great film", "a dull film"])
    assert [o["label"] for o in out] == ["fresh", "rotten"]
    sent = _Stub.seen[-1]["body"]["messages"][0]["content"]
    assert sent.startswith("Review: ") and "<|im_start|>" not in sent  # the server applies its own chat template
    # the text is cut (by characters, ~4 per token) to fit max_length; the template never is
    clf.predict(["word " * 200])
    assert len(_Stub.seen[-1]["body"]["messages"][0]["content"]) <= 16 * 4


def test_remote_model_needs_endpoint_settings(tmp_path: Path) -> None:
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError, match="base_url and model"):
        save_prompt_model(
            tmp_path / "m",
            labels=LABELS,
            backbone="x",
            template=None,
            verbalizers=None,
            shots_cfg=None,
            pool=None,
            cleaning={},
            name="r",
            max_length=64,
            chat=False,
            backend="openai",
            openai=None,
        )


def _llama_server_python() -> str | None:
    """A Python with llama-cpp-python[server]: $MODELYARD_LLAMA_SERVER_PYTHON, or this one if it has it."""
    exe = os.environ.get("MODELYARD_LLAMA_SERVER_PYTHON")
    if exe:
        return exe if Path(exe).is_file() else None
    return sys.executable if importlib.util.find_spec("llama_cpp") is not None else None


@pytest.mark.skipif(
    _llama_server_python() is None,
    reason="llama-cpp-python[server] is not installed (PyPI ships it as a 77 MB source package that compiles "
    "llama.cpp, ~10 CPU-minutes); `make test-llamacpp` installs it and runs this test, or point "
    "MODELYARD_LLAMA_SERVER_PYTHON at a Python that has it",
)
def test_real_llama_cpp_server_on_the_bundled_gguf(tmp_path: Path) -> None:
    """A real OpenAI-compatible server (llama-cpp-python) serving the bundled SmolLM2 GGUF."""
    from modelyard.llm.cache import bundled_gguf

    gguf = bundled_gguf("smollm2-135m-instruct")
    with sock() as port:
        pass
    cmd = [
        str(_llama_server_python()),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    cmd += ["--n_ctx", "512", "--logits_all", "true", "--model_alias", "smollm2"]
    log = (tmp_path / "server.log").open(
        "wb"
    )  # a file, not a pipe: llama.cpp logs a lot and would block on a full pipe
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the llama.cpp server did not listen within 120 s"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        # /v1/completions continues right after "Answer:", so the label words are among the first token's top 20
        # (a chat request's first token is usually a preamble such as "The", and the API cannot prime the answer).
        template = (
            "Is the following movie review positive or negative? Answer with one word.\n\nReview: {{ text }}\nAnswer:"
        )
        verbs = {"fresh": ["positive"], "rotten": ["negative"]}
        model_dir = _remote_model(tmp_path, url, max_length=128, chat=False, template=template)
        meta = json.loads((model_dir / "modelyard.json").read_text())
        (model_dir / "modelyard.json").write_text(json.dumps({**meta, "verbalizers": verbs}))
        clf = load_prompt_model(model_dir)
        texts = ["A wonderful, moving film with superb acting.", "A boring, dreadful mess of a movie."]
        try:
            probs = clf.predict_proba(texts)
        except ModelError:
            time.sleep(1)
            if proc.poll() == -signal.SIGSEGV:
                # llama.cpp itself crashed answering `logprobs` (seen with llama-cpp-python 0.3.35/0.3.36 built
                # natively on an AVX-512/AMX CPU): an upstream fault of the server, not of modelyard's client
                pytest.skip("the llama.cpp server segfaulted while computing logprobs (an upstream llama.cpp fault)")
            raise
        assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)
        assert [clf.labels[i] for i in probs.argmax(axis=1)] == ["fresh", "rotten"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
