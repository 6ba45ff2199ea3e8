"""Interrupt a hyper-parameter search and resume it: only the missing trials run, and the best is ≥ the baseline.

    python benchmarks/tune_resume.py [RECIPE] [--trials 8] [--kill-after 3] [--output-dir DIR]

1. ``modelyard tune RECIPE --trials N`` in a subprocess, killed (SIGKILL, like an OOM kill or a lost
   machine) once ``--kill-after`` trials have finished;
2. ``modelyard tune RECIPE --trials N --resume``;
3. checks, from the study database: the trials finished before the kill were not re-run (same numbers,
   same values, same durations), trials left RUNNING by the killed process became FAIL, the study holds
   exactly N finished (complete + pruned) trials, and the best validation value is at least the
   baseline's (trial 0 = the recipe's own configuration).

Prints the trials table and exits 1 if a check fails. Default recipe: examples/tune_rotten_tomatoes.yaml.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _finished(db: Path, name: str) -> list:
    import optuna

    if not db.exists():
        return []
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except Exception:  # noqa: BLE001 - the study is being created right now
        return []
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def main(argv: list[str] | None = None) -> int:
    import optuna
    import yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", type=Path, default=ROOT / "examples" / "tune_rotten_tomatoes.yaml")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=3, help="finished trials before the first process is killed")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)

    raw = yaml.safe_load(args.recipe.read_text(encoding="utf-8"))
    name = raw["name"]
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="modelyard-tune-resume-"))
    tune_dir = out / f"tune-{name}"
    shutil.rmtree(tune_dir, ignore_errors=True)
    db = tune_dir / "study.db"
    cmd = [sys.executable, "-m", "modelyard.cli", "tune", str(args.recipe), "--trials", str(args.trials)]
    overrides = [f"output_dir={out}"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}

    t0 = time.time()
    first = subprocess.Popen([*cmd, *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while first.poll() is None and len(_finished(db, name)) < args.kill_after:
        time.sleep(1.0)
    if first.poll() is not None:
        print(f"the search ended (rc {first.returncode}) before {args.kill_after} trials finished", file=sys.stderr)
        return 1
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: (t.value, t.user_attrs.get("duration_s")) for t in _finished(db, name)}
    print(f"killed the search after {len(before)} finished trial(s) ({time.time() - t0:.0f}s): {sorted(before)}")

    t1 = time.time()
    resumed = subprocess.run([*cmd, "--resume", *overrides], env=env, capture_output=True, text=True)
    print(resumed.stderr[-3000:])
    if resumed.returncode != 0:
        print(f"resume failed with rc {resumed.returncode}", file=sys.stderr)
        return 1
    print(f"resumed search finished in {time.time() - t1:.0f}s")

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    trials = study.get_trials(deepcopy=False)
    finished = _finished(db, name)
    baseline = next((t for t in trials if t.user_attrs.get("baseline")), None)
    fails = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    checks = {
        f"exactly {args.trials} finished trials": len(finished) == args.trials,
        "trials finished before the kill were not re-run": all(
            (t.value, t.user_attrs.get("duration_s")) == before[t.number] for t in finished if t.number in before
        )
        and before.keys() <= {t.number for t in finished},
        "only the interrupted trial is FAIL (abandoned)": len(fails) <= 1
        and all("abandoned" in t.user_attrs.get("error", "") for t in fails),
        "trial 0 is the baseline": baseline is not None and baseline.number == 0,
        "best ≥ baseline on validation": baseline is not None
        and baseline.value is not None
        and study.best_value >= baseline.value,
    }
    for t in trials:
        mark = " (baseline)" if t.user_attrs.get("baseline") else ""
        mark += " ★" if t.state == optuna.trial.TrialState.COMPLETE and t.number == study.best_trial.number else ""
        value = "-" if t.value is None else f"{t.value:.4f}"
        print(f"trial {t.number}{mark}: {t.state.name} {value} {t.params}")
    if baseline is not None and baseline.value is not None:
        print(f"baseline {baseline.value:.4f} → best {study.best_value:.4f} (trial {study.best_trial.number})")
    for label, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {label}")
    print(f"study: {db}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
