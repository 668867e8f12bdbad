"""compose.yaml, read as Docker Compose reads it (YAML with merge keys): no Docker engine
runs here, so its shape is what can be checked. Every long-running service has a health
check; the Ray head listens on a port that is not Redis's and RAY_ADDRESS names it; GPU Ray
workers reserve NVIDIA devices and build with the `gpu` extra; every process that touches
run folders, models or datasets mounts the same volumes at the paths the settings name."""

from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT = {"migrate"}
PLATFORM = ["web", "worker", "housekeeping", "ray-head", "ray-worker-gpu"]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mounts(service: dict) -> dict[str, str]:
    """Container path → volume name."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


@pytest.mark.parametrize("name", sorted(set(SERVICES) - ONE_SHOT))
def test_every_long_running_service_has_a_health_check(name):
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1


def test_celery_workers_ping_the_node_name_they_start_under():
    for name in ("worker", "housekeeping"):
        service = SERVICES[name]
        hostname = option(service["command"], "--hostname").split("@")[0]
        assert f"-d {hostname}@$$HOSTNAME" in service["healthcheck"]["test"][1]


def test_the_ray_head_is_where_ray_address_points_and_not_on_redis_port():
    head = SERVICES["ray-head"]["command"]
    port = option(head, "--port")
    assert head[:3] == ["ray", "start", "--head"] and port != "6379"
    for name in PLATFORM:
        environment = SERVICES[name]["environment"]
        assert environment["RAY_ADDRESS"] == f"ray-head:{port}"
        assert environment["RAY_AUTH_MODE"] == "token" and environment["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
    gpu = SERVICES["ray-worker-gpu"]
    assert option(gpu["command"], "--address") == f"ray-head:{port}"
    assert gpu["depends_on"]["ray-head"] == {"condition": "service_healthy"}


def test_gpu_ray_workers_reserve_nvidia_devices_and_build_with_the_gpu_extra():
    gpu = SERVICES["ray-worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == "all"
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["EXTRAS"] == "gpu"
    assert 'ARG EXTRAS=""' in (REPO_ROOT / "Dockerfile").read_text()
    assert "gpu" in (REPO_ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]


def test_checkpoints_models_and_datasets_are_shared_volumes_at_the_paths_the_settings_name():
    for name in PLATFORM:
        service = SERVICES[name]
        environment, mounted = service["environment"], mounts(service)
        for variable, volume in (("ROLLYARD_RUNS_DIR", "checkpoints"), ("ROLLYARD_MODEL_ROOTS", "models"),
                                 ("ROLLYARD_DATASET_ROOTS", "datasets")):  # fmt: skip
            assert mounted[environment[variable]] == volume, (name, variable)
    assert {"checkpoints", "models", "datasets", "pgdata"} <= set(COMPOSE["volumes"])


def waits_for(name: str) -> dict[str, str]:
    """Every service `name` waits for, directly or through another, with the condition."""
    found: dict[str, str] = {}
    for other, condition in SERVICES[name].get("depends_on", {}).items():
        found |= waits_for(other) | {other: condition["condition"]}
    return found


def test_the_platform_waits_for_healthy_services_and_a_migrated_database():
    for name in ("web", "worker", "housekeeping"):
        waits = waits_for(name)
        assert waits["migrate"] == "service_completed_successfully"
        assert waits["postgres"] == waits["redis"] == "service_healthy"
    assert waits_for("worker")["ray-head"] == waits_for("housekeeping")["ray-head"] == "service_healthy"
    # The image's working folder is platform/ (Dockerfile), where manage.py lives.
    assert SERVICES["migrate"]["command"][:2] == ["python", "manage.py"]
    assert (REPO_ROOT / "platform" / "manage.py").is_file() and "WORKDIR /app/platform" in (REPO_ROOT / "Dockerfile").read_text()
