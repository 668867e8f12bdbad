"""GPU utilisation and memory from NVML (engine.telemetry.NvmlSampler), sampled into each
step's metrics. On a machine without an NVIDIA GPU the sampler reports nothing, which the
run page shows as "no GPU on this run's nodes"."""

import pytest

from engine import telemetry


def test_without_nvidia_ml_py_the_sampler_reports_nothing(monkeypatch):
    monkeypatch.setattr(telemetry, "pynvml", None)
    assert telemetry.NvmlSampler().sample() == {}


@pytest.mark.gpu(reason="reads NVML of a real NVIDIA GPU (nvidia-ml-py installed)")
def test_the_sampler_reads_each_gpus_utilisation_and_memory():
    assert telemetry.pynvml is not None, "install nvidia-ml-py (the gpu extra)"
    values = telemetry.NvmlSampler().sample()
    count = telemetry.pynvml.nvmlDeviceGetCount()
    assert count >= 1
    assert set(values) == {f"gpu/{i}/{name}" for i in range(count)
                           for name in ("utilization", "memory_used_mb", "memory_total_mb")}
    for i in range(count):
        assert 0 <= values[f"gpu/{i}/utilization"] <= 100
        assert 0 < values[f"gpu/{i}/memory_used_mb"] <= values[f"gpu/{i}/memory_total_mb"]
