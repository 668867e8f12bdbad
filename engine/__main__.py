"""`python -m engine run SPEC.yaml`: run the engine alone, printing a line per step.

    python -m engine run engine/examples/arith-grpo.yaml
    python -m engine run spec.yaml --executor inprocess --steps 5
    python -m engine run spec.yaml --run-dir runs/a           # checkpoints; rerun to resume
    python -m engine run spec.yaml --run-dir runs/b --resume-from runs/a/checkpoints/step-000010
"""

import argparse
import sys
from pathlib import Path

from engine.events import Event
from engine.spec import SpecError, load_spec_file


class PrintSink:
    """Prints one progress line per step, when the step's heartbeat arrives: training
    reward, accuracy, response lengths and step time, plus held-out accuracy when the
    step ended with an evaluation (step 0 is the evaluation before training)."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self._train: dict[str, float] = {}
        self._val: float | None = None

    def emit(self, event: Event) -> None:
        if event.kind == "metrics":
            if "val/acc/mean@1" in event.values:
                self._val = event.values["val/acc/mean@1"]
            else:
                self._train = event.values
        elif event.kind == "heartbeat":
            self._print(self._progress_line(event.step))
            self._train, self._val = {}, None
        elif event.kind == "checkpoint":
            self._print(f"checkpoint: step {event.step} at {event.path}")
        elif event.kind in ("status", "log"):
            message = getattr(event, "message", "")
            self._print(f"{getattr(event, 'status', event.kind)}{': ' + message if message else ''}")

    def _progress_line(self, step: int) -> str:
        line = f"step {step:>5}"
        values = self._train
        if values:
            line += (
                f"  reward {values['reward/mean']:.3f}  acc {values['acc/mean']:.3f}  "
                f"len p50/p90/max {values['rollout/response_length/p50']:.0f}/"
                f"{values['rollout/response_length/p90']:.0f}/{values['rollout/response_length/max']:.0f}  "
                f"{values['timing_s/step']:.1f}s"
            )
        if self._val is not None:
            line += f"  val/acc/mean@1 {self._val:.3f}"
        return line

    def flush(self) -> None:
        self.out.flush()

    def publish(self, action, event):
        result = action()  # no platform: this process is the only driver
        self.emit(event)
        return result

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Rollyard's RL engine, without the platform")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a spec file (YAML or JSON)")
    run_parser.add_argument("spec", help="path of the spec file")
    run_parser.add_argument("--executor", choices=["ray", "inprocess"], help="override resources.executor")
    run_parser.add_argument("--steps", type=int, help="override training.steps")
    run_parser.add_argument(
        "--run-dir", type=Path, help="where checkpoints go; a run started again with it resumes from its latest"
    )
    run_parser.add_argument("--resume-from", type=Path, help="a checkpoint folder to continue from (a fork)")
    args = parser.parse_args(argv)

    from engine.checkpoint import read_info
    from engine.orchestration import run
    from engine.spec import parse_spec

    try:
        spec = load_spec_file(args.spec)
        overrides = {}
        if args.executor:
            overrides["resources"] = {**spec.resources.model_dump(), "executor": args.executor}
        if args.steps:
            overrides["training"] = {**spec.training.model_dump(), "steps": args.steps}
        spec = parse_spec({**spec.model_dump(), **overrides})
        if args.resume_from:
            read_info(args.resume_from)
    except (SpecError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 2
    outcome = run(spec, PrintSink(), run_dir=args.run_dir, resume_from=args.resume_from)
    return 0 if outcome == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
