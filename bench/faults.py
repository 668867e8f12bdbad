"""Faults survived: the fault tests (tests/integration/test_faults.py) on a stack of their
own, with their figures collected: for a Celery worker killed mid-step, the Ray trainer
actor killed, Redis restarted and PostgreSQL restarted mid-run, how the run ended, how
soon it made progress again, the metric points counted (expected, duplicated, wrong),
and how the web tier answered a client polling the run four times a second.

    .venv/bin/python -m bench.faults
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.record import REPO_ROOT, record

TEST = "tests/integration/test_faults.py"


def run_fault_tests() -> tuple[int, float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "faults.json"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"],
            cwd=REPO_ROOT,
            env={**os.environ, "ROLLYARD_FAULTS_RESULTS": str(results)},
        )
        wall_s = time.monotonic() - started
        return done.returncode, wall_s, json.loads(results.read_text()) if results.exists() else {}


def describe(fault: str, figures: dict) -> str:
    points = figures["points"]
    counted = f"{points['points']}/{points['expected']} points, {points['duplicated']} duplicated"
    web = figures["web"]
    served = f"web {web['ok']}/{web['requests']} OK"
    if fault == "celery_worker_killed":
        what = (f"worker killed at step {figures['killed_at_step']}: requeued after {figures['requeued_after_s']} s, "
                f"past step {figures['killed_at_step']} again after {figures['recovered_after_s']} s, "
                f"resumed from step {figures['checkpoint_step']}")  # fmt: skip
    elif fault == "ray_trainer_actor_killed":
        what = (f"Ray trainer actor killed at step {figures['killed_at_step']}: past it again after "
                f"{figures['recovered_after_s']} s, resumed from step {figures['checkpoint_step']}")  # fmt: skip
    elif fault == "redis_restarted":
        what = (f"Redis down {figures['down_s']} s: broker back {figures['broker_back_after_s']} s after, "
                f"next step {figures['progress_after_s']} s after the fault, no resume")  # fmt: skip
    else:
        what = (f"PostgreSQL restart ({figures['restart_s']} s): next step {figures['progress_after_s']} s after, "
                f"{figures['driver_writes_retried']} driver write retried, no resume")  # fmt: skip
    return f"{what}; {figures['outcome']}, {counted}; {served}"


def main() -> None:
    load_before = os.getloadavg()[0]
    exit_code, wall_s, faults = run_fault_tests()
    # Recovery times grow with the machine's load (the model loads again on resume).
    load = {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)}
    metrics = {"tests_exit_code": exit_code, "wall_s": round(wall_s, 1), "load_average_1m": load, "faults": faults}
    lines = [describe(fault, figures) for fault, figures in faults.items()]
    summary = " · ".join(lines) if lines else "no figures (the fault tests were skipped or failed early)"
    if exit_code != 0:
        summary = f"FAILED (pytest exit {exit_code}): {summary}"
    record("bench.faults", metrics, summary)
    print(f"{'fault':<26} result")
    for fault, line in zip(faults, lines):
        print(f"{fault:<26} {line}")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
