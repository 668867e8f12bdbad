"""The engine reports exactly what it reported before the reshape into parts.

tests/engine/golden/reshape.json was recorded by tests/engine/golden/record_golden.py
with the pre-reshape trainer (its commit is in each case): for grpo, dr_grpo, dapo with
dynamic sampling, gspo with 4 mini-batches, rloo and easy_to_hard, 3 steps at a fixed
seed. Replaying the stored spec must give every histogram and per-prompt result identical
and every metric equal (timings left out). Metrics added since are named here, so an
addition is a decision, never an accident.

"Equal" for a metric is within FLOAT_NOISE, not float for float: the recording machine
(an Intel Xeon) and an AMD EPYC run different float32 kernels, and their losses, KL and
gradient norms differ by up to 7e-5 relative (1e-8 absolute for a KL near 0) after 3
steps, while every sampled token, length, reward and per-prompt count stays the same.
A real change to the engine moves a metric by far more.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).with_name("golden")
GOLDEN = json.loads((GOLDEN_DIR / "reshape.json").read_text())

_spec = importlib.util.spec_from_file_location("record_golden", GOLDEN_DIR / "record_golden.py")
record_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_golden)

# Step metrics the engine reports since the reshape (docs/metrics.md).
ADDED_STEP_METRICS = {"rollout/aborted_ratio"}
FLOAT_NOISE = {"rel_tol": 2e-4, "abs_tol": 1e-6}


@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_replaying_a_recorded_spec_reports_identical_values(case):
    recorded = GOLDEN["cases"][case]
    replayed = record_golden.record(recorded["spec"])
    assert [(e["kind"], e["step"]) for e in replayed] == [(e["kind"], e["step"]) for e in recorded["events"]]
    for now, then in zip(replayed, recorded["events"], strict=True):
        if now["kind"] == "metrics":
            # Names first, then values, so a failure says which metric moved.
            added = ADDED_STEP_METRICS if "reward/mean" in now["values"] else set()
            assert set(now["values"]) == set(then["values"]) | added, (case, now["step"])
            moved = {k: (v, now["values"][k]) for k, v in then["values"].items()
                     if not math.isclose(now["values"][k], v, **FLOAT_NOISE)}
            assert not moved, (case, now["step"], moved)
        else:
            assert now == then, (case, now["kind"], now["step"])
