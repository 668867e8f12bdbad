"""The accelerators tab's GPU charts (NVML metrics, engine.telemetry.NvmlSampler) fed by
recorded events through the normal event path, and "no GPU on this run's nodes" otherwise."""

import json
import re

import pytest

from engine.events import Metrics
from runs.models import RunStatus
from runs.views import resolve_names

pytestmark = pytest.mark.django_db


def config_of(page: str) -> dict:
    return json.loads(re.search(r'<script id="run-config" type="application/json">(.*?)</script>', page, re.S).group(1))


def test_recorded_gpu_metrics_show_the_gpu_charts_with_one_line_per_gpu(teams, make_run, record, client):
    run = make_run(teams.member, "on-gpus", team=teams.team, status=RunStatus.RUNNING)
    for step in (1, 2):
        record(run.pk, [Metrics(step=step, values={
            "reward/mean": 0.5, "gpu/0/utilization": 40.0 + step, "gpu/1/utilization": 90.0,
            "gpu/0/memory_used_mb": 1000.0 * step, "gpu/0/memory_total_mb": 141_000.0,
            "gpu/1/memory_used_mb": 500.0, "gpu/1/memory_total_mb": 141_000.0,
        })])
    client.force_login(teams.viewer)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="chart-gpu-util-card" hidden' not in page and 'id="chart-gpu-memory-card" hidden' not in page
    assert "name=gpu%2F0%2Futilization" in page and "name=gpu%2F1%2Futilization" in page
    assert config_of(page)["line_charts"]["chart-gpu-util"]["names"] == ["gpu/*/utilization"]
    # The chart's own data: one series per GPU, both steps.
    series = teams.client(teams.viewer).get(
        f"/api/runs/{run.pk}/metrics/", {"name": ["gpu/0/utilization", "gpu/1/utilization"]}
    ).json()["series"]
    assert series["gpu/0/utilization"]["values"] == [41.0, 42.0] and series["gpu/1/utilization"]["steps"] == [1, 2]


def test_a_run_without_gpu_metrics_says_its_nodes_have_no_gpu(teams, make_run, record, client):
    run = make_run(teams.member, "on-cpu", team=teams.team, status=RunStatus.RUNNING)
    record(run.pk, [Metrics(step=1, values={"reward/mean": 0.5})])
    client.force_login(teams.member)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="chart-gpu-util-card" hidden' in page and 'id="chart-gpu-memory-card" hidden' in page
    assert 'id="gpu-empty"' in page and "No GPU on this run's nodes" in page


def test_a_wildcard_matches_any_text_in_the_middle_or_at_the_end():
    present = ["gpu/1/utilization", "gpu/0/utilization", "gpu/0/memory_used_mb", "gpu.x/utilization", "cures/w"]
    assert resolve_names(["gpu/*/utilization"], present) == ["gpu/0/utilization", "gpu/1/utilization"]
    assert resolve_names(["cures/*", "reward/mean"], present) == ["cures/w", "reward/mean"]
