"""How long the demo run (the default spec, on local Ray) takes to show learning.

"Shows learning" = the first evaluation whose held-out accuracy beats the step-0
evaluation by more than 3 standard errors of the difference of two proportions
(sqrt(2·p·(1−p)/n) with p the start accuracy and n the evaluation prompts).

    .venv/bin/python -m bench.demo_learning
"""

import math
import time

from bench.record import record
from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec


class TimedSink(ListSink):
    """Remembers when (seconds since launch) each evaluation arrived."""

    def __init__(self, started: float):
        super().__init__()
        self.started = started
        self.evaluations: list[tuple[int, float, float]] = []  # (step, seconds, accuracy)

    def emit(self, event) -> None:
        super().emit(event)
        if event.kind == "metrics" and "val/acc/mean@1" in event.values:
            self.evaluations.append((event.step, time.monotonic() - self.started, event.values["val/acc/mean@1"]))


def main() -> None:
    spec = parse_spec({"name": "bench: demo"})
    started = time.monotonic()
    sink = TimedSink(started)
    outcome = run(spec, sink)
    total_s = time.monotonic() - started
    assert outcome == "succeeded", outcome

    _, _, start_acc = sink.evaluations[0]
    n = spec.dataset.eval_size
    margin = 3 * math.sqrt(2 * max(start_acc * (1 - start_acc), 1 / n) / n)
    shown = next(((step, s, acc) for step, s, acc in sink.evaluations[1:] if acc > start_acc + margin), None)
    steps = [heartbeat for heartbeat in sink.of_kind("heartbeat") if heartbeat.step > 0]
    metrics = {
        "steps": len(steps),
        "total_s": round(total_s, 1),
        "seconds_per_step": round(total_s / max(1, len(steps)), 2),
        "val_acc_start": start_acc,
        "val_acc_end": sink.evaluations[-1][2],
        "required_margin": round(margin, 3),
        "learning_shown_at_step": shown[0] if shown else None,
        "learning_shown_after_s": round(shown[1], 1) if shown else None,
        "evaluations": [{"step": st, "s": round(s, 1), "acc": a} for st, s, a in sink.evaluations],
    }
    summary = (
        f"val acc {start_acc:.2f} → {metrics['val_acc_end']:.2f} in {len(steps)} steps, {total_s:.0f} s; "
        + (f"learning shown (> +{margin:.2f}) at step {shown[0]}, {shown[1]:.0f} s after launch" if shown
           else "learning NOT shown")
    )
    record(__spec__.name, metrics, summary)
    print(f"{'step':>6} {'seconds':>8} {'val acc':>8}")
    for step, s, acc in sink.evaluations:
        print(f"{step:>6} {s:>8.1f} {acc:>8.3f}")
    print(summary)


if __name__ == "__main__":
    main()
