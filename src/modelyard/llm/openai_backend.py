"""Score labels through any OpenAI-compatible server (OpenAI, vLLM, llama.cpp / llama-cpp-python, …).

A remote endpoint does not hand out the likelihood of arbitrary continuations, but every
OpenAI-compatible server returns the ``top_logprobs`` of the first generated token. The label scores
are read from that distribution: each label gets the probability mass of the listed tokens that start
one of its verbalizer words (``"pos"``, ``" Positive"`` … for ``positive``); a token that could start
words of two labels counts for neither; a label with no listed token gets half the smallest listed
probability (its true mass is below that). The scores are normalised over the labels, so they are
real probabilities that sum to 1 — the same contract as the local scorer in :mod:`.scoring`.

Requests use ``temperature 0`` and ``max_tokens 1``; ``chat`` prompts go to ``/chat/completions`` as one
user message (the server applies its own chat template), plain prompts to ``/completions``. Rate
limits (429) and transient server errors (5xx, timeouts) are retried with backoff, honouring
``Retry-After``; anything else fails with the URL, status and the server's message.

Written by hand (with httpx) rather than with the ``openai`` SDK: the SDK adds a dependency for two
POST requests, and servers differ in small ways (legacy ``logprobs`` dicts vs. chat ``content`` lists)
that this module reads explicitly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from modelyard.errors import ModelError

TOP_LOGPROBS = 20  # the most OpenAI's chat API returns
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def _words_by_label(verbalizers: Mapping[str, Sequence[str]], labels: Sequence[str]) -> list[list[str]]:
    return [[w.strip().lower() for w in verbalizers[lb] if w.strip()] for lb in labels]


def label_probs_from_top(
    top: Mapping[str, float], verbalizers: Mapping[str, Sequence[str]], labels: Sequence[str]
) -> np.ndarray:
    """Label probabilities from a first-token ``{token: logprob}`` distribution (see the module docstring).

    Args:
        top: the listed candidate tokens and their log-probabilities.
        verbalizers: ``{label: [words]}``.
        labels: class names in output order.

    Returns:
        float64 array of ``len(labels)`` probabilities summing to 1.
    """
    words = _words_by_label(verbalizers, labels)
    mass = np.zeros(len(labels))
    for token, logprob in top.items():
        piece = token.strip().lower()
        if not piece or not math.isfinite(logprob):
            continue
        hits = [i for i, ws in enumerate(words) if any(w.startswith(piece) for w in ws)]
        if len(hits) == 1:
            mass[hits[0]] += math.exp(logprob)
    finite = [lp for lp in top.values() if math.isfinite(lp)]
    floor = 0.5 * math.exp(min(finite)) if finite else 1e-12
    mass = np.where(mass > 0, mass, max(floor, 1e-12))
    return mass / mass.sum()


class OpenAIScorer:
    """Label probabilities for rendered prompts from an OpenAI-compatible endpoint.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080/v1``.
        model: model name sent with each request.
        api_key_env: environment variable holding the API key; unset or empty variable → no
            ``Authorization`` header (local servers need none).
        timeout_s: per-request timeout.
        concurrency: requests in flight at once.
        max_retries: retries of a 429/5xx/timeout before giving up.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        *,
        concurrency: int = 4,
        max_retries: int = 4,
    ) -> None:
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ModelError(f"model.prompt.openai.base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env or "", "") if api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}{path}"
        delay = 0.5
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.post(url, json=body)
            except httpx.TimeoutException:
                if attempt == self.max_retries:
                    raise ModelError(
                        f"{url} timed out {attempt + 1} times; raise model.prompt.openai.timeout_s"
                    ) from None
                time.sleep(delay)
                delay *= 2
                continue
            except httpx.HTTPError as err:
                raise ModelError(f"cannot reach {url}: {err}") from None
            if resp.status_code == 200:
                try:
                    return resp.json()
                except ValueError:
                    raise ModelError(f"{url} answered 200 with a body that is not JSON: {resp.text[:200]!r}") from None
            if resp.status_code in RETRY_STATUS and attempt < self.max_retries:
                retry_after = resp.headers.get("Retry-After", "")
                wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else delay
                time.sleep(min(wait, 60.0))
                delay *= 2
                continue
            hint = ""
            if resp.status_code in (401, 403):
                hint = (
                    f" (set the API key in ${self.api_key_env})"
                    if self.api_key_env
                    else " (set model.prompt.openai.api_key_env)"
                )
            raise ModelError(f"{url} answered HTTP {resp.status_code}{hint}: {resp.text[:300]}")
        raise AssertionError("unreachable")

    def top_logprobs(self, prompt: str, *, chat: bool) -> dict[str, float]:
        """The first answer token's candidates ``{token: logprob}`` for one rendered prompt."""
        if chat:
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": TOP_LOGPROBS,
            }
            data = self._post("/chat/completions", body)
        else:
            body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": TOP_LOGPROBS}
            data = self._post("/completions", body)
        return parse_top_logprobs(data, f"{self.base_url} ({'chat' if chat else 'completions'})")

    def score(
        self,
        prompts: Sequence[str],
        verbalizers: Mapping[str, Sequence[str]],
        labels: Sequence[str],
        *,
        chat: bool,
    ) -> np.ndarray:
        """Label probabilities, shape ``(len(prompts), len(labels))``; rows sum to 1."""
        if not prompts:
            return np.zeros((0, len(labels)))
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            tops = list(pool.map(lambda p: self.top_logprobs(p, chat=chat), prompts))
        return np.stack([label_probs_from_top(top, verbalizers, labels) for top in tops])


def parse_top_logprobs(data: Mapping[str, Any], where: str) -> dict[str, float]:
    """``{token: logprob}`` of the first generated token from a chat or legacy completions response.

    Raises:
        ModelError: the response has no logprobs (the server does not support them, or needs them enabled).
    """
    try:
        choice = data["choices"][0]
        logprobs = choice.get("logprobs")
        if logprobs is None:
            raise KeyError("logprobs")
        if isinstance(logprobs.get("content"), list):  # chat completions
            first = logprobs["content"][0]
            top = {str(t["token"]): float(t["logprob"]) for t in first.get("top_logprobs") or []}
            top.setdefault(str(first["token"]), float(first["logprob"]))
            return top
        first_top = logprobs["top_logprobs"][0]  # legacy completions: a list of {token: logprob} dicts
        return {str(k): float(v) for k, v in first_top.items()}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(
            f"{where}: the response carries no usable top_logprobs ({type(err).__name__}: {err}); "
            "the server must support logprobs (llama.cpp: start it with logits enabled)"
        ) from None
