"""Learning curves of the five algorithms on the built-in task, side by side.

Each algorithm runs with its registry defaults and otherwise the same spec: the same
seed, prompts, steps, learning rate and held-out prompts (the demo's task and model).
Held-out accuracy (`val/acc/mean@1`) is measured every `--eval-every` steps; the result
lists each curve, the start and end accuracy with the standard error of their difference,
wall time and seconds per step, and the algorithm-specific numbers each one logs.

    .venv/bin/python -m bench.algorithm_curves [--steps 40] [--eval-every 5] [--eval-size 256]

Writes bench/results/algorithm_curves.json (and its line in docs/benchmarks.md) and
bench/results/algorithm_curves.html, a plotly figure that loads plotly.js from the
installed plotly package (no copy in the repository, no CDN).
"""

import argparse
import math
import os
import time
from pathlib import Path

import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.record import RESULTS_DIR, record
from engine.algorithms import ALGORITHMS
from engine.events import ListSink
from engine.orchestration import run
from engine.spec import RunSpec, parse_spec

ALGORITHM_NAMES = ["grpo", "dr_grpo", "dapo", "gspo", "rloo"]
# Per-step metrics drawn next to held-out accuracy.
TRAIN_METRICS = ["acc/mean", "actor/entropy", "rollout/response_length/mean", "timing_s/step"]


def curve_spec(algorithm: str, steps: int, eval_every: int, eval_size: int, seed: int, cpus: int) -> RunSpec:
    """The demo's spec with 16 samples per prompt (steadier curves), for one algorithm."""
    return parse_spec(
        {
            "name": f"bench: {algorithm} curve",
            "dataset": {"name": "arith", "eval_size": eval_size},
            "algorithm": {"name": algorithm},
            "rollout": {"prompts_per_step": 16, "n": 16, "max_new_tokens": 256},
            "training": {"steps": steps, "lr": 3e-4, "warmup_steps": 10, "eval_every": eval_every},
            "resources": {"executor": "inprocess", "cpus": cpus},
            "seed": seed,
        }
    )


def difference_se(before: float, after: float, n: int) -> float:
    """Standard error of the difference of two accuracies on n prompts each, treated as
    independent. They share prompts and the random stream, which correlates them
    positively, so the true error is smaller: this bound is conservative."""
    return math.sqrt((before * (1 - before) + after * (1 - after)) / n)


def run_curve(spec: RunSpec) -> dict:
    """Run one spec in process; its held-out curve, per-step series and timing."""
    sink = ListSink()
    started = time.monotonic()
    outcome = run(spec, sink)
    seconds = time.monotonic() - started
    assert outcome == "succeeded", outcome
    metrics = sink.of_kind("metrics")
    val = [(m.step, m.values["val/acc/mean@1"]) for m in metrics if "val/acc/mean@1" in m.values]
    train = [m for m in metrics if "actor/pg_loss" in m.values]
    before, after = val[0][1], val[-1][1]
    se = difference_se(before, after, spec.dataset.eval_size)
    extra = sorted({name for m in train for name in m.values if name.split("/")[0] in ("dapo", "overlong", "kl")})
    return {
        "val_acc": [{"step": step, "acc": acc} for step, acc in val],
        "val_acc_start": before,
        "val_acc_end": after,
        "gain": round(after - before, 4),
        "gain_se": round(se, 4),
        "gain_over_3se": after - before > 3 * se,
        "total_s": round(seconds, 1),
        "seconds_per_step": round(sum(m.values["timing_s/step"] for m in train) / max(len(train), 1), 2),
        "train": {name: [round(m.values[name], 4) for m in train] for name in TRAIN_METRICS + extra},
    }


def write_figure(curves: dict[str, dict], path: Path) -> None:
    """Held-out accuracy and the per-step metrics, one panel each, algorithms overlaid."""
    titles = ["val/acc/mean@1", *TRAIN_METRICS]
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    colours = plotly.colors.qualitative.Plotly
    for index, (name, curve) in enumerate(curves.items()):
        style = {"legendgroup": name, "line": {"color": colours[index % len(colours)]}}
        points = curve["val_acc"]
        figure.add_trace(
            go.Scatter(x=[p["step"] for p in points], y=[p["acc"] for p in points], name=name, **style), row=1, col=1
        )
        for col, metric in enumerate(TRAIN_METRICS, start=2):
            values = curve["train"][metric]
            figure.add_trace(
                go.Scatter(x=list(range(1, len(values) + 1)), y=values, name=name, showlegend=False, **style),
                row=1,
                col=col,
            )
    figure.update_xaxes(title_text="step")
    figure.update_layout(title="Algorithms on the built-in arith task (same seed and steps)", height=420)
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    figure.write_html(path, include_plotlyjs=os.path.relpath(plotly_js, path.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    curves = {}
    for name in ALGORITHM_NAMES:
        spec = curve_spec(name, args.steps, args.eval_every, args.eval_size, args.seed, args.cpus)
        curves[name] = run_curve(spec)
        curve = curves[name]
        print(
            f"{name:>8}  val acc {curve['val_acc_start']:.3f} → {curve['val_acc_end']:.3f} "
            f"(±{curve['gain_se']:.3f})  {curve['total_s']:.0f} s, {curve['seconds_per_step']:.2f} s/step"
        )
    write_figure(curves, RESULTS_DIR / "algorithm_curves.html")
    metrics = {
        "steps": args.steps,
        "eval_size": args.eval_size,
        "seed": args.seed,
        "descriptions": {name: ALGORITHMS.get(name).description for name in ALGORITHM_NAMES},
        "curves": curves,
    }
    summary = "; ".join(
        f"{name} {c['val_acc_start']:.2f} → {c['val_acc_end']:.2f} ({c['seconds_per_step']:.1f} s/step)"
        for name, c in curves.items()
    )
    record(__spec__.name, metrics, f"{args.steps} steps, val acc: {summary}")
    print(summary)


if __name__ == "__main__":
    main()
