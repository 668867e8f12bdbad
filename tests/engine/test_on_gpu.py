"""The same trainer on a CUDA device. No GPU here: these run where one is lent."""

import pytest

from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec

pytestmark = pytest.mark.gpu(reason="trains the built-in model on a CUDA device")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_grpo_run_trains_on_cuda(dtype):
    spec = parse_spec({
        "model": {"path": "builtin:arith-tiny", "device": "cuda", "dtype": dtype},
        "dataset": {"eval_size": 32},
        "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 64},
        "training": {"steps": 2, "eval_every": 0},
        "resources": {"executor": "inprocess", "gpus": 1},
    })
    sink = ListSink()

    assert run(spec, sink) == "succeeded"

    assert all(span.worker.endswith(":cuda") for span in sink.of_kind("span"))
    step_metrics = [m.values for m in sink.of_kind("metrics") if "actor/grad_norm" in m.values]
    assert len(step_metrics) == 2 and all(values["actor/grad_norm"] >= 0 for values in step_metrics)
