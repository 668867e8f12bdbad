"""A real two-node Ray cluster on this machine: a head started with `ray start --head` on
a port of its own (not Redis's 6379) and a second node joining it, each with one CPU. A
run reaches it through RAY_ADDRESS and, with `resources.placement: split`, its trainer
and its rollout worker land on different nodes, under the async recipe and under the
sync recipe with `rollout_workers: 1` alike (both runs share the module's cluster)."""

import json
import subprocess
import sys

import pytest

from devstack.ray_cluster import start_ray_head
from engine.spec import SpecError, parse_spec

DRIVER = r"""
import json, sys, time
import ray
from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec

class PlacementSink(ListSink):
    # At the first event after the placement group exists: the node of each bundle.
    bundle_nodes = []
    def emit(self, event):
        if not self.bundle_nodes:
            self.bundle_nodes = [
                {int(k): v for k, v in table["bundles_to_node_id"].items()}
                for table in ray.util.placement_group_table().values() if table["state"] == "CREATED"
            ]
        super().emit(event)

if __name__ == "__main__":
    ray.init(configure_logging=False, log_to_driver=False)  # RAY_ADDRESS
    deadline = time.time() + 120
    while len([node for node in ray.nodes() if node["Alive"]]) < 2:
        assert time.time() < deadline, "the second node did not join"
        time.sleep(1)
    sink = PlacementSink()
    status = run(parse_spec(json.loads(sys.argv[1])), sink, run_dir=sys.argv[2])
    steps = [m.step for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    print("RESULT " + json.dumps({"status": status, "bundle_nodes": sink.bundle_nodes, "steps": steps}))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes of one CPU each (devstack.ray_cluster: a head and a node joining it)."""
    cluster = start_ray_head(tmp_path_factory.mktemp("ray"), num_cpus=1)
    try:
        cluster.add_node(num_cpus=1)
        yield cluster
    finally:
        cluster.stop()


def test_split_placement_is_refused_where_it_cannot_mean_anything():
    for resources in ({"executor": "inprocess", "rollout_workers": 1, "placement": "split"}, {"placement": "split"}):
        with pytest.raises(SpecError, match="placement"):
            parse_spec({"resources": resources})
    assert parse_spec({}).resources.placement == "colocated"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_run_on_a_two_node_cluster_puts_trainer_and_rollout_worker_on_different_nodes(cluster, tmp_path, mode):
    """The async recipe and the sync one split across actors (its PooledCollector) place
    alike: one placement group, the trainer in bundle 0, rollout-0 in bundle 1."""
    spec = {
        "orchestration": {"mode": mode},
        "dataset": {"eval_size": 8},
        "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 40},
        "training": {"steps": 2, "eval_every": 0},
        "resources": {"executor": "ray", "cpus": 1, "rollout_workers": 1, "rollout_cpus": 1, "placement": "split"},
    }
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(spec), str(tmp_path)],
        env=cluster.env(), capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["status"] == "succeeded" and result["steps"] == [1, 2]
    # One placement group: bundle 0 (the trainer) and bundle 1 (rollout-0) on two nodes.
    (nodes,) = result["bundle_nodes"]
    assert sorted(nodes) == ["0", "1"] and nodes["0"] != nodes["1"]
