"""What APRIL or async training would save a synchronous run, estimated from the run's own
telemetry: each step's busy/idle spans (how long generation and training took) and its
response-length percentiles (how long the tail is).

Pure functions: `step_times` folds a run's span events into per-step phase times,
`estimate_savings` turns those and the lengths into the estimate and the assumptions it
rests on (shown with the numbers on the run page). runs.api.dashboards serves it.

- **APRIL** (cut the tail): a synchronous step's rollout phase ends when its longest
  response does. APRIL over-samples and stops the phase once the batch's groups are done,
  aborting the rest (resumed next step). Stopping once `share` of the responses have
  finished ends the phase at that share's length: decoding one token at a time over a
  batch, the phase's time is taken as proportional to the longest response it waits
  for, so it takes gen × L_share / L_max instead of gen.
- **Async** (overlap, AReaL): generation of the next batch runs while the trainer trains
  on this one, so per step gen + train becomes max(gen, train): the step saves
  min(gen, train); the phases' own speed-up is (gen + train) / max(gen, train).
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rollyard.text import count

GENERATION_PHASES = ("generate", "verify")
TRAIN_PHASES = ("train",)
EVAL_PHASE = "eval"
TRAINER = "trainer"
# The length percentiles the engine reports (docs/metrics.md), by the share of responses
# finished at that length.
SHARE_METRICS: dict[float, str] = {
    0.5: "rollout/response_length/p50",
    0.9: "rollout/response_length/p90",
    0.99: "rollout/response_length/p99",
}
MAX_METRIC = "rollout/response_length/max"
DEFAULT_SHARE = 0.9


@dataclass(frozen=True)
class StepTimes:
    step: int
    step_s: float  # the step's wall time: its training step, evaluation after it left out
    gen_s: float  # the longest any worker spent generating and verifying
    train_s: float  # the trainer's training stages


def step_times(spans: Iterable[Mapping[str, Any]]) -> dict[int, StepTimes]:
    """Per step, from span events ({"step", "worker", "phase", "start", "end"}): the step's
    time (the trainer's spans, which tile the step, or the busiest worker's where there
    is no trainer), generation (the worker that generated longest) and training.

    A held-out evaluation reports under the step it follows, but it is no part of that
    step: the step's timeline closed before it began, so no worker's step spans cover
    it, and it is a lone `eval` span on whichever worker evaluated (the rollout worker
    when colocated, the trainer when split). Its spans are left out of every total, so
    the step's time is the step's own tiling whichever worker evaluated; the evaluation
    before the first step is then no step at all. In a synchronous run generation and
    training take turns inside the step, so gen_s + train_s <= step_s."""
    busy: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for span in spans:
        if span["phase"] != EVAL_PHASE:
            busy[span["step"]][span["worker"]][span["phase"]] += max(0.0, span["end"] - span["start"])
    times = {}
    for step, workers in busy.items():
        totals = {worker: sum(phases.values()) for worker, phases in workers.items()}
        step_s = totals.get(TRAINER, max(totals.values()))
        gen = max(sum(phases[p] for p in GENERATION_PHASES) for phases in workers.values())
        train = sum(phases[p] for phases in workers.values() for p in TRAIN_PHASES)
        times[step] = StepTimes(step=step, step_s=step_s, gen_s=gen, train_s=train)
    return times


def estimate_savings(
    times: Mapping[int, StepTimes], lengths: Mapping[int, Mapping[str, float]], share: float = DEFAULT_SHARE
) -> dict[str, Any]:
    """The estimate over the steps that have both span times and length percentiles.

    `lengths[step]` holds that step's metrics by name (SHARE_METRICS[share] and
    MAX_METRIC). Returns {"steps", "share", "measured": {step_s, gen_s, train_s},
    "april": {...}, "async": {...}, "assumptions": [...]}; each estimate gives the time
    it would take (`step_s`), what it saves (`saved_s`, `saved_fraction` of the measured
    time) and the speed-up. "steps" 0 means nothing to estimate from yet.
    """
    share_metric = SHARE_METRICS[share]
    used = sorted(step for step in times if share_metric in lengths.get(step, {}) and MAX_METRIC in lengths[step])
    total = sum(times[step].step_s for step in used)
    gen = sum(times[step].gen_s for step in used)
    train = sum(times[step].train_s for step in used)
    april_saved = 0.0
    overlap_saved = 0.0
    phases_overlapped = 0.0
    for step in used:
        t, longest = times[step], lengths[step][MAX_METRIC]
        cut = min(1.0, lengths[step][share_metric] / longest) if longest > 0 else 1.0
        april_saved += t.gen_s * (1.0 - cut)
        overlap_saved += min(t.gen_s, t.train_s)
        phases_overlapped += max(t.gen_s, t.train_s)

    def outcome(saved: float) -> dict[str, float | None]:
        return {
            "step_s": total - saved,
            "saved_s": saved,
            "saved_fraction": saved / total if total > 0 else None,
            "speedup": total / (total - saved) if total - saved > 0 else None,
        }

    percent = f"{share:.0%}"
    return {
        "steps": len(used),
        "share": share,
        "measured": {"step_s": total, "gen_s": gen, "train_s": train},
        "april": outcome(april_saved) | {"length_metric": share_metric},
        "async": outcome(overlap_saved)
        | {"phase_speedup": (gen + train) / phases_overlapped if phases_overlapped > 0 else None},
        "assumptions": [
            f"APRIL: each step's rollout phase stops once {percent} of its responses have finished, at the "
            f"{share_metric.rsplit('/', 1)[-1]} length; its time is taken as proportional to the longest response "
            "it waits for (gen × length at that share / max length).",
            "APRIL: the batch stays full (it over-samples); the cut tail's tokens, resumed next step, and the "
            "over-sampled prompts' extra generation are not counted.",
            "Async: generating the next batch overlaps training on this one, so generation plus training becomes "
            "the longer of the two each step; the weight push, waits and idle time stay as measured.",
            "Async: staleness (training on samples up to η policy versions old) may change what is learned; "
            "only time is estimated here.",
            f"From the {count(len(used), 'step')} with both busy/idle spans and length percentiles; evaluation is left out.",
        ],
    }
