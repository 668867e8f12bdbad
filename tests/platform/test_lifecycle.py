"""The run lifecycle in the service layer: attempts, checkpoints, the reconciler's
requeue-or-fail, lost messages, retention, fork, clone and config diff, alerts to a webhook.

Time moves by passing the reconciler a `now` in the future instead of sleeping."""

import json
import threading
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from django.utils import timezone

from engine.events import Checkpoint as CheckpointEvent
from engine.events import Heartbeat, Metrics
from engine.spec import SpecError
from runs import alerts, lifecycle, retention, telemetry
from runs import attempts as run_attempts
from runs import launch as run_launch
from runs.models import Alert, Checkpoint, MetricPoint, Run, RunAttempt, RunStatus, RunStatusChange
from runs.reconciler import reconcile_runs
from runs.spec_diff import spec_differences

pytestmark = pytest.mark.django_db

TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def lifecycle_settings(settings, tmp_path):
    settings.ROLLYARD_RUNS_DIR = tmp_path / "runs"
    settings.ROLLYARD_HEARTBEAT_TIMEOUT_S = TIMEOUT_S
    settings.ROLLYARD_MAX_ATTEMPTS = 2
    settings.ROLLYARD_ENQUEUE_TIMEOUT_S = TIMEOUT_S
    settings.ROLLYARD_STUCK_AFTER_S = 10 * TIMEOUT_S
    settings.ROLLYARD_ALERT_WEBHOOK_URL = ""
    return settings


@pytest.fixture
def admissions(monkeypatch) -> list[None]:
    """Admission sweeps the reconciler asks for (quotas' own tests prove the sweep)."""
    calls: list[None] = []
    monkeypatch.setattr("rollyard.dispatch.request_admission", lambda pool_id=None: calls.append(pool_id))
    return calls


@pytest.fixture
def sweep(django_capture_on_commit_callbacks):
    """The reconciler at `now`, its after-commit side effects run (the test's own
    transaction never commits)."""

    def run_sweep(now=None):
        with django_capture_on_commit_callbacks(execute=True):
            return reconcile_runs(now=now)

    return run_sweep


def admitted_run(user, spec: dict | None = None, **launch) -> Run:
    run = run_launch.create_run(user, spec or {"training": {"steps": 20}}, **launch)
    if Run.objects.get(pk=run.pk).status == RunStatus.QUEUED:
        lifecycle.transition(run.pk, RunStatus.ADMITTED, "admitted by the test")
    return Run.objects.get(pk=run.pk)


def running_run(user, **launch) -> tuple[Run, run_attempts.Claim]:
    run = admitted_run(user, **launch)
    return run, run_attempts.claim_run(run.pk, "host-a", 1111)


def write_checkpoint(run: Run, step: int, metrics: dict[str, float] | None = None) -> Path:
    """A checkpoint folder as the engine lays it out, reported through record_events."""
    folder = run_attempts.run_dir(run.pk) / "checkpoints" / f"step-{step:06d}"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"w" * 1000)
    (folder / "trainer.pt").write_bytes(b"t" * 24)
    record(run, [CheckpointEvent(step=step, path=str(folder), metrics=metrics or {})])
    return folder


def beat(run: Run, step: int, values: dict[str, float] | None = None) -> None:
    record(run, [Metrics(step=step, values=values or {"reward/mean": step / 10}), Heartbeat(step=step)])


def record(run: Run, events: list) -> None:
    """As the driver of the run's open attempt."""
    telemetry.record_events(run.pk, run.attempts.get(ended_at__isnull=True).pk, events)


def later(seconds: float = TIMEOUT_S + 1):
    return timezone.now() + timedelta(seconds=seconds)


# --- attempts ------------------------------------------------------------------------------


def test_claiming_a_run_opens_attempt_1_and_a_second_claim_is_refused(alice):
    run, claim = running_run(alice)

    assert claim.attempt.number == 1 and claim.attempt.outcome == "running"
    assert (claim.attempt.worker_host, claim.attempt.worker_pid) == ("host-a", 1111)
    assert claim.run_dir == run_attempts.run_dir(run.pk) and claim.resume_from is None
    # A redelivered message for the same run finds it running already.
    with pytest.raises(lifecycle.IllegalTransition):
        run_attempts.claim_run(run.pk, "host-b", 2222)
    assert RunAttempt.objects.filter(run=run).count() == 1


def test_the_end_of_a_run_closes_its_attempt_with_the_outcome(alice):
    run, claim = running_run(alice)
    run_attempts.end_attempt(claim.attempt.pk, RunStatus.SUCCEEDED, "all steps done")

    attempt = RunAttempt.objects.get(pk=claim.attempt.pk)
    assert (attempt.outcome, attempt.reason) == ("succeeded", "all steps done")
    assert attempt.ended_at is not None
    assert Run.objects.get(pk=run.pk).status == "succeeded"


def test_a_first_attempt_sets_aside_a_folder_an_earlier_database_left_under_its_id(alice):
    run = admitted_run(alice)
    left_over = run_attempts.run_dir(run.pk) / "checkpoints" / "step-000009"
    left_over.mkdir(parents=True)

    claim = run_attempts.claim_run(run.pk, "host-a", 1111)
    aside = run_attempts.set_aside_stale_run_dir(claim)

    assert not claim.run_dir.exists()  # the engine starts fresh instead of resuming step 9
    assert (aside / "checkpoints" / "step-000009").is_dir() and aside.parent == claim.run_dir.parent


def test_checkpoint_events_become_rows_with_their_size_and_metrics(alice):
    run, _ = running_run(alice)
    write_checkpoint(run, 5, {"val/acc/mean@1": 0.6})

    checkpoint = Checkpoint.objects.get(run=run)
    assert checkpoint.step == 5
    assert checkpoint.metrics == {"val/acc/mean@1": 0.6}
    assert checkpoint.size_bytes == 1000 + 24
    assert checkpoint.path.endswith("step-000005")


# --- the reconciler: lost workers ------------------------------------------------------------------


def test_a_silent_running_run_is_requeued_with_a_reason_and_resumes_from_its_checkpoint(alice, admissions, sweep):
    run, claim = running_run(alice)
    for step in range(1, 8):
        beat(run, step)
        if step == 5:
            write_checkpoint(run, 5)

    report = sweep(now=later())

    requeued = Run.objects.get(pk=run.pk)
    assert report.requeued == [run.pk]
    assert requeued.status == "queued"
    assert "no heartbeat" in requeued.status_reason and "attempt 1 of 2" in requeued.status_reason
    assert "resumes from the checkpoint of step 5" in requeued.status_reason
    first = RunAttempt.objects.get(pk=claim.attempt.pk)
    assert first.outcome == "lost" and first.reason == requeued.status_reason
    assert admissions  # back in the queue: admission was asked to sweep, after commit
    assert Alert.objects.get(run=run).kind == "dead"

    # Admitted again, the next worker's attempt resumes at step 5; steps 6 and 7, which the
    # lost worker reported, are dropped (the engine reports them again).
    lifecycle.transition(run.pk, RunStatus.ADMITTED, "admitted again")
    second = run_attempts.claim_run(run.pk, "host-b", 2222)
    assert second.attempt.number == 2
    assert second.attempt.resumed_from_step == 5
    assert second.resume_from is None  # the engine finds its own checkpoint in run_dir
    assert Run.objects.get(pk=run.pk).current_step == 5
    assert sorted(MetricPoint.objects.filter(run=run).values_list("step", flat=True)) == [1, 2, 3, 4, 5]
    # The run keeps its first start; the new attempt's claim counts as a sign of life.
    resumed = Run.objects.get(pk=run.pk)
    assert resumed.started_at == claim.run.started_at < second.attempt.started_at == resumed.last_heartbeat_at
    assert sweep(now=later(TIMEOUT_S - 5)).requeued == []


def test_a_run_out_of_attempts_is_failed_naming_the_lost_heartbeat(alice, admissions, sweep):
    run, _ = running_run(alice)
    sweep(now=later())
    lifecycle.transition(run.pk, RunStatus.ADMITTED, "admitted again")
    second = run_attempts.claim_run(run.pk, "host-b", 2222)

    report = sweep(now=later())

    failed = Run.objects.get(pk=run.pk)
    assert report.failed == [run.pk]
    assert failed.status == "failed"
    assert "no heartbeat" in failed.status_reason and "attempt 2 of 2; no attempts left" in failed.status_reason
    assert RunAttempt.objects.get(pk=second.attempt.pk).outcome == "lost"
    history = list(RunStatusChange.objects.filter(run=run).values_list("to_status", flat=True))
    assert history[-5:] == ["running", "queued", "admitted", "running", "failed"]


def test_a_run_with_a_fresh_heartbeat_is_left_alone(alice, sweep):
    run, _ = running_run(alice)
    beat(run, 1)

    report = sweep(now=later(TIMEOUT_S - 5))

    assert report.requeued == report.failed == []
    assert Run.objects.get(pk=run.pk).status == "running"


def test_a_driver_given_up_by_the_reconciler_cannot_end_the_run(alice, admissions, sweep):
    run, lost = running_run(alice)
    sweep(now=later())
    lifecycle.transition(run.pk, RunStatus.ADMITTED, "admitted again")
    run_attempts.claim_run(run.pk, "host-b", 2222)

    # The first worker was only stalled: it wakes up, sees it must stop, and reports an end.
    assert not run_attempts.attempt_is_current(lost.attempt.pk)
    assert run_attempts.end_attempt(lost.attempt.pk, RunStatus.CANCELLED, "cancelled on request") is None
    assert Run.objects.get(pk=run.pk).status == "running"


# --- the reconciler: lost messages -----------------------------------------------------------------


def test_an_admitted_run_nobody_picked_up_is_enqueued_again(alice, enqueued, sweep):
    run = admitted_run(alice)
    enqueued.clear()

    assert sweep(now=later(TIMEOUT_S - 5)).enqueued_again == []
    report = sweep(now=later())

    assert report.enqueued_again == [run.pk] and enqueued == [run.pk]
    # Sent again just now: a sweep within the next timeout leaves it.
    assert sweep(now=later(TIMEOUT_S - 5)).enqueued_again == []


def test_a_queued_run_whose_message_was_lost_gets_an_admission_sweep(alice, make_run, admissions, sweep):
    run = make_run(alice, status=RunStatus.QUEUED, status_changed_at=timezone.now() - timedelta(hours=1))

    report = sweep()

    assert report.enqueued_again == [run.pk]
    assert admissions == [None]


# --- retention ---------------------------------------------------------------------------------------


def make_checkpoints(run: Run, accuracy_by_step: dict[int, float]) -> dict[int, Path]:
    return {step: write_checkpoint(run, step, {"val/acc/mean@1": acc}) for step, acc in accuracy_by_step.items()}


def test_retention_keeps_the_last_n_and_the_best_k_and_deletes_the_rest(alice):
    run, _ = running_run(alice, retention={"keep_last": 2, "keep_best": 1})
    # best by val/acc: step 20 (0.9); last two: 40 and 50.
    folders = make_checkpoints(run, {10: 0.5, 20: 0.9, 30: 0.6, 40: 0.7, 50: 0.4})

    deleted = retention.apply_retention(Run.objects.get(pk=run.pk))

    assert sorted(deleted) == [10, 30]
    assert {step for step, folder in folders.items() if folder.exists()} == {20, 40, 50}
    live = Checkpoint.objects.filter(run=run, deleted_at__isnull=True).values_list("step", flat=True)
    assert sorted(live) == [20, 40, 50]
    assert Checkpoint.objects.filter(run=run).count() == 5  # deleted rows stay as history


def test_the_periodic_retention_task_applies_every_runs_policy(alice):
    from workers.tasks import apply_checkpoint_retention

    first, _ = running_run(alice, retention={"keep_last": 1, "keep_best": 0})
    second, _ = running_run(alice, retention={"keep_last": 2, "keep_best": 0})
    for run in (first, second):
        make_checkpoints(run, {1: 0.1, 2: 0.2, 3: 0.3})

    assert apply_checkpoint_retention() == {str(first.pk): [1, 2], str(second.pk): [1]}
    assert apply_checkpoint_retention() == {}  # nothing left to delete


def test_retention_by_min_keeps_the_lowest_and_ignores_checkpoints_without_the_metric(alice):
    run, _ = running_run(alice, retention={"keep_last": 1, "keep_best": 1, "metric": "val/loss", "mode": "min"})
    write_checkpoint(run, 10, {"val/loss": 0.3})
    write_checkpoint(run, 20, {"val/loss": 0.1})
    write_checkpoint(run, 30, {})
    write_checkpoint(run, 40, {"val/loss": 0.2})

    assert sorted(retention.apply_retention(Run.objects.get(pk=run.pk))) == [10, 30]


def test_retention_never_deletes_a_checkpoint_a_fork_starts_from(alice):
    run, _ = running_run(alice, retention={"keep_last": 1, "keep_best": 0})
    folders = make_checkpoints(run, {10: 0.5, 20: 0.6, 30: 0.7})
    run_launch.fork_run(alice, Run.objects.get(pk=run.pk), 10)

    assert retention.apply_retention(Run.objects.get(pk=run.pk)) == [20]
    assert folders[10].exists() and folders[30].exists() and not folders[20].exists()


def test_retention_refuses_a_path_outside_the_runs_folder(alice, tmp_path):
    run, _ = running_run(alice, retention={"keep_last": 1, "keep_best": 0})
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("not ours")
    record(run, [CheckpointEvent(step=1, path=str(outside), metrics={})])
    # A symlink inside the run's folder that points outside is refused too.
    link = run_attempts.run_dir(run.pk) / "checkpoints" / "step-000002"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    record(run, [CheckpointEvent(step=2, path=str(link), metrics={})])
    write_checkpoint(run, 3)

    assert retention.apply_retention(Run.objects.get(pk=run.pk)) == []
    assert (outside / "data").read_text() == "not ours"
    assert Checkpoint.objects.filter(run=run, deleted_at__isnull=True).count() == 3


def test_a_bad_retention_override_is_refused_naming_each_key(alice):
    with pytest.raises(SpecError) as raised:
        run_launch.create_run(alice, {}, retention={"keep_last": 0, "mode": "best", "keep_everything": True})
    assert {field for field, _ in raised.value.problems} == {
        "retention.keep_last", "retention.mode", "retention.keep_everything",
    }  # fmt: skip
    assert Run.objects.count() == 0


# --- fork, clone, diff --------------------------------------------------------------------------------


def test_a_fork_starts_from_the_parents_checkpoint_with_its_metrics_up_to_the_step(alice, admissions):
    parent, _ = running_run(alice)
    for step in range(1, 7):
        beat(parent, step)
    folder = write_checkpoint(parent, 4)

    child = run_launch.fork_run(alice, Run.objects.get(pk=parent.pk), 4, {"training": {"lr": 1e-4}})

    assert (child.parent_id, child.forked_from_step) == (parent.pk, 4)
    assert child.spec["training"]["lr"] == 1e-4
    assert child.spec["training"]["steps"] == parent.spec["training"]["steps"]
    assert child.current_step == 4
    assert sorted(MetricPoint.objects.filter(run=child).values_list("step", flat=True)) == [1, 2, 3, 4]
    if Run.objects.get(pk=child.pk).status == RunStatus.QUEUED:
        lifecycle.transition(child.pk, RunStatus.ADMITTED, "admitted by the test")
    claim = run_attempts.claim_run(child.pk, "host-c", 3333)
    assert claim.resume_from == folder and claim.attempt.resumed_from_step == 4


def test_a_fork_needs_a_checkpoint_at_that_step_and_steps_beyond_it(alice):
    parent, _ = running_run(alice)
    write_checkpoint(parent, 4)

    with pytest.raises(SpecError, match="no checkpoint at step 3; it has: \\[4\\]"):
        run_launch.fork_run(alice, parent, 3)
    with pytest.raises(SpecError) as raised:
        run_launch.fork_run(alice, parent, 4, {"training": {"steps": 4}})
    assert raised.value.problems[0][0] == "training.steps"
    assert Run.objects.count() == 1


def test_a_fork_takes_the_name_it_is_given_else_one_after_its_parent(alice):
    parent, _ = running_run(alice)
    write_checkpoint(parent, 4)

    renamed = run_launch.fork_run(alice, parent, 4, {"name": "lower lr", "training": {"lr": 1e-4}})
    named = run_launch.fork_run(alice, parent, 4, {"name": "from the overrides"}, name="from the argument")
    unnamed = run_launch.fork_run(alice, parent, 4)

    assert (renamed.name, renamed.spec["name"]) == ("lower lr", "lower lr")
    assert named.name == "from the argument"
    assert unnamed.name == f"{parent.name} (fork @4)"


def test_spec_differences_are_leaves_with_dotted_paths():
    a = {"training": {"lr": 3e-4, "steps": 60}, "seed": 0, "tags": [1, 2]}
    b = {"training": {"lr": 1e-3, "steps": 60}, "seed": 0, "tags": [1, 3], "extra": {"x": 1}}

    assert spec_differences(a, b) == [
        {"path": "extra.x", "a": None, "b": 1},
        {"path": "tags", "a": [1, 2], "b": [1, 3]},
        {"path": "training.lr", "a": 3e-4, "b": 1e-3},
    ]


def test_merge_spec_merges_mappings_and_replaces_the_rest():
    base = {"training": {"lr": 1, "steps": 2}, "seed": 0}
    merged = run_launch.merge_spec(base, {"training": {"lr": 5}, "seed": 3})
    assert merged == {"training": {"lr": 5, "steps": 2}, "seed": 3}
    assert base == {"training": {"lr": 1, "steps": 2}, "seed": 0}


# --- alerts -----------------------------------------------------------------------------------------


class Webhook:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def webhook_in(settings):
    """A Webhook that settings send alerts to while the block runs."""
    hook = Webhook()
    settings.ROLLYARD_ALERT_WEBHOOK_URL = hook.url
    try:
        yield hook
    finally:
        hook.close()


def point_at_a_closed_port(settings) -> None:
    closed = Webhook()
    closed.close()  # a port nothing listens on any more
    settings.ROLLYARD_ALERT_WEBHOOK_URL = closed.url


@pytest.fixture
def webhook(lifecycle_settings):
    with webhook_in(lifecycle_settings) as hook:
        yield hook


def test_a_dead_run_is_posted_to_the_webhook_once(alice, admissions, webhook, sweep):
    run, _ = running_run(alice)

    sweep(now=later())
    sweep(now=later())

    assert [body["kind"] for body in webhook.received] == ["dead"]
    body = webhook.received[0]
    assert body["run"]["id"] == run.pk and "no heartbeat" in body["message"]
    assert Alert.objects.get(run=run).webhook_delivered_at is not None


def test_a_run_with_heartbeats_but_no_progress_is_stuck_until_it_moves(alice, webhook, lifecycle_settings, sweep):
    run, _ = running_run(alice)
    beat(run, 3)
    lifecycle_settings.ROLLYARD_STUCK_AFTER_S = 30
    # Heartbeats continue (the engine beats within a long step) but the step stays at 3.
    Run.objects.filter(pk=run.pk).update(step_advanced_at=timezone.now() - timedelta(seconds=45))

    sweep()
    alert = Alert.objects.get(run=run, kind="stuck")
    assert "stuck at step 3" in alert.message and alert.resolved_at is None

    beat(run, 4)
    sweep()
    assert Alert.objects.get(pk=alert.pk).resolved_at is not None
    assert [body["kind"] for body in webhook.received] == ["stuck"]


def test_a_run_idle_above_the_threshold_over_the_window_alerts(alice, webhook, lifecycle_settings, sweep):
    lifecycle_settings.ROLLYARD_IDLE_WINDOW_STEPS = 3
    lifecycle_settings.ROLLYARD_IDLE_THRESHOLD = 0.8
    run, _ = running_run(alice)
    # Mean of the last three: (0.5 + 0.9 + 0.9) / 3 = 0.77, under 0.8; then (0.9 + 0.9 + 0.95) / 3 = 0.92.
    for step, idle in enumerate([0.1, 0.5, 0.9, 0.9], start=1):
        beat(run, step, {"trainer/idle_ratio": idle})
    sweep()
    assert not Alert.objects.filter(run=run).exists()

    beat(run, 5, {"trainer/idle_ratio": 0.95})
    sweep()
    assert "averages 0.92" in Alert.objects.get(run=run, kind="idle").message
    assert [body["kind"] for body in webhook.received] == ["idle"]


def test_a_failing_webhook_never_breaks_the_sweep_and_is_retried(alice, admissions, lifecycle_settings, sweep):
    point_at_a_closed_port(lifecycle_settings)
    run, _ = running_run(alice)

    report = sweep(now=later())

    assert report.requeued == [run.pk] and report.alerts_delivered == 0
    alert = Alert.objects.get(run=run)
    assert alert.webhook_delivered_at is None and "ConnectError" in alert.webhook_error

    with webhook_in(lifecycle_settings) as hook:
        assert alerts.deliver_pending() == 1
    assert [body["kind"] for body in hook.received] == ["dead"]


def test_an_unreachable_webhook_is_tried_once_a_sweep_not_once_an_alert(alice, lifecycle_settings):
    point_at_a_closed_port(lifecycle_settings)
    for _ in range(3):
        run, _ = running_run(alice)
        alerts.open_alert(run, "dead", f"run #{run.pk}: no heartbeat")

    assert alerts.deliver_pending() == 0

    tried = Alert.objects.exclude(webhook_error="").values_list("pk", flat=True)
    assert list(tried) == [min(Alert.objects.values_list("pk", flat=True))]  # the oldest, then it stopped


def test_an_alert_older_than_the_delivery_window_is_not_sent_to_a_webhook_set_up_later(alice, lifecycle_settings):
    lifecycle_settings.ROLLYARD_ALERT_DELIVERY_WINDOW_S = 3600
    old_run, _ = running_run(alice)
    stale = alerts.open_alert(old_run, "dead", "days ago")
    Alert.objects.filter(pk=stale.pk).update(opened_at=timezone.now() - timedelta(hours=2))
    new_run, _ = running_run(alice)
    alerts.open_alert(new_run, "dead", "just now")

    with webhook_in(lifecycle_settings) as hook:
        assert alerts.deliver_pending() == 1
    assert [body["message"] for body in hook.received] == ["just now"]


# --- the REST API and the pages -------------------------------------------------------------------


def test_the_api_lists_attempts_and_checkpoints_and_forks_from_one(alice, api_alice):
    run, _ = running_run(alice)
    write_checkpoint(run, 3, {"val/acc/mean@1": 0.5})

    attempts = api_alice.get(f"/api/runs/{run.pk}/attempts/").json()
    assert [(a["number"], a["outcome"], a["worker_host"]) for a in attempts] == [(1, "running", "host-a")]
    checkpoints = api_alice.get(f"/api/runs/{run.pk}/checkpoints/").json()
    assert [(c["step"], c["size_bytes"], c["deleted"]) for c in checkpoints] == [(3, 1024, False)]

    response = api_alice.post(
        f"/api/runs/{run.pk}/fork/", {"step": 3, "overrides": {"training": {"lr": 1e-4}}}, format="json"
    )
    assert response.status_code == 201, response.content
    child = response.json()
    assert (child["parent"], child["forked_from_step"], child["spec"]["training"]["lr"]) == (run.pk, 3, 1e-4)

    renamed = api_alice.post(f"/api/runs/{run.pk}/fork/", {"step": 3, "overrides": {"name": "lower lr"}}, format="json")
    assert renamed.status_code == 201 and renamed.json()["name"] == "lower lr"

    missing = api_alice.post(f"/api/runs/{run.pk}/fork/", {"step": 2}, format="json")
    assert missing.status_code == 400
    assert "no checkpoint at step 2" in missing.json()["error"]["fields"]["step"][0]


def test_the_api_clones_and_launches_with_a_retention_override(alice, api_alice):
    run = run_launch.create_run(alice, {"name": "first", "training": {"steps": 9}}, retention={"keep_last": 5})

    clone = api_alice.get(f"/api/runs/{run.pk}/clone/").json()
    assert clone["spec"]["training"]["steps"] == 9 and "name" not in clone["spec"]
    assert clone["retention"]["keep_last"] == 5
    clone["spec"]["training"]["steps"] = 12
    launched = api_alice.post("/api/runs/", {"spec": clone["spec"], "retention": {"keep_best": 2}}, format="json")
    assert launched.status_code == 201, launched.content
    assert launched.json()["retention"] == {"keep_last": 3, "keep_best": 2, "metric": "val/acc/mean@1", "mode": "max"}

    refused = api_alice.post("/api/runs/", {"spec": {}, "retention": {"keep_last": 0}}, format="json")
    assert refused.status_code == 400
    assert "retention.keep_last" in refused.json()["error"]["fields"]


def test_the_api_diffs_two_runs_and_hides_another_teams(alice, bob, api_alice):
    a = run_launch.create_run(alice, {"training": {"lr": 3e-4}})
    b = run_launch.create_run(alice, {"training": {"lr": 1e-3}, "seed": 7})
    hidden = run_launch.create_run(bob, {})

    diff = api_alice.get(f"/api/runs/diff/?a={a.pk}&b={b.pk}").json()
    paths = {d["path"]: (d["a"], d["b"]) for d in diff["differences"]}
    assert paths == {"training.lr": (3e-4, 1e-3), "seed": (0, 7)}  # both are named "grpo on arith"
    assert api_alice.get(f"/api/runs/diff/?a={a.pk}&b={hidden.pk}").status_code == 404
    assert api_alice.get(f"/api/runs/diff/?a={a.pk}").status_code == 400


def test_the_run_page_shows_attempts_checkpoints_and_forks_from_a_form(alice, client):
    client.force_login(alice)
    run, _ = running_run(alice)
    write_checkpoint(run, 3, {"val/acc/mean@1": 0.625})

    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="run-attempts"' in page and "host-a (pid 1111)" in page
    assert 'data-step="3"' in page and "0.625" in page
    assert '<span id="run-checkpoint-bytes">1.0\xa0KB</span>' in page  # 1024 bytes
    assert "keep the last 3 and the best 1" in page

    response = client.post(f"/runs/{run.pk}/fork/", {"step": "3", "overrides": "training: {lr: 0.0001}"})
    child = Run.objects.get(parent=run)
    assert response.status_code == 302 and response["Location"] == f"/runs/{child.pk}/"
    assert child.spec["training"]["lr"] == 1e-4
    child_page = client.get(f"/runs/{child.pk}/").content.decode()
    assert f"forked from <a href=\"/runs/{run.pk}/\">#{run.pk}</a> at step 3" in child_page

    diff = client.get(f"/runs/diff/?a={run.pk}&b={child.pk}").content.decode()
    assert 'data-path="training.lr"' in diff

    client.post(f"/runs/{run.pk}/fork/", {"step": "3", "overrides": "name: lower lr\ntraining: {lr: 0.0001}"})
    assert Run.objects.filter(parent=run).latest("pk").name == "lower lr"


def test_launching_from_the_clone_form_records_the_parent(alice, client):
    client.force_login(alice)
    source = run_launch.create_run(alice, {"name": "source"})

    form = client.get(f"/runs/new/?from={source.pk}").content.decode()
    assert 'id="clone-of"' in form and 'name="from"' in form
    response = client.post("/runs/new/", {"spec": "training: {steps: 5}", "from": str(source.pk)})

    assert response.status_code == 302
    assert Run.objects.get(parent=source).total_steps == 5


def test_a_member_forks_a_teammates_run_but_a_viewer_and_another_team_cannot(teams):
    run, _ = running_run(teams.admin, team=teams.team)
    write_checkpoint(run, 3)
    fork = {"step": 3}

    assert teams.client(teams.member).post(f"/api/runs/{run.pk}/fork/", fork, format="json").status_code == 201
    refused = teams.client(teams.viewer).post(f"/api/runs/{run.pk}/fork/", fork, format="json")
    assert refused.status_code == 403 and "member" in refused.json()["error"]["message"]
    assert teams.client(teams.outsider).post(f"/api/runs/{run.pk}/fork/", fork, format="json").status_code == 404
    assert Run.objects.filter(parent=run).count() == 1
