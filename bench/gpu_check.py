"""GPU checks: on a machine with NVIDIA GPUs, a short run of the built-in model through each
backend path on the GPU, and the rollout benchmark; prints the card and a table, and
records bench/results/gpu_check.json. Without an NVIDIA GPU it says so and exits 2,
having run nothing.

    bin/gpu-check [--requests 256] [--only vllm_run,rollout]
    .venv-gpu/bin/python -m bench.gpu_check ...        (the same, in an environment with the `gpu` extra)

Checks, each in a process of its own (vLLM sets up torch.distributed in its process, and
DeepSpeed then finds a process group it did not create; a second in-process vLLM engine
ends the first one's parallel state):

- torch_run: a GRPO run of `builtin:arith-tiny` on cuda, torch generation and training;
  the baseline the others are compared with.
- vllm_run: the same run in bfloat16, generation by upstream vLLM on the GPU (weights
  pushed in place after every step).
- deepspeed_run: the same run, training by DeepSpeed ZeRO-2 in bfloat16 (NCCL).
- vllm_deepspeed_run: both.
- smollm2_vllm_run: vllm_run on SmolLM2-135M-Instruct (`python -m engine.smollm2 FOLDER`
  builds the folder offline), when --smollm2 names a folder with a config.json.
- rollout: bench.vllm_generation's comparison (vLLM, TorchBackend, transformers'
  generate() at several batch sizes) on the long-tailed workload, tokens/s/GPU as NeMo-RL
  defines it (generated tokens per second over the GPUs generating: one).

A run check passes when the run ends `succeeded` with every step's gradient norm finite;
its row gives the wall seconds, the mean step seconds and `perf/tokens_per_sec_per_gpu`.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.record import record

NO_GPU_EXIT = 2
RESULT_PREFIX = "GPU_CHECK_RESULT "
CHECK_TIMEOUT_S = 900

RUN = {
    "dataset": {"eval_size": 8},
    "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 32},
    "training": {"steps": 2, "eval_every": 0},
    "resources": {"executor": "inprocess", "gpus": 1},
}
# check → (backends, model dtype). vLLM in bfloat16: FlashAttention, its usual CUDA
# attention backend, takes half precision only (float32 needs a Triton or Flex backend).
RUN_CHECKS = {
    "torch_run": ({}, "float32"),
    "vllm_run": ({"generation": "vllm", "kv_cache_gb": 2}, "bfloat16"),
    "deepspeed_run": ({"training": "deepspeed", "zero_stage": 2}, "bfloat16"),
    "vllm_deepspeed_run": ({"generation": "vllm", "kv_cache_gb": 2, "training": "deepspeed", "zero_stage": 2}, "bfloat16"),
    "smollm2_vllm_run": ({"generation": "vllm", "kv_cache_gb": 2}, "bfloat16"),
}
CHECKS = [*RUN_CHECKS, "rollout"]


def missing_gpu() -> str | None:
    """Why there is no NVIDIA GPU to check here, or None when there is one."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi is not on PATH (no NVIDIA driver)"
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if listed.returncode != 0 or "GPU" not in listed.stdout:
        return f"nvidia-smi lists no GPU ({(listed.stderr or listed.stdout).strip()[:200]})"
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda or 'none, a CPU wheel'})"
    return None


def card() -> dict:
    """The GPUs as nvidia-smi and torch name them."""
    import torch

    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    rows = [line.strip() for line in subprocess.run(query, capture_output=True, text=True).stdout.splitlines() if line.strip()]
    return {
        "nvidia_smi": rows,
        "torch_name": torch.cuda.get_device_name(0),
        "count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def run_check(name: str, smollm2: str | None = None, device: str = "cuda") -> dict:
    """One short run on `device` with the check's backends (module docstring)."""
    from engine.events import ListSink
    from engine.orchestration import run
    from engine.spec import parse_spec

    backends, dtype = RUN_CHECKS[name]
    model = {"path": smollm2 if name.startswith("smollm2") else "builtin:arith-tiny", "device": device, "dtype": dtype}
    spec = parse_spec({**RUN, "model": model, "backends": backends})
    sink = ListSink()
    started = time.perf_counter()
    status = run(spec, sink)
    seconds = time.perf_counter() - started
    steps = [m.values for m in sink.of_kind("metrics") if "actor/grad_norm" in m.values]
    passed = status == "succeeded" and len(steps) == spec.training.steps
    passed = passed and all(math.isfinite(values["actor/grad_norm"]) for values in steps)
    return {
        "passed": passed,
        "status": status,
        "seconds": round(seconds, 1),
        "step_s": round(sum(values["timing_s/step"] for values in steps) / max(1, len(steps)), 3),
        "tokens_per_sec_per_gpu": round(steps[-1]["perf/tokens_per_sec_per_gpu"], 1) if steps else None,
        "backends": spec.backends.model_dump(exclude_none=True),
        "dtype": dtype,
        "device": device,
    }


def rollout_check(requests: int) -> dict:
    """The rollout benchmark's model in bfloat16, for the reason vllm_run is."""
    import torch

    from bench.vllm_generation import measure

    started = time.perf_counter()
    results, summary = measure(requests=requests, dtype=torch.bfloat16)
    best = max(value["tokens_per_s"] for key, value in results.items() if key.startswith("generate_rows_"))
    return {
        "passed": True,
        "seconds": round(time.perf_counter() - started, 1),
        "tokens_per_sec_per_gpu": results["vllm"].get("tokens_per_s_per_gpu"),  # set on a GPU only
        "torch_backend_tokens_per_s": results["torch_backend"]["tokens_per_s"],
        "generate_best_tokens_per_s": best,
        "results": results,
        "summary": summary,
    }


def one_check(name: str, requests: int = 256, smollm2: str | None = None) -> dict:
    """Run check `name` in a child process; its result, or why it failed."""
    argv = [sys.executable, "-m", "bench.gpu_check", "--check", name, "--requests", str(requests)]
    if smollm2:
        argv += ["--smollm2", smollm2]
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"passed": False, "seconds": CHECK_TIMEOUT_S, "error": f"did not finish within {CHECK_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"passed": False, "seconds": round(time.perf_counter() - started, 1), "error": tail[0][:300]}
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def table(rows: dict[str, dict]) -> str:
    lines = [f"{'check':<20} {'result':<8} {'seconds':>8} {'step s':>8} {'tok/s/GPU':>10}  note"]
    for name, row in rows.items():
        result = "skipped" if row.get("skipped") else "pass" if row["passed"] else "FAIL"
        note = row.get("error") or row.get("skipped") or row.get("summary") or ""
        cells = [row.get("seconds"), row.get("step_s"), row.get("tokens_per_sec_per_gpu")]
        seconds, step_s, throughput = ("" if value is None else str(value) for value in cells)
        lines.append(f"{name:<20} {result:<8} {seconds:>8} {step_s:>8} {throughput:>10}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated checks (default all): {', '.join(CHECKS)}")
    parser.add_argument("--requests", type=int, default=256, help="rollout benchmark requests")
    parser.add_argument("--smollm2", help="a SmolLM2 folder (python -m engine.smollm2 FOLDER) for smollm2_vllm_run")
    parser.add_argument("--check", choices=CHECKS, help=argparse.SUPPRESS)  # one check, in this process
    args = parser.parse_args(argv)

    if reason := missing_gpu():
        print(f"bench.gpu_check: no NVIDIA GPU on this machine: {reason}. Nothing was run; "
              "run it on a machine with one (see README, 'Adding GPU nodes').", file=sys.stderr)  # fmt: skip
        return NO_GPU_EXIT
    if args.check:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        result = rollout_check(args.requests) if args.check == "rollout" else run_check(args.check, args.smollm2)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    names = args.only.split(",") if args.only else CHECKS
    if unknown := [name for name in names if name not in CHECKS]:
        parser.error(f"--only: unknown checks {unknown}; choose among {CHECKS}")
    gpus = card()
    print(f"GPU: {gpus['torch_name']} ×{gpus['count']} (torch {gpus['torch']}, CUDA {gpus['cuda']})")
    for row in gpus["nvidia_smi"]:
        print(f"  nvidia-smi: {row}")
    rows: dict[str, dict] = {}
    for name in names:
        if name.startswith("smollm2") and not (args.smollm2 and (Path(args.smollm2) / "config.json").is_file()):
            rows[name] = {"passed": False, "skipped": "no --smollm2 folder (python -m engine.smollm2 FOLDER builds it)"}
            continue
        rows[name] = one_check(name, args.requests, args.smollm2)
        print(f"{name}: {'pass' if rows[name]['passed'] else 'FAIL'} in {rows[name]['seconds']} s", flush=True)
    print(table(rows))

    ran = {name: row for name, row in rows.items() if not row.get("skipped")}
    passed = sum(row["passed"] for row in ran.values())
    summary = f"{gpus['torch_name']}: {passed}/{len(ran)} checks passed; " + ", ".join(
        f"{name} {row.get('tokens_per_sec_per_gpu')} tok/s/GPU" for name, row in ran.items() if row["passed"]
    )
    record("bench.gpu_check", {"card": gpus, "checks": rows}, summary)
    return 0 if passed == len(ran) else 1


if __name__ == "__main__":
    sys.exit(main())
