"""The platform on a Ray cluster it did not start. A head from `ray start --head` on a port
of its own (devstack.ray_cluster) declares 2 CPUs and one GPU (a logical one: Ray counts
what it is told); the platform's web server, run worker and housekeeper start with
RAY_ADDRESS pointing at it. A one-GPU run launched through the REST API waits while
another driver holds the cluster's GPU, although its pool has room by its own count:
admission reads the cluster's free GPUs. Once the GPU is released the run is admitted,
trains in an actor on that cluster (its log names the cluster's node and address) and
succeeds."""

import json
import re
import subprocess
import sys

import httpx
import pytest
from django.contrib.auth import get_user_model

from accounts.services import create_token
from devstack.processes import Stack, start_stack
from devstack.ray_cluster import start_ray_head
from devstack.services import redis_url, separate_redis_database
from quotas.admission import plan_pool
from quotas.models import Accelerator, Pool
from runs.models import RunAttempt

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600), pytest.mark.slow]

SPEC = {
    "training": {"steps": 2, "eval_every": 0},
    "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 32},
    "dataset": {"eval_size": 8},
    "resources": {"executor": "ray", "gpus": 1, "cpus": 1},
}

# Another user's work on the cluster: an actor holding its GPU until our stdin closes.
HOLDER = r"""
import json, sys
import ray

ray.init(configure_logging=False, log_to_driver=False)  # RAY_ADDRESS

@ray.remote(num_cpus=0, num_gpus=1)
class Holder:
    def ready(self):
        return True

holder = Holder.remote()
ray.get(holder.ready.remote())
nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
print(json.dumps({"nodes": nodes, "free_gpus": ray.available_resources().get("GPU", 0.0)}), flush=True)
sys.stdin.read()
"""

ADMISSION_DONE = re.compile(r"Task rollyard\.admit_runs\[[^\]]+\] succeeded")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = start_ray_head(tmp_path_factory.mktemp("ray"), num_cpus=2, num_gpus=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def stack(cluster, stack_process_env, tmp_path):
    """The platform's processes attached to the cluster, on a Redis database of their own:
    the session's live_stack worker shares the test database, and on one broker it could
    take this test's runs and admission sweeps."""
    import redis

    env = cluster.env(stack_process_env) | {"REDIS_URL": separate_redis_database(redis_url()), "ROLLYARD_ADMIT_EVERY_S": "2"}
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()  # messages an aborted session left behind
    stack = start_stack(env, tmp_path, housekeeper=True)
    try:
        yield stack
    finally:
        stack.stop()


def sweeps_done(stack: Stack) -> int:
    logs = (stack.logs[name].read_text(errors="replace") for name in ("worker", "housekeeper"))
    return sum(len(ADMISSION_DONE.findall(log)) for log in logs)


def test_a_run_launched_through_the_api_waits_for_and_trains_on_the_cluster_at_ray_address(cluster, stack):
    base_url = stack.base_url
    user = get_user_model().objects.create_user("ray-user", password="pw")
    headers = {"Authorization": f"Token {create_token(user, 'ray')[1]}"}
    pool = Pool.objects.create(name="gpu", accelerator=Accelerator.GPU, gpu_type="logical", capacity=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=cluster.env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = json.loads(holder.stdout.readline() or "{}")
        assert seen.get("free_gpus") == 0.0 and len(seen["nodes"]) == 1, seen

        response = httpx.post(f"{base_url}/api/runs/", json={"name": "on the cluster", "spec": SPEC, "pool": "gpu"},
                              headers=headers, timeout=30)  # fmt: skip
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        # Three sweeps after the launch (one sent by it, then the housekeeper's every 2 s),
        # each reading 0 free GPUs on the cluster: the run waits. The pool alone would admit it.
        before = sweeps_done(stack)
        stack.wait_for(lambda: sweeps_done(stack) >= before + 3, 90, "three admission sweeps after the launch")
        assert httpx.get(f"{base_url}/api/runs/{run_id}/", headers=headers).json()["status"] == "queued"
        assert [decision.admit for decision in plan_pool(pool)] == [True]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)

    # The GPU is free again on the cluster: the next sweep admits the run and it trains there.
    def ended() -> bool:
        return httpx.get(f"{base_url}/api/runs/{run_id}/", headers=headers).json()["status"] not in (
            "queued", "admitted", "running")

    stack.wait_for(ended, 300, f"run {run_id} ending")
    run = httpx.get(f"{base_url}/api/runs/{run_id}/", headers=headers).json()
    assert (run["status"], run["current_step"]) == ("succeeded", 2), stack.tails()
    assert RunAttempt.objects.get(run_id=run_id).outcome == "succeeded"
    events = httpx.get(f"{base_url}/api/runs/{run_id}/events/", params={"kind": "log"}, headers=headers).json()
    (where,) = [e["message"] for e in events["events"] if e["message"].startswith("trainer on Ray node")]
    # Ray names the cluster by the node's address, not 127.0.0.1: the head's port says which.
    node_id, port = where.split()[4], cluster.address.rsplit(":", 1)[1]
    assert node_id == seen["nodes"][0] and re.search(rf"of the Ray cluster at [\d.]+:{port}$", where), where
