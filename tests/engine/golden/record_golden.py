"""Record what the engine reports for a few fixed specs, as the reshape's golden file.

    .venv/bin/python tests/engine/golden/record_golden.py            # every case
    .venv/bin/python tests/engine/golden/record_golden.py dapo gspo  # only these cases

Each case runs `engine.orchestration.run` in process for 3 steps at a fixed seed and
keeps every metric (timings and throughputs left out: they differ between any two runs),
every length histogram and every per-prompt result, evaluations included. The specs are
stored in the file beside the events, so tests/engine/test_golden_replay.py replays
exactly what was recorded. Regenerate a case only when a deliberate change alters its
values, and say why in the commit.
"""

import json
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("reshape.json")

BASE = {
    "dataset": {"eval_size": 8},
    "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 64},
    "training": {"steps": 3, "eval_every": 3, "warmup_steps": 2, "lr": 1e-3},
    "resources": {"executor": "inprocess", "cpus": 1},
    "seed": 7,
}

CASES = {
    "grpo": {"algorithm": {"name": "grpo"}},
    "dr_grpo": {"algorithm": {"name": "dr_grpo"}},
    "dapo": {"algorithm": {"name": "dapo", "dynamic_sampling": True}},
    "gspo": {"algorithm": {"name": "gspo"}, "training": {**BASE["training"], "mini_batches": 4}},
    "rloo": {"algorithm": {"name": "rloo"}},
    "easy_to_hard": {"curriculum": {"strategy": "easy_to_hard", "start_quantile": 0.3, "ramp_steps": 2}},
}


def measures_time(name: str) -> bool:
    """Timings, idle ratios and throughputs differ between any two runs; token counts do not."""
    return (
        name.startswith("timing_s/")
        or name.endswith("idle_ratio")
        or (name.startswith("perf/") and not name.endswith("_tokens"))
    )


def case_spec(name: str) -> dict:
    return {**BASE, **CASES[name]}


def record(spec: dict) -> list[dict]:
    """The untimed record of one run of `spec`: metrics, histograms, prompt results."""
    from engine.events import ListSink
    from engine.orchestration import run
    from engine.spec import parse_spec

    sink = ListSink()
    run(parse_spec(spec), sink)
    kept = []
    for event in sink.events:
        if event.kind == "metrics":
            values = {key: value for key, value in event.values.items() if not measures_time(key)}
            kept.append({"kind": "metrics", "step": event.step, "values": values})
        elif event.kind in ("length_histogram", "prompt_results"):
            kept.append(event.model_dump(mode="json", exclude={"wall_time"}))
    return kept


def main(names: list[str]) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"cases": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for name in names or list(CASES):
        spec = case_spec(name)
        golden["cases"][name] = {"spec": spec, "recorded_at": commit, "events": record(spec)}
        print(f"{name}: {len(golden['cases'][name]['events'])} events", file=sys.stderr)
    golden["command"] = "python tests/engine/golden/record_golden.py [case ...]"
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    main(sys.argv[1:])
