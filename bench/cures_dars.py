"""CurES, DARS and DARS-B against uniform GRPO on the built-in task, in one program, same seeds.

Every variant trains with GRPO's loss (the sampling is what differs) from the same seed,
prompts pool, learning rate and held-out prompts:

    grpo     uniform passes, prompts_per_step × n rollouts
    cures    chunks of --chunk-prompts pre-rolled 4× each, the same rollout budget per step
             shared by gradient spread (zero-spread prompts pruned)
    dars     DARS ET (std schedule, matching GRPO's advantages), 2 PPO mini-batches
    dars_b   DARS-B: twice the prompts per step, one full batch, 2 epochs

Held-out: --eval-size prompts of the --eval-split (default `hard`: held-out chains of 9
to 12 operations, where pass@16 is not at its ceiling as it is on the test split) × 16
samples, before training and every --eval-every steps (0: before and after only), giving
val/acc/mean@1 and pass@1, 4, 16. Tokens count every generated token, CurES's
pre-rollouts included. Per variant: mean and standard error over the seeds of the final
accuracy and pass@k, tokens to reach GRPO's final accuracy (linear between evaluations;
None when never reached), token entropy over the last half of training.

    .venv/bin/python -m bench.cures_dars [--steps 8] [--seeds 0 1 2] [--eval-size 32] [--eval-split hard]

Writes bench/results/cures_dars.json, its line in docs/benchmarks.md, and
bench/results/cures_dars.html (plotly.js from the installed package).
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.record import RESULTS_DIR, record
from engine.events import ListSink
from engine.orchestration import run
from engine.spec import RunSpec, parse_spec

PASS_K = [1, 4, 16]
VARIANTS = ["grpo", "cures", "dars", "dars_b"]


def variant_spec(name: str, args: argparse.Namespace, seed: int) -> RunSpec:
    prompts, training = args.prompts, {"mini_batches": 1, "epochs": 1}
    curriculum: dict = {"strategy": "uniform"}
    if name == "cures":
        curriculum = {"strategy": "cures", "chunk_prompts": args.chunk_prompts, "chunk_steps": args.steps // 2}
    elif name == "dars":
        curriculum = {"strategy": "dars", "schedule_std": True}
        training = {"mini_batches": 2, "epochs": 1}
    elif name == "dars_b":
        curriculum = {"strategy": "dars", "schedule_std": True}
        prompts, training = 2 * args.prompts, {"mini_batches": 1, "epochs": 2}
    return parse_spec(
        {
            "name": f"bench: {name}",
            "dataset": {"name": "arith", "eval_size": args.eval_size},
            "curriculum": curriculum,
            "rollout": {"prompts_per_step": prompts, "n": args.n, "max_new_tokens": 256},
            "training": {
                "steps": args.steps,
                "lr": 3e-4,
                "warmup_steps": 5,
                "eval_every": args.eval_every,
                "eval_split": args.eval_split,
                "eval_samples": max(PASS_K),
                "eval_pass_k": PASS_K,
                **training,
            },
            "resources": {"executor": "inprocess", "cpus": args.cpus},
            "seed": seed,
        }
    )


def run_variant(spec: RunSpec) -> dict:
    sink = ListSink()
    started = time.monotonic()
    assert run(spec, sink) == "succeeded"
    metrics = sink.of_kind("metrics")
    train = {m.step: m.values for m in metrics if "actor/pg_loss" in m.values}
    tokens_by_step, total = {0: 0.0}, 0.0
    for step in sorted(train):
        total += train[step]["perf/generated_tokens"] + train[step].get("cures/pre_rollout_tokens", 0.0)
        tokens_by_step[step] = total
    evals = [m for m in metrics if "val/acc/mean@1" in m.values]
    late = [train[s]["actor/entropy"] for s in sorted(train) if s > spec.training.steps // 2]
    return {
        "curve": [{"step": m.step, "tokens": tokens_by_step[m.step], "acc": m.values["val/acc/mean@1"]} for m in evals],
        "final": {f"pass@{k}": evals[-1].values[f"val/pass@{k}"] for k in PASS_K} | {"acc": evals[-1].values["val/acc/mean@1"]},
        "tokens": total,
        "entropy_late": statistics.fmean(late),
        "seconds": round(time.monotonic() - started, 1),
    }


def tokens_to_reach(curve: list[dict], target: float) -> float | None:
    """Generated tokens at which the held-out curve first reaches `target` (linear between points)."""
    for before, after in zip(curve, curve[1:]):
        if after["acc"] >= target:
            if after["acc"] == before["acc"]:
                return after["tokens"]
            share = max(0.0, (target - before["acc"]) / (after["acc"] - before["acc"]))
            return before["tokens"] + share * (after["tokens"] - before["tokens"])
    return None


def write_html(figure: go.Figure, path: Path) -> None:
    """The figure as HTML loading plotly.js from the installed package (no copy, no CDN)."""
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    figure.write_html(path, include_plotlyjs=os.path.relpath(plotly_js, path.parent))


def mean_se(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": round(mean, 4), "se": round(se, 4)}


def write_figure(runs: dict[str, list[dict]], path, split: str) -> None:
    figure = make_subplots(rows=1, cols=2, subplot_titles=["val/acc/mean@1 vs generated tokens", "final pass@k"])
    colours = plotly.colors.qualitative.Plotly
    for index, (name, seeds) in enumerate(runs.items()):
        style = {"legendgroup": name, "line": {"color": colours[index]}, "marker": {"color": colours[index]}}
        for number, result in enumerate(seeds):
            points = result["curve"]
            figure.add_trace(
                go.Scatter(x=[p["tokens"] for p in points], y=[p["acc"] for p in points], name=name,
                           showlegend=number == 0, **style),
                row=1, col=1,
            )  # fmt: skip
        means = [statistics.fmean(r["final"][f"pass@{k}"] for r in seeds) for k in PASS_K]
        figure.add_trace(go.Bar(x=[f"pass@{k}" for k in PASS_K], y=means, name=name, showlegend=False, **{"marker": style["marker"]}), row=1, col=2)
    figure.update_layout(title=f"CurES, DARS, DARS-B vs GRPO (built-in arith task, held-out {split} split, one line per seed)", height=420, barmode="group")
    write_html(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--chunk-prompts", type=int, default=24)
    parser.add_argument("--eval-size", type=int, default=32)
    parser.add_argument("--eval-split", choices=["test", "hard"], default="hard")
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cpus", type=int, default=1)
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name in VARIANTS:
            result = run_variant(variant_spec(name, args, seed))
            runs[name].append(result)
            print(f"seed {seed} {name:>7}: acc {result['final']['acc']:.3f}, tokens {result['tokens']:.0f}, {result['seconds']} s")
    summary = {}
    for name, seeds in runs.items():
        reach = [tokens_to_reach(r["curve"], base["final"]["acc"]) for r, base in zip(seeds, runs["grpo"])]
        summary[name] = {
            "acc": mean_se([r["final"]["acc"] for r in seeds]),
            **{f"pass@{k}": mean_se([r["final"][f"pass@{k}"] for r in seeds]) for k in PASS_K},
            "tokens": mean_se([r["tokens"] for r in seeds]),
            "tokens_to_grpo_final": reach,
            "entropy_late": mean_se([r["entropy_late"] for r in seeds]),
        }
    write_figure(runs, RESULTS_DIR / "cures_dars.html", args.eval_split)
    settings = {key: value for key, value in vars(args).items()}
    record(
        __spec__.name,
        {"settings": settings, "summary": summary, "runs": runs},
        "; ".join(
            f"{name} acc {s['acc']['mean']:.2f}±{s['acc']['se']:.2f}, pass@4 {s['pass@4']['mean']:.2f}, "
            f"pass@16 {s['pass@16']['mean']:.2f}, "
            f"{s['tokens']['mean'] / 1000:.0f}k tokens"
            for name, s in summary.items()
        ),
    )
    for name, s in summary.items():
        print(name, s)


if __name__ == "__main__":
    main()
