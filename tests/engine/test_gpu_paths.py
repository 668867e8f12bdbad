"""bench.gpu_check's paths. On a machine with an NVIDIA GPU (tests marked `gpu`): a short
run of the built-in model on cuda through each backend path (torch; vLLM generation;
DeepSpeed ZeRO-2 in bf16; both), each in a process of its own as the script runs them,
and the rollout benchmark. Everywhere: the script refuses to run without a GPU, saying
why, and its run check measures a real run (here on the CPU)."""

import importlib.util

import pytest

from bench import gpu_check


def has(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


@pytest.mark.gpu(reason="runs the built-in model on cuda through each backend path")
@pytest.mark.parametrize("name, needs", [
    ("torch_run", ()),
    ("vllm_run", ("vllm",)),
    ("deepspeed_run", ("deepspeed",)),
    ("vllm_deepspeed_run", ("vllm", "deepspeed")),
])  # fmt: skip
def test_each_backend_path_trains_on_the_gpu(name, needs):
    if not has(*needs):
        pytest.skip(f"needs {', '.join(needs)}: the `gpu` extra (bin/gpu-check builds .venv-gpu)")
    result = gpu_check.one_check(name)
    assert result["passed"], result
    assert result["status"] == "succeeded" and result["tokens_per_sec_per_gpu"] > 0


@pytest.mark.gpu(reason="the rollout benchmark on the GPU: vLLM, TorchBackend and generate() on one workload")
@pytest.mark.skipif(not has("vllm"), reason="needs vllm: the `gpu` extra")
def test_the_rollout_benchmark_runs_on_the_gpu():
    result = gpu_check.one_check("rollout", requests=64)
    assert result["passed"], result
    assert result["tokens_per_sec_per_gpu"] > 0 and result["results"]["card"]["name"] != "cpu"


def test_without_a_gpu_the_script_says_so_and_runs_nothing(capsys, tmp_path, monkeypatch):
    if gpu_check.missing_gpu() is None:
        pytest.skip("an NVIDIA GPU is visible here: the script runs its checks")
    monkeypatch.setattr("bench.record.RESULTS_DIR", tmp_path)

    assert gpu_check.main([]) == gpu_check.NO_GPU_EXIT

    assert "no NVIDIA GPU on this machine" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_run_check_reports_a_real_run():
    result = gpu_check.run_check("torch_run", device="cpu")

    assert result["passed"] and result["status"] == "succeeded"
    assert result["step_s"] > 0 and result["tokens_per_sec_per_gpu"] > 0
    row = gpu_check.table({"torch_run": result, "smollm2_vllm_run": {"passed": False, "skipped": "no folder"}})
    assert row.splitlines()[1].split()[:2] == ["torch_run", "pass"] and "skipped" in row.splitlines()[2]
