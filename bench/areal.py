"""AReaL's asynchronous recipe against the synchronous GRPO baseline, in one program:
wall-clock time to a target held-out accuracy for η ∈ {0, 1, 2, 4}, with and without the
decoupled loss, and the speed-up's ratio to this machine's overlap limit.

The baseline is the sync recipe on `--cpus` cores in process (default 1: generation and
training take turns on one core). Each async run places one rollout worker and the
trainer apart with one core each (`--executor ray`: two Ray actors of one CPU;
`inprocess`: two threads with one torch thread each, sharing Python's GIL). One core for
the baseline is what the overlap limit assumes (each phase as fast as in the sync run),
and on a 2-core machine shared with other work two torch threads were up to ten times
slower than one (OpenMP threads waiting on each other). Everything else is the same spec
and seed.

A "sync split" run is the sync recipe on those same two actors (the trainer waits while
the worker generates): what placement alone changes, without overlap.

- Time to target: the training seconds (sum of `timing_s/step`, evaluations left out)
  until the first evaluation at or above the target; the target defaults to the sync
  run's start accuracy plus 90% of its gain.
- Overlap limit: (generation time + training time) / max of the two, from the sync run's
  spans (rollout-0's generate and verify, the trainer's train): the most that running
  them side by side can save. The ratio reported is (sync seconds per step / async
  seconds per step) / limit, and the same for time to target.

    .venv/bin/python -m bench.areal [--steps 12] [--etas 0 1 2 4] [--executor ray]

Writes bench/results/areal.json (and its line in docs/benchmarks.md) and
bench/results/areal.html: accuracy against training seconds, seconds per step, and the
busy/idle timeline of one step of the sync run beside one of an async run.
"""

import argparse

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.april import RESULTS_DIR, add_baseline_arguments, baseline_spec, run_spec, timeline_traces, write_html
from bench.record import record


def overlap_limit(spans) -> tuple[float, float, float]:
    """(generation s, training s, limit) of a sync run, summed over its training steps."""
    generation = sum(s.end - s.start for s in spans if s.worker == "rollout-0" and s.phase in ("generate", "verify"))
    training = sum(s.end - s.start for s in spans if s.worker == "trainer" and s.phase == "train")
    return generation, training, (generation + training) / max(generation, training, 1e-9)


def time_to(target: float, outcome: dict) -> float | None:
    """Training seconds until the first evaluation at or above `target` (None: never)."""
    elapsed = {0: 0.0}
    for step, values in enumerate(outcome["steps"], start=1):
        elapsed[step] = elapsed[step - 1] + values["timing_s/step"]
    return next((round(elapsed[step], 2) for step, acc in outcome["val"] if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_baseline_arguments(parser, eval_every=3)
    parser.add_argument("--etas", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--executor", choices=["ray", "inprocess"], default="ray")
    args = parser.parse_args()

    base = baseline_spec(args)
    apart = {"executor": args.executor, "cpus": 1, "rollout_workers": 1, "rollout_cpus": 1}
    # The sync recipe split across the same two actors: each phase on its own core, no overlap.
    runs = {"sync": run_spec(base), "sync split": run_spec(base | {"resources": apart})}
    for eta in args.etas:
        for loss in ("decoupled_ppo", "ppo"):
            if eta == 0 and loss == "ppo":
                continue  # at η = 0 π_prox = π_behav: the two losses are one
            runs[f"async η={eta} {loss}"] = run_spec(
                base
                | {
                    "algorithm": {"name": "grpo", "policy_loss": loss},
                    "orchestration": {"mode": "async", "max_staleness": eta},
                    "resources": apart,
                }
            )
            print(f"{eta} {loss}: {runs[f'async η={eta} {loss}']['seconds']:.0f} s")

    sync = runs["sync"]
    generation, training, limit = overlap_limit([s for s in sync["spans"] if s.step > 0])
    start, end = sync["val"][0][1], sync["val"][-1][1]
    target = args.target if args.target is not None else round(start + 0.9 * (end - start), 4)
    sync_per_step = sum(v["timing_s/step"] for v in sync["steps"]) / len(sync["steps"])
    sync_to_target = time_to(target, sync)
    result = {}
    for name, outcome in runs.items():
        steps = outcome["steps"]
        per_step = sum(v["timing_s/step"] for v in steps) / len(steps)
        to_target = time_to(target, outcome)
        entry = {
            "seconds_per_step": round(per_step, 3),
            "speedup_per_step": round(sync_per_step / per_step, 3),
            "ratio_to_overlap_limit": round(sync_per_step / per_step / limit, 3),
            "seconds_to_target": to_target,
            "speedup_to_target": round(sync_to_target / to_target, 3) if to_target and sync_to_target else None,
            "val_acc": outcome["val"],
            "val_acc_end": outcome["val"][-1][1],
            "total_s": round(outcome["seconds"], 1),
        }
        if name.startswith("async"):
            entry |= {
                "staleness_mean": round(sum(v["off_policy/staleness/mean"] for v in steps) / len(steps), 3),
                "trainer_wait_s": round(sum(v.get("timing_s/wait", 0.0) for v in steps), 2),
                "worker_sync_s_mean": round(sum(v["timing_s/worker_sync"] for v in steps) / len(steps), 4),
                "partial_ratio_mean": round(sum(v["rollout/partial_ratio"] for v in steps) / len(steps), 3),
            }
        result[name] = entry
    metrics = {
        "steps": args.steps,
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "executor": args.executor,
        "placement": f"sync: {args.cpus} core(s) in one process; sync split and async: trainer 1 core, rollout worker 1 core",
        "seed": args.seed,
        "target": target,
        "sync_generation_s": round(generation, 2),
        "sync_training_s": round(training, 2),
        "overlap_limit": round(limit, 3),
        "runs": result,
    }

    figure = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=["val/acc/mean@1 against training seconds", "seconds per step", "busy/idle, step 3", ""],
        specs=[[{}, {}], [{"colspan": 2}, None]],
    )
    for name, outcome in runs.items():
        elapsed, total = [0.0], 0.0
        for values in outcome["steps"]:
            total += values["timing_s/step"]
            elapsed.append(total)
        figure.add_trace(go.Scatter(x=[elapsed[s] for s, _ in outcome["val"]], y=[a for _, a in outcome["val"]], name=name), 1, 1)
        figure.add_trace(go.Bar(x=[name], y=[result[name]["seconds_per_step"]], showlegend=False), 1, 2)
    shown = next((name for name in runs if name.startswith("async η=2")), list(runs)[-1])
    for name, tag in (("sync", "first"), (shown, "second")):
        for trace in timeline_traces(runs[name]["spans"], 3, name, tag):
            figure.add_trace(trace, 2, 1)
    figure.update_layout(barmode="overlay", height=760, title="AReaL (async) vs synchronous GRPO on the built-in arith task")
    write_html(figure, RESULTS_DIR / "areal.html")

    best = max((n for n in result if n.startswith("async")), key=lambda n: result[n]["speedup_per_step"])
    summary = (
        f"{args.steps} steps of {args.prompts}×{args.n}; overlap limit {limit:.2f}×; best {best}: "
        f"{result[best]['speedup_per_step']:.2f}× per step ({result[best]['ratio_to_overlap_limit']:.0%} of the limit), "
        f"val acc {result[best]['val_acc_end']:.3f} vs sync {result['sync']['val_acc_end']:.3f}; "
        + ", ".join(f"{n}: {r['speedup_per_step']:.2f}×" for n, r in result.items() if n != "sync")
    )
    record(__spec__.name, metrics, summary)
    print(summary)


if __name__ == "__main__":
    main()
