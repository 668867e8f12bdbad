"""Admission under contention, on the real database.

1. Deterministic (PostgreSQL only): two sweeps of one pool, the second started while the
   first has planned but not committed. With the pool's row lock the second waits and
   plans on what the first committed; without it, both admit on the same free capacity.
   The interleaving is forced with a pause point after planning, so the test fails
   every time the lock is missing (checked by removing it), never by chance.
2. Many simultaneous launches and admission sweeps against one team quota never hold
   more GPUs than the quota allows, and every run is admitted in the end as earlier ones
   finish (PostgreSQL in CI; SQLite, which serialises every writer, elsewhere).

Every thread has its own database connection (Django's are per thread). The sweep a
commit requests runs in the committing thread, the same function the Celery task calls,
so each launch and each finish is one more sweep racing the others.

Run it on PostgreSQL with
DATABASE_URL=postgres://postgres@127.0.0.1:5432/rollyard_quota bin/test tests/integration/test_admission_concurrency.py
"""

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from accounts.models import Role, Team
from accounts.services import add_member
from bench.load import in_threads, most_gpus_ever_held
from runs import admission
from runs.admission import admit_queued_runs
from quotas.models import Accelerator, Allocation, Pool, Quota
from runs import lifecycle
from runs import launch as run_launch
from runs.models import Run, RunStatus, RunStatusChange

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

LAUNCHERS = 16  # each launches one 1-GPU run
SWEEPERS = 4  # each calls the admission sweep in a loop
FINISHERS = 4  # each takes admitted runs through running to succeeded
POOL_GPUS = 8
TEAM_QUOTA_GPUS = 4


@pytest.fixture
def enqueued(monkeypatch) -> list[int]:
    """Runs handed to the workers; requested sweeps run in the requesting thread."""
    calls: list[int] = []
    monkeypatch.setattr("rollyard.dispatch.enqueue_run", calls.append)  # list.append is atomic
    monkeypatch.setattr("rollyard.dispatch.request_admission", lambda pool_id=None: admit_queued_runs(pool_id))
    return calls


def sessions_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_sweep_started_while_another_has_planned_waits_for_its_commit(enqueued, monkeypatch):
    """Pool of 1 GPU. Sweep A plans with only run 1 waiting (admit it) and pauses before
    committing. Run 2 is launched at priority 10, ahead of run 1 in the queue, and sweep
    B starts. Without the pool lock B plans on A's uncommitted state (nothing held, run 2
    first: admit run 2), both commit, and 2 GPUs are held in a 1-GPU pool. With the lock
    B waits, then sees run 1 holding the pool's only GPU: run 2 waits."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite serialises whole transactions, so two sweeps never overlap there")
    pool = Pool.objects.create(name="a100", accelerator=Accelerator.GPU, gpu_type="A100", capacity=1)
    team = Team.objects.create(name="vision")
    member, admin = (get_user_model().objects.create_user(name) for name in ("member", "admin"))
    add_member(team, member, Role.MEMBER)
    add_member(team, admin, Role.ADMIN)
    spec = {"resources": {"gpus": 1, "executor": "inprocess"}, "training": {"steps": 1}}
    # Launches request no sweep here: the two sweeps below are the only ones.
    monkeypatch.setattr("rollyard.dispatch.request_admission", lambda pool_id=None: None)
    first = run_launch.create_run(member, spec, name="first", team=team, pool="a100")

    a_planned, release_a = threading.Event(), threading.Event()
    real_plan_pool = admission.plan_pool

    def plan_then_pause(*args, **kwargs):
        decisions = real_plan_pool(*args, **kwargs)
        if threading.current_thread().name == "sweep-A":
            a_planned.set()
            assert release_a.wait(60), "never released"
        return decisions

    monkeypatch.setattr(admission, "plan_pool", plan_then_pause)
    errors: list[str] = []
    admitted: dict[str, list[int]] = {}

    def sweep(name: str) -> threading.Thread:
        def body() -> None:
            try:
                admitted[name] = admit_queued_runs(pool.pk)
            except Exception as exc:  # collected, so the test fails naming it
                errors.append(f"{name}: {exc!r}")
            finally:
                connection.close()

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        return thread

    sweep_a = sweep("sweep-A")
    assert a_planned.wait(30), errors
    second = run_launch.create_run(admin, spec, name="second", team=team, pool="a100", priority=10)
    sweep_b = sweep("sweep-B")
    # B either waits on A's lock or (without the lock) plans and commits on its own.
    deadline = time.monotonic() + 30
    while sweep_b.is_alive() and sessions_waiting_on_a_lock() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert time.monotonic() < deadline, "sweep B neither waited nor finished"
    release_a.set()
    for thread in (sweep_a, sweep_b):
        thread.join(30)

    assert errors == []
    assert admitted == {"sweep-A": [first.pk], "sweep-B": []}, admitted
    assert most_gpus_ever_held(Allocation.objects.filter(pool=pool)) == 1
    assert Run.objects.get(pk=second.pk).status == RunStatus.QUEUED
    waiting = {decision.allocation.run_id: decision.reason for decision in admission.plan_pool(pool)}
    assert waiting[second.pk].startswith("pool a100 full: 1/1")


def test_simultaneous_launches_and_sweeps_never_admit_more_than_the_team_quota(enqueued):
    pool = Pool.objects.create(name="h100", accelerator=Accelerator.GPU, gpu_type="H100", capacity=POOL_GPUS)
    team = Team.objects.create(name="ml")
    users = [get_user_model().objects.create_user(f"user{i}") for i in range(LAUNCHERS)]
    for user in users:
        add_member(team, user, Role.MEMBER)
    Quota.objects.create(pool=pool, team=team, max_concurrent_gpus=TEAM_QUOTA_GPUS)
    spec = {"resources": {"gpus": 1, "executor": "inprocess"}, "training": {"steps": 1}}
    errors: list[str] = []

    # 1. Every launch at once, with sweeps racing them.
    launches_done = threading.Event()

    def launch(index: int) -> None:
        run_launch.create_run(users[index], spec, name=f"run-{index}", team=team, pool="h100")

    def sweep_until(done: threading.Event) -> Callable[[int], None]:
        def sweep(index: int) -> None:
            while not done.is_set():
                admit_queued_runs()
                # A breath between sweeps: SQLite's lock is not fair, and back-to-back
                # sweeps could starve a launch past its lock timeout.
                time.sleep(0.005)

        return sweep

    start = threading.Barrier(LAUNCHERS + SWEEPERS)
    launchers = in_threads(launch, LAUNCHERS, start, errors)
    sweepers = in_threads(sweep_until(launches_done), SWEEPERS, start, errors)
    for thread in launchers:
        thread.join()
    launches_done.set()
    for thread in sweepers:
        thread.join()
    admit_queued_runs()

    assert errors == []
    assert Run.objects.count() == LAUNCHERS
    held = Allocation.objects.filter(pool=pool, admitted_at__isnull=False, released_at__isnull=True)
    assert sum(held.values_list("gpus", flat=True)) == TEAM_QUOTA_GPUS
    assert Run.objects.filter(status=RunStatus.ADMITTED).count() == TEAM_QUOTA_GPUS
    assert most_gpus_ever_held(Allocation.objects.filter(pool=pool)) == TEAM_QUOTA_GPUS

    # 2. Admitted runs run and finish while sweeps race the releases, until all are done.
    all_done = threading.Event()
    deadline = time.monotonic() + 120

    def finish(index: int) -> None:
        while Run.objects.exclude(status=RunStatus.SUCCEEDED).exists() and time.monotonic() < deadline:
            run = Run.objects.filter(status=RunStatus.ADMITTED).order_by("?").first()
            if run is None:
                time.sleep(0.01)  # the next admission is a sweep away
                continue
            try:
                lifecycle.transition(run.pk, RunStatus.RUNNING, f"picked up by finisher {index}")
            except lifecycle.IllegalTransition:
                continue  # another finisher took it
            lifecycle.transition(run.pk, RunStatus.SUCCEEDED, "all steps done")
        all_done.set()

    start = threading.Barrier(FINISHERS + SWEEPERS)
    finishers = in_threads(finish, FINISHERS, start, errors)
    sweepers = in_threads(sweep_until(all_done), SWEEPERS, start, errors)
    for thread in finishers + sweepers:
        thread.join()

    assert errors == []
    assert Counter(Run.objects.values_list("status", flat=True)) == {RunStatus.SUCCEEDED: LAUNCHERS}
    # Each run was admitted exactly once, and never beyond the quota at any moment.
    admissions = Counter(RunStatusChange.objects.filter(to_status=RunStatus.ADMITTED).values_list("run_id", flat=True))
    assert sorted(admissions.values()) == [1] * LAUNCHERS
    assert sorted(enqueued) == sorted(Run.objects.values_list("pk", flat=True))
    assert most_gpus_ever_held(Allocation.objects.filter(pool=pool)) == TEAM_QUOTA_GPUS
    assert not Allocation.objects.filter(released_at__isnull=True).exists()
