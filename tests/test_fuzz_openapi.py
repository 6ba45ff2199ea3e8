"""Schemathesis fuzzing of the published OpenAPI spec, in process (ASGI, no network): no operation of the
plain server or of the production server (with an admin key) answers 5xx, every answer is a status the operation
documents (``status_code_conformance``) with the documented body, without a key every non-public operation
answers only 401, and the stateful phase follows the OpenAPI link from a prediction to its feedback.

Bounded for CI: derandomized generation (same cases every run), a few examples per operation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the dev extra)")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)

from modelyard.config import ServeConfig  # noqa: E402
from tests.job_targets import quick_monitor  # noqa: E402
from tests.production_helpers import make_registry, production_app  # noqa: E402

MAX_EXAMPLES = 20
PUBLIC = {"/healthz", "/readyz"}
# Every answer is a documented status of its operation, with the documented body.
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def _wait_ready(app: Any) -> None:
    """Start the app's lifespan in schemathesis' ASGI client (kept for the process) and wait for the model."""
    with asgi.get_client(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)


def _only_auth_errors(ctx: Any, response: Any, case: Any) -> bool:
    """Without a key, everything but the public probes is refused before any handler runs."""
    if case.path in PUBLIC:
        return True
    assert response.status_code == 401, f"{case.method} {case.path} without a key: {response.status_code}"
    return True


def _runner(
    operation: Any, headers: dict[str, str], checks: list[Callable[..., Any]], seen: list[int], examples: int
) -> Any:
    """A Hypothesis test running derandomized valid and invalid cases of one operation."""
    # Valid requests exercise the handlers; schema-violating ones the validation and error paths.
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @given(case=strategy)
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure as found
        suppress_health_check=list(HealthCheck),
    )
    def run_operation(case: Any) -> None:
        seen.append(1)
        # 60 s: an admin drift run starts a child process, slower than 10 s on a loaded 2-core machine
        case.call_and_validate(headers=headers, checks=checks, timeout=60)

    return run_operation


def fuzz(
    schema: Any, headers: dict[str, str], checks: list[Callable[..., Any]], examples: int = MAX_EXAMPLES
) -> dict[str, int]:
    """Run every operation of ``schema`` for ``examples`` derandomized cases; return cases per operation.

    Raises:
        AssertionError: naming every operation whose checks failed, with the first failure of each.
    """
    failures: dict[str, str] = {}
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        seen: list[int] = []
        try:
            _runner(operation, headers, checks, seen, examples)()
        except Exception as err:  # schemathesis raises its own failure types; collect them all
            failures[label] = str(err)[:2000]
        counts[label] = len(seen)
    assert not failures, "\n\n".join(f"{op}:\n{msg}" for op, msg in failures.items())
    return counts


@pytest.fixture(scope="module")
def plain_app(tiny_trained_run: Path) -> Any:
    from modelyard.models.loading import load
    from modelyard.serving import create_app

    app = create_app(lambda: load(tiny_trained_run), ServeConfig(max_wait_ms=1.0, max_chars_per_text=2000))
    _wait_ready(app)
    return app


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, tiny_trained_run: Path) -> Iterator[tuple[Any, Any, str]]:
    reg = make_registry(tmp_path_factory.mktemp("fuzz"), tiny_trained_run, versions=2)
    key = reg.create_key(["admin"])
    # The fuzzer checks the HTTP contract; the drift run is a stand-in that answers at once (the real monitor,
    # in its child process, is covered by tests/test_console.py::test_drift_endpoint).
    app = production_app(reg, cfg={"max_chars_per_text": 2000}, drift_monitor=quick_monitor)
    _wait_ready(app)
    yield app, reg, key
    asgi.shutdown_lifespans()  # drain the prediction log before the registry closes
    reg.close()


def test_fuzz_plain_server_no_5xx(plain_app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", plain_app)
    counts = fuzz(schema, {}, CHECKS)
    print("cases per operation:", counts)  # shown with -s
    assert {"POST /v1/predict", "POST /v1/explain", "GET /v1/model", "GET /readyz"} <= set(counts)
    assert all(n >= 1 for n in counts.values()), counts


def test_fuzz_production_server_with_admin_key_no_5xx(prod: tuple[Any, Any, str]) -> None:
    app, reg, key = prod
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    before = reg.count("predictions")
    counts = fuzz(schema, headers, CHECKS)
    print("cases per operation:", counts)  # shown with -s
    expected = {"POST /v1/feedback", "GET /admin/v1/versions", "GET /admin/v1/traffic", "POST /admin/v1/drift"}
    assert expected <= set(counts), counts
    assert app.state.predlog.flush(30)
    assert reg.count("predictions") > before  # the handlers ran (auth passed), predictions were logged


def test_fuzz_production_server_without_key_only_401(prod: tuple[Any, Any, str]) -> None:
    app, _, key = prod
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {key}"})
    counts = fuzz(schema, {}, [*CHECKS, _only_auth_errors])
    print("cases per operation:", counts)  # shown with -s
    assert len(counts) >= 10


def test_fuzz_production_server_with_a_narrow_slow_key_answers_documented_403_and_429(
    prod: tuple[Any, Any, str],
) -> None:
    """A predict-only key limited to 1 request an hour: admin and feedback operations answer 403, predict and
    explain 429 after the first request; both are documented statuses of those operations (with Retry-After)."""
    app, reg, admin = prod
    key = reg.create_key(["predict"], rate="1/h")
    headers = {"Authorization": f"Bearer {key}"}
    statuses: set[int] = set()

    def record(ctx: Any, response: Any, case: Any) -> bool:
        statuses.add(response.status_code)
        if response.status_code == 429:
            value = response.headers["retry-after"]
            assert int(value[0] if isinstance(value, list) else value) >= 1, value
        return True

    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {admin}"})
    fuzz(schema, headers, [*CHECKS, record], examples=5)
    assert {403, 429} <= statuses, statuses


def test_inputs_outside_the_fuzzers_alphabet_are_4xx_not_5xx(prod: tuple[Any, Any, str]) -> None:
    """Regressions found while fuzzing: schemathesis generates UTF-8-encodable strings only, so these are sent
    by hand. A lone surrogate used to fail the tokenizer on the whole micro-batch (500 for every request in
    it), and a huge ``since`` overflowed the date arithmetic (500)."""
    app, _, key = prod
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with asgi.get_client(app) as client:
        for path, raw in [
            ("/v1/predict", b'{"texts": ["fine", "bad \\ud800 text"]}'),
            ("/v1/predict", b'{"texts": ["\\udfff"]}'),
            ("/v1/explain", b'{"text": "a \\ud800 b"}'),
            ("/admin/v1/drift", b'{"since": "999999d"}'),
        ]:
            r = client.post(path, data=raw, headers=auth)
            assert r.status_code == 422, (path, raw, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
        assert (
            "texts[1] has a lone UTF-16 surrogate"
            in client.post("/v1/predict", data=b'{"texts": ["ok", "\\ud800"]}', headers=auth).text
        )
        r = client.get("/admin/v1/traffic?since=999999d", headers=auth)
        assert r.status_code == 422 and "before year 1" in r.json()["error"]["message"]
        ok = client.post("/v1/predict", data=b'{"texts": ["fine \\u00e9\\u4e2d"]}', headers=auth)
        assert ok.status_code == 200, ok.text


def test_stateful_predict_then_feedback_with_the_returned_id(prod: tuple[Any, Any, str]) -> None:
    """Schemathesis' stateful phase, in process: the OpenAPI link from ``POST /v1/predict`` (``predictions[0].id``
    and ``.label``) to ``POST /v1/feedback`` chains real calls; every answer is a documented status with its
    documented body, and feedback on a prediction just made (same key) is accepted."""
    app, _, key = prod
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    feedback: list[int] = []

    class PredictThenFeedback(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "timeout": 60}

        def after_call(self, response: Any, case: Any) -> None:
            if case.path == "/v1/feedback":
                feedback.append(response.status_code)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    PredictThenFeedback.run(
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=4,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    print("feedback statuses:", sorted(feedback))  # shown with -s
    assert 202 in feedback, feedback  # the link was followed with a real prediction id and label
