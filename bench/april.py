"""APRIL against the synchronous GRPO baseline, in one program, on the long-tailed
built-in task: rollout throughput and held-out accuracy at equal steps.

Both runs share everything (seed, prompts, steps, model, held-out prompts, placement)
but `rollout.strategy`: plain, or april at `--over-sampling` times the batch. By
default both split the sync recipe across two Ray actors of one CPU each, the trainer
and one rollout worker (`--rollout-workers 1`: this 2-core machine gives each its own
core); `--rollout-workers 0` runs them colocated in one process on `--cpus` cores.
Rollout throughput is completed tokens per second of rollout phase: the response tokens
of every group the step completed (an APRIL group finished over two steps counts its
whole length once, when it completes; tokens still in the buffer at the end are not
counted, which only penalises APRIL) over the seconds of the step's rollout phase
(`timing_s/gen + timing_s/reward`: colocated, generating and verifying; split, the
trainer's wait for the worker, which verifies too, and its reward shaping), summed over
the run.

    .venv/bin/python -m bench.april [--steps 12] [--prompts 16] [--n 8] [--over-sampling 2] [--rollout-workers 1]

Writes bench/results/april.json (and its line in docs/benchmarks.md) and
bench/results/april.html: held-out accuracy, throughput per step, and the busy/idle
timeline of one step of each run side by side.
"""

import argparse
import os
import time
from pathlib import Path

import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.record import RESULTS_DIR, record
from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec

PHASE_COLOURS = {
    "generate": "#2ca02c",
    "verify": "#17becf",
    "train": "#1f77b4",
    "sync": "#9467bd",
    "wait": "#ff7f0e",
    "eval": "#8c564b",
    "idle": "#d3d3d3",
}


def run_spec(spec: dict) -> dict:
    """Run a spec; its steps' metrics, held-out curve, spans and wall time."""
    sink = ListSink()
    started = time.monotonic()
    outcome = run(parse_spec(spec), sink)
    assert outcome == "succeeded", outcome
    metrics = sink.of_kind("metrics")
    return {
        "seconds": time.monotonic() - started,
        "steps": [m.values for m in metrics if "reward/mean" in m.values],
        "val": [(m.step, m.values["val/acc/mean@1"]) for m in metrics if "val/acc/mean@1" in m.values],
        "spans": sink.of_kind("span"),
    }


def add_baseline_arguments(parser: argparse.ArgumentParser, eval_every: int) -> None:
    """The synchronous GRPO baseline's knobs, shared with bench.areal."""
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=1)


def baseline_spec(args: argparse.Namespace) -> dict:
    """The synchronous GRPO baseline on the long-tailed built-in task, in process."""
    return {
        "dataset": {"name": "arith", "eval_size": args.eval_size},
        "algorithm": {"name": "grpo"},
        "rollout": {"prompts_per_step": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens},
        "training": {"steps": args.steps, "lr": 3e-4, "warmup_steps": 10, "eval_every": args.eval_every},
        "resources": {"executor": "inprocess", "cpus": args.cpus},
        "seed": args.seed,
    }


def rollout_throughput(steps: list[dict]) -> float:
    completed = sum(values["perf/generated_tokens"] for values in steps)
    seconds = sum(values.get("timing_s/gen", 0.0) + values.get("timing_s/reward", 0.0) for values in steps)
    return completed / max(seconds, 1e-9)


def timeline_traces(spans, step: int, name: str, row_offset: str) -> list[go.Bar]:
    """One step's spans as horizontal bars per worker (seconds from the step's start)."""
    chosen = [s for s in spans if s.step == step]
    start = min(s.start for s in chosen)
    traces = []
    for phase, colour in PHASE_COLOURS.items():
        mine = [s for s in chosen if s.phase == phase]
        if mine:
            traces.append(
                go.Bar(
                    y=[f"{name}: {s.worker}" for s in mine],
                    x=[s.end - s.start for s in mine],
                    base=[s.start - start for s in mine],
                    orientation="h",
                    marker_color=colour,
                    name=phase,
                    legendgroup=phase,
                    showlegend=row_offset == "first",
                )
            )
    return traces


def write_html(figure: go.Figure, path: Path) -> None:
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    figure.write_html(path, include_plotlyjs=os.path.relpath(plotly_js, path.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_baseline_arguments(parser, eval_every=4)
    parser.add_argument("--over-sampling", type=float, default=2.0, help="N' as a multiple of the batch")
    parser.add_argument("--rollout-workers", type=int, default=1, help="0: colocated in process")
    args = parser.parse_args()

    base = baseline_spec(args)
    if args.rollout_workers:
        base["resources"] = {"executor": "ray", "cpus": 1, "rollout_workers": args.rollout_workers, "rollout_cpus": 1}
        placement = f"split: trainer and {args.rollout_workers} rollout worker(s) in Ray actors of 1 CPU each"
    else:
        placement = f"colocated: trainer and generation in one process on {args.cpus} core(s)"
    over = round(args.over_sampling * args.prompts)
    runs = {
        "sync": run_spec(base | {"rollout": base["rollout"] | {"strategy": "plain"}}),
        "april": run_spec(base | {"rollout": base["rollout"] | {"strategy": "april", "over_sampling": over}}),
    }
    result = {}
    for name, outcome in runs.items():
        steps = outcome["steps"]
        result[name] = {
            "rollout_tokens_per_s": round(rollout_throughput(steps), 1),
            "rollout_s": round(sum(v.get("timing_s/gen", 0) + v.get("timing_s/reward", 0) for v in steps), 2),
            "completed_tokens": sum(v["perf/generated_tokens"] for v in steps),
            "val_acc": outcome["val"],
            "val_acc_end": outcome["val"][-1][1],
            "total_s": round(outcome["seconds"], 1),
            "rollout_throughput_per_step": [
                round(v["perf/generated_tokens"] / max(v.get("timing_s/gen", 0) + v.get("timing_s/reward", 0), 1e-9), 1)
                for v in steps
            ],
            "tail_ratio_mean": round(sum(v["rollout/tail_ratio"] for v in steps) / len(steps), 2),
        }
        if name == "april":
            result[name] |= {
                "partial_ratio_mean": round(sum(v["rollout/partial_ratio"] for v in steps) / len(steps), 3),
                "off_policy_token_ratio_mean": round(sum(v["off_policy/token_ratio"] for v in steps) / len(steps), 3),
                "aborted_samples_per_step": round(sum(v["april/aborted_samples"] for v in steps) / len(steps), 1),
            }
    gain = result["april"]["rollout_tokens_per_s"] / result["sync"]["rollout_tokens_per_s"] - 1
    metrics = {
        "steps": args.steps,
        "prompts": args.prompts,
        "n": args.n,
        "over_sampling": over,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "placement": placement,
        "throughput_gain": round(gain, 3),
        "runs": result,
    }

    figure = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=["val/acc/mean@1", "completed tokens / s of rollout phase", "busy/idle, step 2", ""],
        specs=[[{}, {}], [{"colspan": 2}, None]],
    )
    for name, colour in (("sync", "#1f77b4"), ("april", "#d62728")):
        curve = result[name]["val_acc"]
        figure.add_trace(go.Scatter(x=[s for s, _ in curve], y=[a for _, a in curve], name=name, line_color=colour), 1, 1)
        per_step = result[name]["rollout_throughput_per_step"]
        figure.add_trace(
            go.Scatter(x=list(range(1, len(per_step) + 1)), y=per_step, name=name, line_color=colour, showlegend=False), 1, 2
        )
        for trace in timeline_traces(runs[name]["spans"], 2, name, "first" if name == "sync" else "second"):
            figure.add_trace(trace, 2, 1)
    figure.update_layout(barmode="overlay", height=700, title="APRIL vs synchronous GRPO on the built-in arith task")
    write_html(figure, RESULTS_DIR / "april.html")
    summary = (
        f"{args.steps} steps of {args.prompts}×{args.n}, N' = {over}, {placement.split(':')[0]}: rollout {result['sync']['rollout_tokens_per_s']:.0f} → "
        f"{result['april']['rollout_tokens_per_s']:.0f} completed tok/s ({gain:+.0%}); val acc "
        f"{result['sync']['val_acc_end']:.3f} (sync) vs {result['april']['val_acc_end']:.3f} (april)"
    )
    record(__spec__.name, metrics, summary)
    print(summary)


if __name__ == "__main__":
    main()
