"""The REST API through the test client, authenticated with real API tokens."""

import os

import pytest
from django.core.management import call_command
from rest_framework import exceptions
from rest_framework.test import APIClient

from engine.events import LengthHistogram, Log, Metrics
from quotas.live import publish_change
from rollyard.errors import api_exception_handler
from runs import launch, lifecycle
from runs.models import MetricPoint, Run, RunStatus, RunStatusChange

pytestmark = pytest.mark.django_db

SMALL_SPEC = {"training": {"steps": 5}, "rollout": {"n": 4}}


# --- launching -----------------------------------------------------------------------------


def test_a_valid_spec_creates_a_queued_run_with_its_resolved_spec(api_alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api_alice.post("/api/runs/", {"spec": SMALL_SPEC, "name": "mine"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert body["name"] == "mine"
    assert body["owner"] == "alice"
    assert body["total_steps"] == 5
    # Resolved: what was given, and every default, including the algorithm's.
    assert body["spec"]["rollout"]["n"] == 4
    assert body["spec"]["rollout"]["prompts_per_step"] == 16
    assert body["spec"]["algorithm"]["clip_eps_low"] == 0.2
    assert body["spec"]["name"] == "mine"
    # Three side effects wait for the commit: an admission sweep of the run's pool, the
    # queue and quota pages' push (quotas.live: a run joined a queue), and the team's runs
    # lists' "new run" push (runs.live.publish_created).
    assert len(callbacks) == 3 and publish_change in callbacks
    run = Run.objects.get()
    assert list(run.status_changes.values_list("from_status", "to_status")) == [("", "queued")]


def test_the_commit_callback_enqueues_the_new_run(api_alice, django_capture_on_commit_callbacks, enqueued):
    with django_capture_on_commit_callbacks(execute=True):
        response = api_alice.post("/api/runs/", {"spec": {}}, format="json")
    assert enqueued == [response.json()["id"]]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"rollout": {"n": 0}}, "rollout.n"),
        ({"rollout": {"bogus": 1}}, "rollout.bogus"),
        ({"trainig": {"steps": 3}}, "trainig"),
        ({"algorithm": {"name": "ppo-ish"}}, "algorithm"),
    ],
)
def test_an_invalid_spec_is_refused_naming_the_field_and_creates_nothing(api_alice, spec, field, error_of):
    response = api_alice.post("/api/runs/", {"spec": spec}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_spec"
    assert field in error["fields"], error
    assert field in error["message"]
    assert Run.objects.count() == 0


def test_an_unknown_dataset_is_refused_naming_it(api_alice, error_of):
    response = api_alice.post("/api/runs/", {"spec": {"dataset": {"name": "no-such-task"}}}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert "dataset.name" in error["fields"]
    assert "no-such-task" in error["fields"]["dataset.name"][0]
    assert Run.objects.count() == 0


def test_a_body_without_spec_is_refused(api_alice, error_of):
    response = api_alice.post("/api/runs/", {"name": "x"}, format="json")
    assert response.status_code == 400
    assert "spec" in error_of(response)["fields"]
    assert Run.objects.count() == 0


def test_a_spec_that_is_not_a_mapping_is_refused(api_alice, error_of):
    response = api_alice.post("/api/runs/", {"spec": [1, 2]}, format="json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_spec"


@pytest.mark.parametrize("authorization", [None, "Token 0000000000000000000000000000000000000000", "Bearer nope"])
def test_without_a_valid_token_the_api_answers_401_and_creates_nothing(alice, authorization, error_of):
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)

    response = client.post("/api/runs/", {"spec": SMALL_SPEC}, format="json")

    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] in ("not_authenticated", "authentication_failed")
    assert error["message"]
    assert response["WWW-Authenticate"] == "Token"
    assert client.get("/api/runs/").status_code == 401
    assert Run.objects.count() == 0


# --- reading -------------------------------------------------------------------------------------


def test_a_user_lists_only_their_own_runs_newest_first(api_alice, alice, bob, make_run):
    first = make_run(alice, "first")
    second = make_run(alice, "second")
    make_run(bob, "bobs")

    body = api_alice.get("/api/runs/").json()

    assert body["count"] == 2
    assert [run["id"] for run in body["results"]] == [second.id, first.id]
    assert "spec" not in body["results"][0]  # the list stays light


def test_another_users_run_is_not_found(api_alice, bob, make_run, error_of):
    theirs = make_run(bob)
    for url in (f"/api/runs/{theirs.id}/", f"/api/runs/{theirs.id}/metrics/", f"/api/runs/{theirs.id}/events/"):
        response = api_alice.get(url)
        assert response.status_code == 404, url
        assert error_of(response)["code"] == "not_found"
    assert api_alice.post(f"/api/runs/{theirs.id}/cancel/").status_code == 404
    assert Run.objects.get(pk=theirs.id).status == "queued"


def test_staff_see_every_run(staff, alice, make_run):
    run = make_run(alice)
    client = APIClient()
    client.force_authenticate(staff)
    assert client.get(f"/api/runs/{run.id}/").status_code == 200


def test_the_detail_holds_status_progress_and_spec(api_alice, alice, make_run):
    run = make_run(alice, status=RunStatus.RUNNING, total_steps=10, current_step=4)
    body = api_alice.get(f"/api/runs/{run.id}/").json()
    assert body["status"] == "running"
    assert (body["current_step"], body["total_steps"], body["progress"]) == (4, 10, 0.4)
    assert body["spec"] == {"name": "run"}
    assert body["url"] == f"/runs/{run.id}/"


# --- cancelling ---------------------------------------------------------------------------------------


def test_cancelling_a_queued_run_cancels_it_at_once(api_alice, alice):
    run = launch.create_run(alice, SMALL_SPEC)

    response = api_alice.post(f"/api/runs/{run.id}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert run.status_reason == "cancelled by alice"
    assert run.finished_at is not None


def test_cancelling_a_running_run_asks_its_driver(api_alice, alice):
    run = launch.create_run(alice, SMALL_SPEC)
    lifecycle.transition(run.id, RunStatus.ADMITTED, "no quota applies")
    lifecycle.transition(run.id, RunStatus.RUNNING, "picked up")

    body = api_alice.post(f"/api/runs/{run.id}/cancel/").json()

    assert body["status"] == "running"
    assert body["cancel_requested"] is True


def test_cancelling_a_finished_run_is_a_conflict(api_alice, alice, error_of):
    run = launch.create_run(alice, SMALL_SPEC)
    api_alice.post(f"/api/runs/{run.id}/cancel/")

    response = api_alice.post(f"/api/runs/{run.id}/cancel/")

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "invalid_state"
    assert "cancelled" in error["message"]
    assert RunStatusChange.objects.filter(run=run).count() == 2  # queued, cancelled: no more


# --- telemetry -------------------------------------------------------------------------------------------


def test_metrics_returns_the_series_asked_for(api_alice, alice, make_run, record):
    run = make_run(alice)
    record(
        run.id,
        [
            Metrics(step=1, values={"reward/mean": 0.1, "acc/mean": 0.2}, wall_time=100.0),
            Metrics(step=2, values={"reward/mean": 0.3, "acc/mean": 0.4}, wall_time=101.0),
        ],
    )

    body = api_alice.get(f"/api/runs/{run.id}/metrics/?name=reward/mean").json()
    assert body["series"] == {
        "reward/mean": {"steps": [1, 2], "values": [0.1, 0.3], "wall_times": [100.0, 101.0], "total": 2}
    }
    everything = api_alice.get(f"/api/runs/{run.id}/metrics/").json()
    assert set(everything["series"]) == {"reward/mean", "acc/mean"}


def test_downsampled_metrics_keep_a_spike_and_both_ends(api_alice, alice, make_run, record):
    run = make_run(alice)
    # 10 000 steps of 1.0 with one spike of 1e6 at step 6 789 and one dip of -5 at step 123.
    values = {step: 1.0 for step in range(1, 10_001)}
    values[6789], values[123] = 1e6, -5.0
    record(run.id, [Metrics(step=s, values={"actor/grad_norm": v}, wall_time=float(s)) for s, v in values.items()])

    series = api_alice.get(f"/api/runs/{run.id}/metrics/?name=actor/grad_norm&max_points=40").json()["series"]
    line = series["actor/grad_norm"]

    # M4 with 40 points: 10 buckets × (first, last, min, max), fewer where they coincide.
    assert len(line["steps"]) <= 40
    assert line["total"] == 10_000
    assert 1e6 in line["values"] and -5.0 in line["values"]
    assert line["steps"][0] == 1 and line["steps"][-1] == 10_000
    assert line["steps"] == sorted(line["steps"])


def test_metrics_query_errors_name_the_parameter(api_alice, alice, make_run, error_of):
    run = make_run(alice)
    response = api_alice.get(f"/api/runs/{run.id}/metrics/?max_points=1")
    assert response.status_code == 400
    assert "max_points" in error_of(response)["fields"]


def test_events_filter_by_kind_and_page_by_id(api_alice, alice, make_run, record):
    run = make_run(alice)
    record(
        run.id,
        [
            LengthHistogram(step=1, bin_edges=[0, 8, 16], counts=[3, 1]),
            Log(message="hello"),
            LengthHistogram(step=2, bin_edges=[0, 8, 16], counts=[2, 2]),
        ],
    )
    url = f"/api/runs/{run.id}/events/"

    histograms = api_alice.get(url, {"kind": "length_histogram"}).json()
    assert [event["step"] for event in histograms["events"]] == [1, 2]
    assert histograms["events"][0]["counts"] == [3, 1]
    assert histograms["last_id"] == histograms["events"][-1]["id"]

    after_first = api_alice.get(url, {"after": histograms["events"][0]["id"]}).json()["events"]
    assert [event["kind"] for event in after_first] == ["log", "length_histogram"]

    latest = api_alice.get(url, {"kind": "length_histogram", "latest": 1}).json()["events"]
    assert [event["step"] for event in latest] == [2]


# --- the spec contract and the schema -------------------------------------------------------------------


def test_spec_defaults_and_schema_come_from_the_engine(api_alice):
    defaults = api_alice.get("/api/spec/defaults/").json()
    assert defaults["spec"]["rollout"]["n"] == 8
    assert defaults["spec"]["algorithm"]["name"] == "grpo"
    assert "grpo" in [choice["name"] for choice in defaults["choices"]["algorithm"]]
    assert [choice["name"] for choice in defaults["choices"]["curriculum"]] == ["cures", "dars", "easy_to_hard", "uniform"]
    assert "dars" in [choice["name"] for choice in defaults["choices"]["rollout_strategy"]]
    assert "builtin:arith-tiny" in [choice["name"] for choice in defaults["choices"]["model"]]

    schema = api_alice.get("/api/spec/schema/").json()
    assert "rollout" in schema["schema"]["properties"]
    assert schema["choices"] == defaults["choices"]


def test_the_openapi_schema_generates_without_warnings():
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", os.devnull)


def test_the_openapi_schema_is_served(api_alice):
    response = api_alice.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/runs/", "/api/runs/{id}/cancel/", "/api/runs/{id}/metrics/", "/api/runs/{id}/events/"} <= set(paths)


# --- one error body for every status -----------------------------------------------------------------


def test_every_error_status_has_the_same_body(api_alice, alice, settings, make_run, error_of):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    finished = make_run(alice, status=RunStatus.SUCCEEDED)
    responses = {
        400: api_alice.post("/api/runs/", {"spec": {"rollout": {"n": 0}}}, format="json"),
        401: APIClient().get("/api/runs/"),
        404: api_alice.get("/api/runs/999999/"),
        405: api_alice.put("/api/runs/"),
        409: api_alice.post(f"/api/runs/{finished.id}/cancel/"),
        413: api_alice.post("/api/tokens/", {"name": "x" * 5000}, format="multipart"),
        415: api_alice.generic("POST", "/api/runs/", "spec", content_type="text/plain"),
    }
    for status, response in responses.items():
        assert response.status_code == status, (status, response.content)
        error = error_of(response)
        assert error["code"] and error["message"], (status, error)


def test_a_throttled_request_gets_429_with_retry_after_and_the_same_body():
    response = api_exception_handler(exceptions.Throttled(wait=7), {})
    assert response.status_code == 429
    assert response["Retry-After"] == "7"
    assert response.data["error"]["code"] == "throttled"
    assert "7 seconds" in response.data["error"]["message"]
