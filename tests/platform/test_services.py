"""The service layer: the run state machine, cancel requests, and recording telemetry."""

import math
from datetime import UTC, datetime

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Heartbeat, LengthHistogram, Log, Metrics, PromptResult, PromptResults, Span, Status
from engine.spec import SpecError
from runs import launch, lifecycle, selectors
from runs.models import TRANSITIONS, MetricPoint, Run, RunEvent, RunStatus, RunStatusChange

pytestmark = pytest.mark.django_db


def history(run: Run) -> list[tuple[str, str]]:
    return list(RunStatusChange.objects.filter(run=run).values_list("from_status", "to_status"))


# --- create_run --------------------------------------------------------------------------------


def test_create_run_stores_the_resolved_spec_and_names_the_run(alice):
    run = launch.create_run(alice, {"training": {"steps": 7}})
    assert run.status == "queued"
    assert run.total_steps == 7
    assert run.name == "grpo on arith"  # no name given: algorithm on dataset
    assert run.spec["training"]["steps"] == 7
    assert run.spec["algorithm"]["advantage"] == "group_norm"  # the algorithm's default
    assert history(run) == [("", "queued")]


def test_create_run_takes_the_name_from_the_spec_or_the_argument(alice):
    assert launch.create_run(alice, {"name": "from spec"}).name == "from spec"
    named = launch.create_run(alice, {"name": "from spec"}, name="given")
    assert named.name == named.spec["name"] == "given"


def test_an_invalid_spec_raises_with_every_problem_and_stores_nothing(alice):
    with pytest.raises(SpecError) as raised:
        launch.create_run(alice, {"rollout": {"n": 0, "temperature": -1}})
    assert {field for field, _ in raised.value.problems} == {"rollout.n", "rollout.temperature"}
    assert Run.objects.count() == 0


def test_a_rolled_back_launch_enqueues_nothing(alice, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            launch.create_run(alice, {})
            raise RuntimeError("the request failed after the run was created")
    assert enqueued == []
    assert Run.objects.count() == 0


# --- the state machine --------------------------------------------------------------------------------


def test_a_run_moves_queued_admitted_running_succeeded_with_history_and_timestamps(alice):
    run = launch.create_run(alice, {})
    assert run.started_at is None and run.finished_at is None

    lifecycle.transition(run.id, RunStatus.ADMITTED, "no quota applies")
    running = lifecycle.transition(run.id, RunStatus.RUNNING, "picked up by w1")
    assert running.started_at is not None and running.finished_at is None
    done = lifecycle.transition(run.id, "succeeded", "all steps done")

    assert done.status == "succeeded" and done.status_reason == "all steps done"
    assert done.finished_at >= done.started_at
    assert history(run) == [("", "queued"), ("queued", "admitted"), ("admitted", "running"), ("running", "succeeded")]
    assert list(RunStatusChange.objects.filter(run=run).values_list("reason", flat=True))[1:] == [
        "no quota applies",
        "picked up by w1",
        "all steps done",
    ]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], RunStatus.SUCCEEDED),  # queued → succeeded skips running
        ([], RunStatus.RUNNING),  # queued → running skips admission
        ([RunStatus.ADMITTED, RunStatus.RUNNING], RunStatus.RUNNING),  # a redelivered task cannot claim twice
        ([RunStatus.CANCELLED], RunStatus.ADMITTED),  # cancelled while queued: never starts
        ([RunStatus.ADMITTED, RunStatus.RUNNING, RunStatus.FAILED], RunStatus.SUCCEEDED),  # terminal stays terminal
        ([RunStatus.ADMITTED, RunStatus.RUNNING, RunStatus.SUCCEEDED], RunStatus.SUCCEEDED),
    ],
)
def test_illegal_transitions_are_refused_and_change_nothing(alice, path, illegal):
    run = launch.create_run(alice, {})
    for status in path:
        lifecycle.transition(run.id, status)
    before = Run.objects.get(pk=run.id)

    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.transition(run.id, illegal)

    after = Run.objects.get(pk=run.id)
    assert (after.status, after.finished_at) == (before.status, before.finished_at)
    assert len(history(run)) == 1 + len(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves=st.lists(st.sampled_from(list(RunStatus)), max_size=6))
def test_any_sequence_of_moves_follows_the_state_machine(alice, moves):
    run = launch.create_run(alice, {})
    expected = RunStatus.QUEUED
    legal_moves = 0
    for move in moves:
        if move in TRANSITIONS[expected]:
            lifecycle.transition(run.id, move)
            expected, legal_moves = move, legal_moves + 1
        else:
            with pytest.raises(lifecycle.IllegalTransition):
                lifecycle.transition(run.id, move)
    run.refresh_from_db()
    assert run.status == expected
    assert len(history(run)) == 1 + legal_moves
    assert (run.finished_at is not None) == (expected in RunStatus.TERMINAL)


# --- cancel ----------------------------------------------------------------------------------------------


def test_cancel_of_a_running_run_sets_the_flag_its_driver_polls(alice):
    run = launch.create_run(alice, {})
    lifecycle.transition(run.id, RunStatus.ADMITTED)
    lifecycle.transition(run.id, RunStatus.RUNNING)
    assert selectors.cancel_requested(run.id) is False

    lifecycle.request_cancel(alice, run)
    lifecycle.request_cancel(alice, run)  # asking twice is harmless

    run.refresh_from_db()
    assert (run.status, run.cancel_requested) == ("running", True)
    assert selectors.cancel_requested(run.id) is True
    # The driver stops between steps and reports it.
    lifecycle.transition(run.id, RunStatus.CANCELLED, "cancelled on request")
    assert history(run)[-1] == ("running", "cancelled")


def test_cancel_of_a_finished_run_is_refused(alice):
    run = launch.create_run(alice, {})
    lifecycle.transition(run.id, RunStatus.FAILED, "no capacity")
    with pytest.raises(lifecycle.IllegalTransition, match="failed"):
        lifecycle.request_cancel(alice, run)


def test_only_the_owner_or_staff_may_cancel(alice, bob, staff):
    run = launch.create_run(alice, {})
    with pytest.raises(lifecycle.RunPermissionDenied):
        lifecycle.request_cancel(bob, run)
    assert lifecycle.request_cancel(staff, run).status == "cancelled"


def test_a_driver_stops_when_its_run_is_gone_or_already_finished(alice):
    run = launch.create_run(alice, {})
    lifecycle.transition(run.id, RunStatus.ADMITTED)
    lifecycle.transition(run.id, RunStatus.RUNNING)
    lifecycle.transition(run.id, RunStatus.FAILED, "heartbeat lost")
    assert selectors.cancel_requested(run.id) is True
    assert selectors.cancel_requested(987654) is True


# --- record_events ----------------------------------------------------------------------------------------


def test_record_events_writes_points_events_summary_and_progress(alice, make_run, record):
    run = make_run(alice, status=RunStatus.RUNNING, total_steps=3)
    prompt = PromptResult(prompt_id="p1", difficulty=3.0, attempts=4, successes=1, mean_length=20.0)
    batch = [
        Metrics(step=1, values={"reward/mean": 0.25, "acc/mean": 0.5}),
        LengthHistogram(step=1, bin_edges=[0, 16, 32], counts=[5, 3]),
        PromptResults(step=1, results=[prompt]),
        Span(step=1, worker="rollout-0", phase="generate", start=10.0, end=12.5),
        Heartbeat(step=1, wall_time=1_700_000_000.0),
        Metrics(step=2, values={"reward/mean": 0.75, "actor/entropy": float("nan")}),
        Log(level="warning", message="slow step"),
        Status(status="running", message="step 2 done"),
    ]

    record(run.id, batch)

    run.refresh_from_db()
    # Points: 2 names at step 1 + 2 names at step 2 = 4 rows.
    assert MetricPoint.objects.filter(run=run).count() == 4
    assert list(
        MetricPoint.objects.filter(run=run, name="reward/mean").order_by("step").values_list("step", "value")
    ) == [(1, 0.25), (2, 0.75)]
    # The latest value of each name; NaN is stored as null.
    assert run.summary == {"reward/mean": 0.75, "acc/mean": 0.5, "actor/entropy": None}
    assert run.current_step == 2
    assert run.last_heartbeat_at == datetime.fromtimestamp(1_700_000_000.0, tz=UTC)
    kinds = list(RunEvent.objects.filter(run=run).order_by("id").values_list("kind", flat=True))
    assert kinds == ["length_histogram", "prompt_results", "span", "heartbeat", "log", "status"]
    histogram = RunEvent.objects.get(run=run, kind="length_histogram")
    assert (histogram.step, histogram.payload["counts"]) == (1, [5, 3])
    assert RunEvent.objects.get(run=run, kind="log").step is None
    # Status events are recorded for the log but do not move the state machine.
    assert run.status == "running"


def test_record_events_merges_summaries_across_batches(alice, make_run, record):
    run = make_run(alice)
    record(run.id, [Metrics(step=1, values={"a": 1.0, "b": 2.0})])
    record(run.id, [Metrics(step=2, values={"b": 3.0})])
    run.refresh_from_db()
    assert run.summary == {"a": 1.0, "b": 3.0}
    assert run.current_step == 2


def test_record_events_publishes_one_message_after_commit(
    alice, make_run, record, monkeypatch, django_capture_on_commit_callbacks
):
    run = make_run(alice)
    sent = []
    monkeypatch.setattr("runs.live.publish", lambda run_id, message: sent.append((run_id, message)))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        record(run.id, [Metrics(step=1, values={"x": math.inf}), Log(message="hi")])
    assert sent == []  # nothing before the commit
    for callback in callbacks:
        callback()

    assert len(sent) == 1
    run_id, message = sent[0]
    assert run_id == run.id and message["type"] == "run.events"
    assert [event["kind"] for event in message["events"]] == ["metrics", "log"]
    assert message["events"][0]["values"] == {"x": None}  # valid JSON for browsers


def test_recording_nothing_does_nothing(alice, make_run, record, django_capture_on_commit_callbacks):
    run = make_run(alice)
    with django_capture_on_commit_callbacks() as callbacks:
        record(run.id, [])
    assert callbacks == []


# --- downsampling ---------------------------------------------------------------------------------------


def test_short_series_come_back_whole_with_gaps_for_non_finite_values(alice, make_run, record):
    run = make_run(alice)
    record(run.id, [Metrics(step=s, values={"m": v}) for s, v in [(1, 1.0), (2, math.nan), (3, 3.0)]])
    series = selectors.metric_series(run, ["m"], max_points=100)["m"]
    assert series["steps"] == [1, 2, 3]
    assert series["values"] == [1.0, None, 3.0]


def test_m4_downsampling_keeps_first_last_min_and_max_of_each_bucket(alice, make_run, record):
    run = make_run(alice)
    # 100 steps; with max_points=8 there are 2 buckets of 50 steps (1-50, 51-100).
    # Bucket 1 holds a dip (-1 at step 20), bucket 2 a spike (9 at step 70).
    values = {step: 0.5 for step in range(1, 101)}
    values[20], values[70] = -1.0, 9.0
    record(run.id, [Metrics(step=step, values={"m": value}, wall_time=0.0) for step, value in values.items()])

    series = selectors.metric_series(run, ["m"], max_points=8)["m"]

    assert len(series["steps"]) <= 8
    assert {1, 20, 70, 100} <= set(series["steps"])
    assert min(series["values"]) == -1.0 and max(series["values"]) == 9.0
