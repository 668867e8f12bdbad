"""Record a benchmark's latest result: bench/results/NAME.json and its line in docs/benchmarks.md."""

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOC = REPO_ROOT / "docs" / "benchmarks.md"
TABLE_HEADER = "| benchmark | date | machine | command | result |\n| --- | --- | --- | --- | --- |\n"


def machine() -> str:
    """Where the numbers came from: CPU model and count, or the GPU when one is used."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} ×{torch.cuda.device_count()}"
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in model.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, CPU only"


def record(module: str, metrics: dict, summary: str) -> dict:
    """Write the result of `python -m bench.<module>` to bench/results/<module>.json and
    replace its line in docs/benchmarks.md."""
    name = module.rsplit(".", 1)[-1]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join([".venv/bin/python -m", module, *sys.argv[1:]]),
        "metrics": metrics,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")

    line = f"| {name} | {result['date'][:10]} | {result['machine']} | `{result['command']}` | {summary} |"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n" + TABLE_HEADER
    lines = [existing for existing in text.splitlines() if not existing.startswith(f"| {name} |")]
    at = max(i for i, existing in enumerate(lines) if existing.startswith("| ")) + 1
    lines.insert(at, line)
    DOC.write_text("\n".join(lines) + "\n")
    return result
