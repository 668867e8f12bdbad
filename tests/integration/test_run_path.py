"""The whole path of a run, every part real: REST create → Celery worker process (real
Redis broker) → engine on the CPU (on local Ray) → events in the database → a websocket
client over TCP receives them → the run ends succeeded. And the same path for cancel."""

import json
import time

import httpx
import pytest
from django.contrib.auth import get_user_model
from websockets.sync.client import connect

from accounts.services import create_token
from runs.models import Checkpoint, MetricPoint, Run, RunAttempt, RunStatusChange

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

SMALL_SPEC = {
    "training": {"steps": 3, "eval_every": 0},
    "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 64},
    "dataset": {"eval_size": 16},
    "resources": {"executor": "ray"},
}


@pytest.fixture
def token() -> str:
    user = get_user_model().objects.create_user("alice", password="pw")
    return create_token(user, "e2e")[1]


def launch(stack, token: str, spec: dict) -> int:
    response = httpx.post(
        f"{stack.base_url}/api/runs/",
        json={"name": "e2e", "spec": spec},
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def receive_until(websocket, done, timeout_s: float, stack) -> list[dict]:
    """Collect websocket messages until `done(message)` holds."""
    messages = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            message = json.loads(websocket.recv(timeout=max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            break
        messages.append(message)
        if done(message):
            return messages
    pytest.fail(f"no terminal message within {timeout_s} s; got {[m['type'] for m in messages]}\n{stack.logs()}")


def test_a_launched_run_trains_on_a_worker_and_streams_its_events_live(live_stack, token):
    run_id = launch(live_stack, token, SMALL_SPEC)

    with connect(f"{live_stack.ws_url}/ws/runs/{run_id}/?token={token}") as websocket:
        hello = json.loads(websocket.recv(timeout=30))
        assert hello["type"] == "hello" and hello["run"]["id"] == run_id
        messages = receive_until(
            websocket, lambda m: m["type"] == "status" and m["status"] == "succeeded", 300, live_stack
        )

    streamed = [event for m in messages if m["type"] == "events" for event in m["events"]]
    streamed_metric_names = {name for e in streamed if e["kind"] == "metrics" for name in e["values"]}
    assert {"reward/mean", "rollout/response_length/p90"} <= streamed_metric_names
    assert any(e["kind"] == "length_histogram" for e in streamed)

    run = Run.objects.get(pk=run_id)
    assert run.status == "succeeded"
    assert run.current_step == 3
    history = list(RunStatusChange.objects.filter(run=run).order_by("id").values_list("to_status", flat=True))
    assert history == ["queued", "admitted", "running", "succeeded"]
    # Every step's metrics are in the database, not only what the socket carried.
    assert set(MetricPoint.objects.filter(run=run, name="reward/mean").values_list("step", flat=True)) == {1, 2, 3}
    # One worker's attempt, from the start; the engine checkpointed the last step in the run's folder.
    attempt = RunAttempt.objects.get(run=run)
    assert (attempt.number, attempt.outcome, attempt.resumed_from_step) == (1, "succeeded", None)
    checkpoint = Checkpoint.objects.get(run=run)
    assert checkpoint.step == 3 and checkpoint.size_bytes > 0 and checkpoint.path.endswith(f"/{run_id}/checkpoints/step-000003")


def test_cancel_stops_a_running_run_between_steps(live_stack, token):
    spec = {**SMALL_SPEC, "training": {"steps": 500, "eval_every": 0}}
    run_id = launch(live_stack, token, spec)

    with connect(f"{live_stack.ws_url}/ws/runs/{run_id}/?token={token}") as websocket:
        receive_until(websocket, lambda m: m["type"] == "events" and any(
            e["kind"] == "metrics" for e in m["events"]), 300, live_stack)
        response = httpx.post(
            f"{live_stack.base_url}/api/runs/{run_id}/cancel/", headers={"Authorization": f"Token {token}"}
        )
        assert response.status_code == 200, response.text
        receive_until(websocket, lambda m: m["type"] == "status" and m["status"] == "cancelled", 120, live_stack)

    run = Run.objects.get(pk=run_id)
    assert run.status == "cancelled"
    assert 1 <= run.current_step < 500
    assert run.finished_at is not None
