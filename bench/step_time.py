"""A training step before and after a change of the engine, side by side in one program.

    .venv/bin/python -m bench.step_time [--before REV] [--after REV] [--rounds 3] [--steps 8]

Both revisions (default: the commit before the engine was cut into parts, and HEAD) are
checked out into temporary git worktrees, so uncommitted work never leaks into the
numbers; each round runs the demo's spec (GRPO, 16 prompts × 8 samples, in process on
one thread, evaluations only before and after) once in each tree, alternating which
goes first, each in a fresh process whose imports come from its own tree. Step time is
the wall time between consecutive step heartbeats (the evaluations are left out), so
the two trees share every round's machine load; the ratio of their medians is the
result. Same model, data, seed and budget in both.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.record import REPO_ROOT, record

RESHAPE_PARENT = "8cb262f^"  # "Engine cut into parts" is 8cb262f

CHILD = r"""
import json, sys
from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec
spec = parse_spec({"name": "bench: step time", "dataset": {"eval_size": 16},
                   "training": {"steps": int(sys.argv[1]), "eval_every": 0},
                   "resources": {"executor": "inprocess", "cpus": 1}, "seed": 0})
sink = ListSink()
run(spec, sink)
beats = [e.wall_time for e in sink.of_kind("heartbeat")]
# Heartbeat k closes step k; the first (step 0) follows the opening evaluation.
print(json.dumps([b - a for a, b in zip(beats, beats[1:])]))
"""


def step_seconds(tree: Path, steps: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'platform'}"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(steps)], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default=RESHAPE_PARENT)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    shas = {
        name: subprocess.run(
            ["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for name, rev in (("before", args.before), ("after", args.after))
    }
    before_sha, after_sha = shas["before"], shas["after"]
    with tempfile.TemporaryDirectory() as scratch:
        trees = {name: Path(scratch) / name for name in shas}
        for name, tree in trees.items():
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), shas[name]], cwd=REPO_ROOT,
                           check=True, capture_output=True)
        try:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for round_ in range(args.rounds):
                # Alternate which goes first, so neither always meets a warmer machine.
                order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
                for name in order:
                    seconds = step_seconds(trees[name], args.steps)
                    times[name] += seconds
                    print(f"round {round_ + 1} {name}: median {statistics.median(seconds):.3f} s/step", file=sys.stderr)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    metrics = {
        "before_rev": before_sha,
        "after_rev": after_sha,
        "steps_per_run": args.steps,
        "rounds": args.rounds,
        "before_median_s_per_step": round(before, 4),
        "after_median_s_per_step": round(after, 4),
        "after_over_before": round(after / before, 3),
        "before_s_per_step": [round(s, 4) for s in times["before"]],
        "after_s_per_step": [round(s, 4) for s in times["after"]],
    }
    print(f"| tree | s/step (median) |\n| before {before_sha} | {before:.3f} |\n| after {after_sha} | {after:.3f} |")
    record(
        "bench.step_time",
        metrics,
        f"demo spec step, {args.rounds} alternating rounds × {args.steps} steps: {before:.3f} s before ({before_sha}) "
        f"vs {after:.3f} s after ({after_sha}), ratio {after / before:.3f}",
    )


if __name__ == "__main__":
    main()
