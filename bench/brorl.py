"""BroRL on the built-in task: rollouts per prompt n ∈ {8, 32, 128, 512} at equal samples
per step, within one memory budget, same seeds.

Each run holds rollout.samples_per_step fixed (prompts_per_step = samples / n) and sets
rollout.memory_budget_mb, and runs in a fresh process so its peak memory is its own:
ru_maxrss less the resident memory once the recipe is built. Reported per n, mean and
standard error over the seeds: held-out accuracy after training on each --eval-splits
split (the same --eval-size prompts for every n and seed: the test split and the harder
held-out `hard` chains) and its gain over the same run's start, the filtered-group share
(groups all right or all wrong, which dynamic sampling would drop), the share of prompts
with at least one correct sample, peak memory growth, seconds per step. --samples must
be a multiple of every n (512: one prompt a step at n = 512).

    .venv/bin/python -m bench.brorl [--ns 8 32 128 512] [--samples 512] [--steps 8] [--eval-size 128]
        [--eval-splits test hard] [--seeds 0 1 2]

Writes bench/results/brorl.json, its line in docs/benchmarks.md, and bench/results/brorl.html.
"""

import argparse
import json
import subprocess
import sys

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.cures_dars import mean_se, write_html
from bench.record import RESULTS_DIR, record

ONE_RUN = """
import json, resource, statistics, sys
import psutil
from engine.evaluation import evaluate
from engine.recipes.sync import EVAL_SEED, SyncRecipe
from engine.spec import parse_spec

spec = parse_spec(json.loads(sys.argv[1]))
recipe = SyncRecipe(spec)
held_out = {split: recipe.task.problems(split, spec.dataset.eval_size, seed=EVAL_SEED) for split in sys.argv[2:]}
before = psutil.Process().memory_info().rss
def accuracies(step):
    return {
        split: evaluate(spec, recipe.collector, problems, step)[0].values["val/acc/mean@1"]
        for split, problems in held_out.items()
    }
start = accuracies(0)
steps = [recipe.step()[0].values for _ in range(spec.training.steps)]
end = accuracies(spec.training.steps)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({
    **{f"{split}_acc_start": start[split] for split in held_out},
    **{f"{split}_acc_end": end[split] for split in held_out},
    **{f"{split}_acc_gain": end[split] - start[split] for split in held_out},
    "grown_mib": grown / 2**20,
    "filtered_share": statistics.fmean(v["difficulty/frac_all_correct"] + v["difficulty/frac_all_wrong"] for v in steps),
    "with_correct_share": statistics.fmean(1 - v["difficulty/frac_all_wrong"] for v in steps),
    "seconds_per_step": statistics.fmean(v["timing_s/step"] for v in steps),
}))
"""

SYSTEMS = ["filtered_share", "with_correct_share", "grown_mib", "seconds_per_step"]


def reported(splits: list[str]) -> list[str]:
    """The per-run numbers summarised over seeds: each split's accuracy after training and
    its gain over the same seed's start (paired, so the seed's dice largely cancel), then
    the systems side."""
    return [f"{split}_acc_{what}" for split in splits for what in ("end", "gain")] + SYSTEMS


def one_run(n: int, args: argparse.Namespace, seed: int) -> dict:
    spec = {
        "dataset": {"name": "arith", "eval_size": args.eval_size},
        "rollout": {"samples_per_step": args.samples, "n": n, "max_new_tokens": 256, "memory_budget_mb": args.budget_mb},
        "training": {"steps": args.steps, "lr": 3e-4, "warmup_steps": 2, "eval_every": 0},
        "resources": {"executor": "inprocess", "cpus": args.cpus},
        "seed": seed,
    }
    done = subprocess.run(
        [sys.executable, "-c", ONE_RUN, json.dumps(spec), *args.eval_splits], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--budget-mb", type=int, default=128)
    parser.add_argument("--eval-size", type=int, default=128)
    parser.add_argument("--eval-splits", nargs="+", choices=["test", "hard"], default=["test", "hard"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cpus", type=int, default=1)
    args = parser.parse_args()

    runs: dict[int, list[dict]] = {n: [] for n in args.ns}
    for seed in args.seeds:
        for n in args.ns:
            runs[n].append(one_run(n, args, seed))
            print(f"seed {seed} n {n}: {runs[n][-1]}")
    names = reported(args.eval_splits)
    summary = {n: {name: mean_se([r[name] for r in runs[n]]) for name in names} for n in args.ns}
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for col, name in enumerate(names, start=1):
        figure.add_trace(
            go.Scatter(
                x=args.ns,
                y=[summary[n][name]["mean"] for n in args.ns],
                error_y={"array": [summary[n][name]["se"] for n in args.ns]},
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    figure.update_xaxes(type="log", title_text="n (rollouts per prompt)")
    figure.update_layout(
        title=f"BroRL: n at {args.samples} samples per step, {args.steps} steps, {args.budget_mb} MiB budget",
        height=380,
        width=260 * len(names),
    )
    write_html(figure, RESULTS_DIR / "brorl.html")
    record(
        __spec__.name,
        {"settings": vars(args), "summary": {str(n): s for n, s in summary.items()}, "runs": {str(n): r for n, r in runs.items()}},
        "; ".join(
            f"n {n}: "
            + "".join(
                f"{split} acc {s[f'{split}_acc_end']['mean']:.2f} ({s[f'{split}_acc_gain']['mean']:+.2f}), "
                for split in args.eval_splits
            )
            + f"filtered {s['filtered_share']['mean']:.2f}, "
            f"≥1 correct {s['with_correct_share']['mean']:.2f}, +{s['grown_mib']['mean']:.0f} MiB, "
            f"{s['seconds_per_step']['mean']:.1f} s/step"
            for n, s in summary.items()
        ),
    )


if __name__ == "__main__":
    main()
