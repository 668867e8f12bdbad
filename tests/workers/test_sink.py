"""The worker's event sink writes engine events to the database in batches: a step's
events land together when the step's heartbeat arrives, not one row-write at a time."""

import pytest
from django.contrib.auth import get_user_model

from engine.events import Heartbeat, LengthHistogram, Metrics, Status
from runs.models import MetricPoint, Run, RunEvent, RunStatus
from runs.attempts import claim_run
from runs.launch import create_run
from runs.lifecycle import transition
from workers.attempt import AttemptFence
from workers.sink import DatabaseSink

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(settings, tmp_path) -> Run:
    """A run claimed by a worker, as the sink finds it."""
    settings.ROLLYARD_RUNS_DIR = tmp_path
    user = get_user_model().objects.create_user("carol")
    run = create_run(user, {"name": "sink"})
    if Run.objects.get(pk=run.pk).status == RunStatus.QUEUED:
        transition(run.pk, RunStatus.ADMITTED, "admitted by the test")
    return claim_run(run.pk, "host-a", 1111).run


def sink_of(run: Run, **batching) -> DatabaseSink:
    return DatabaseSink(AttemptFence(run.pk, run.attempts.get().pk, outage_s=5), **batching)


def test_a_steps_events_wait_for_its_heartbeat_then_land_together(run):
    sink = sink_of(run, max_delay_s=3600)
    sink.emit(Metrics(step=1, values={"reward/mean": 0.25, "acc/mean": 0.5}))
    sink.emit(LengthHistogram(step=1, bin_edges=[0, 8, 16], counts=[3, 1]))
    assert MetricPoint.objects.filter(run=run).count() == 0

    sink.emit(Heartbeat(step=1))

    assert MetricPoint.objects.filter(run=run).count() == 2
    assert list(RunEvent.objects.filter(run=run).values_list("kind", flat=True).order_by("id")) == [
        "length_histogram",
        "heartbeat",
    ]
    run.refresh_from_db()
    assert run.current_step == 1 and run.summary["reward/mean"] == 0.25


def test_a_full_buffer_is_written_without_waiting(run):
    sink = sink_of(run, max_batch=3, max_delay_s=3600)
    for step in (1, 2):
        sink.emit(Metrics(step=step, values={"reward/mean": step / 10}))
    assert MetricPoint.objects.filter(run=run).count() == 0
    sink.emit(Metrics(step=3, values={"reward/mean": 0.3}))
    assert MetricPoint.objects.filter(run=run).count() == 3


def test_flush_writes_what_is_left_and_an_empty_flush_writes_nothing(run):
    sink = sink_of(run, max_delay_s=3600)
    sink.flush()
    assert RunEvent.objects.filter(run=run).count() == 0
    sink.emit(Metrics(step=4, values={"reward/mean": 1.0}))
    sink.flush()
    assert MetricPoint.objects.filter(run=run, step=4).count() == 1


def test_a_status_event_closes_the_batch_like_a_heartbeat(run):
    sink = sink_of(run, max_delay_s=3600)
    sink.emit(Metrics(step=2, values={"val/acc/mean@1": 0.75}))
    sink.emit(Status(status="succeeded"))
    assert MetricPoint.objects.filter(run=run, name="val/acc/mean@1").get().value == 0.75
