"""Admission: queued runs start by priority then age when their pool's free capacity and
their team's and owner's quotas allow; the others wait with a reason naming the limit;
finished runs give their capacity back; GPU-hours are counted over a rolling period.

Launches go through runs.launch.create_run, as from the API. Their commit callbacks do
not fire in these tests unless captured, so each test sweeps when it chooses to
(`admit_queued_runs`, the function the Celery task calls).
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role
from accounts.services import add_member
from quotas.admission import gpu_hours_used, plan_pool
from runs.admission import admit_queued_runs
from quotas.models import Accelerator, Allocation, Pool, Quota
from quotas.selectors import queue
from quotas.services import RequestRefused
from runs import lifecycle
from runs import launch as run_launch
from runs.models import Run, RunStatus

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("multi_gpu_runs")]


@pytest.fixture
def h100() -> Pool:
    return Pool.objects.create(name="h100", accelerator=Accelerator.GPU, gpu_type="H100", capacity=8)


def launch(user, team, gpus: int = 1, pool: str = "h100", priority: int = 0, name: str = "r") -> Run:
    spec = {"resources": {"gpus": gpus, "executor": "inprocess"}, "training": {"steps": 2}}
    return run_launch.create_run(user, spec, name=name, team=team, pool=pool, priority=priority)


def statuses(*runs: Run) -> list[str]:
    return [Run.objects.get(pk=run.pk).status for run in runs]


def reasons(pool: Pool) -> dict[int, str]:
    return {decision.allocation.run_id: decision.reason for decision in plan_pool(pool) if not decision.admit}


def test_higher_priority_goes_first_then_the_older_run(teams, h100):
    h100.capacity = 2
    h100.save()
    first = launch(teams.member, teams.team, name="first")
    second = launch(teams.member, teams.team, name="second")
    urgent = launch(teams.admin, teams.team, priority=5, name="urgent")  # newest, but priority 5

    assert sorted(admit_queued_runs()) == sorted([urgent.pk, first.pk])

    assert statuses(first, second, urgent) == ["admitted", "queued", "admitted"]
    assert reasons(h100) == {second.pk: "pool h100 full: 2/2 GPUs in use (this run needs 1)"}


def test_a_team_at_its_quota_waits_while_another_team_takes_the_free_gpus(teams, h100):
    Quota.objects.create(pool=h100, team=teams.team, max_concurrent_gpus=2)
    ml_runs = [launch(teams.member, teams.team, name=f"ml-{i}") for i in range(3)]
    other = launch(teams.outsider, teams.other_team, name="other")  # newest of all

    admit_queued_runs()

    assert statuses(*ml_runs, other) == ["admitted", "admitted", "queued", "admitted"]
    assert reasons(h100) == {ml_runs[2].pk: "team ml quota on h100: 2/2 GPUs in use (this run needs 1)"}


def test_a_user_quota_limits_one_member_and_not_the_rest_of_the_team(teams, h100):
    Quota.objects.create(pool=h100, user=teams.member, max_concurrent_gpus=2)
    mine = [launch(teams.member, teams.team, gpus=2, name=f"max-{i}") for i in range(2)]
    admins = launch(teams.admin, teams.team, gpus=2, name="ada")

    admit_queued_runs()

    assert statuses(*mine, admins) == ["admitted", "queued", "admitted"]
    assert reasons(h100) == {mine[1].pk: "user max quota on h100: 2/2 GPUs in use (this run needs 2)"}


def test_a_large_run_first_in_line_is_not_overtaken_by_smaller_ones(teams, h100):
    h100.capacity = 4
    h100.save()
    running = launch(teams.member, teams.team, gpus=2, name="running")
    admit_queued_runs()
    large = launch(teams.member, teams.team, gpus=4, name="large")
    small = launch(teams.member, teams.team, gpus=1, name="small")  # would fit the 2 free GPUs

    assert admit_queued_runs() == []

    assert statuses(running, large, small) == ["admitted", "queued", "queued"]
    assert reasons(h100) == {
        large.pk: "pool h100 full: 2/4 GPUs in use (this run needs 4)",
        small.pk: f"behind run #{large.pk}, which is first in line for GPUs of pool h100",
    }


def test_a_finished_run_releases_its_gpus_and_the_sweep_after_commit_admits_the_next(
    teams, h100, enqueued, django_capture_on_commit_callbacks
):
    h100.capacity = 1
    h100.save()
    first = launch(teams.member, teams.team, name="first")
    second = launch(teams.member, teams.team, name="second")
    admit_queued_runs()
    lifecycle.transition(first.pk, RunStatus.RUNNING, "picked up")

    # The tests' dispatch fixture runs the requested sweep in-process, then "enqueues".
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.transition(first.pk, RunStatus.SUCCEEDED, "all steps done")

    released = Allocation.objects.get(run=first)
    assert released.released_at is not None and released.admitted_at <= released.released_at
    assert statuses(second) == ["admitted"]
    assert enqueued == [second.pk]


def test_a_run_cancelled_while_queued_leaves_the_queue_having_used_nothing(teams, h100):
    waiting = launch(teams.member, teams.team)

    lifecycle.request_cancel(teams.member, Run.objects.get(pk=waiting.pk))

    allocation = Allocation.objects.get(run=waiting)
    assert allocation.admitted_at is None and allocation.released_at is not None
    assert plan_pool(h100) == []


def test_a_requeued_run_waits_again_in_its_old_place_and_keeps_its_usage_record(teams, h100):
    run = launch(teams.member, teams.team, gpus=2)
    admit_queued_runs()
    lifecycle.transition(run.pk, RunStatus.RUNNING, "picked up")

    lifecycle.transition(run.pk, RunStatus.QUEUED, "worker lost; requeued")

    old, new = Allocation.objects.filter(run=run).order_by("id")
    assert old.admitted_at is not None and old.released_at is not None  # the usage record
    assert new.is_pending and (new.gpus, new.priority, new.requested_at) == (2, 0, old.requested_at)
    assert admit_queued_runs() == [run.pk]


def test_gpu_hours_count_what_was_held_inside_the_rolling_period(teams, h100, make_run):
    now = timezone.now()
    quota = Quota.objects.create(pool=h100, team=teams.team, gpu_hours_per_period=50, period_days=7)
    finished = make_run(teams.member, status=RunStatus.SUCCEEDED, team=teams.team)
    still_running = make_run(teams.member, status=RunStatus.RUNNING, team=teams.team)
    other_team = make_run(teams.outsider, status=RunStatus.RUNNING, team=teams.other_team)
    ledger = [
        # 2 GPUs from 8 to 6 days ago: 1 of those days is inside the window, 2 × 24 h = 48
        (finished, 2, now - timedelta(days=8), now - timedelta(days=6)),
        # 4 GPUs 10 to 9 days ago: before the window, 0
        (finished, 4, now - timedelta(days=10), now - timedelta(days=9)),
        # 1 GPU for the last 3 hours, still held: 3
        (still_running, 1, now - timedelta(hours=3), None),
        # another team's 4 GPUs: not ml's
        (other_team, 4, now - timedelta(hours=5), None),
    ]
    for run, gpus, admitted_at, released_at in ledger:
        Allocation.objects.create(
            run=run, team=run.team, user=run.owner, pool=h100, gpus=gpus, slots=gpus, admitted_at=admitted_at,
            released_at=released_at,
            requested_at=admitted_at,
        )  # fmt: skip

    assert gpu_hours_used(quota, now) == pytest.approx(48 + 3, abs=1e-6)

    # 51 of 50 used: a new launch is refused, naming the limit.
    with pytest.raises(RequestRefused) as refused:
        launch(teams.member, teams.team)
    assert refused.value.problems == [("pool", "GPU-hours of team ml on h100 in the last 7 days used: 51.0/50")]
    # With the limit raised to 60 the same launch is accepted and admitted.
    quota.gpu_hours_per_period = 60
    quota.save()
    accepted = launch(teams.member, teams.team)
    assert admit_queued_runs() == [accepted.pk]


def test_a_run_already_queued_when_the_gpu_hours_run_out_waits_naming_them(teams, h100, make_run):
    quota = Quota.objects.create(pool=h100, team=teams.team, gpu_hours_per_period=120, period_days=30)
    waiting = launch(teams.member, teams.team)
    # 8 GPUs held for the last 15 hours: 120 GPU-hours, the whole quota.
    now = timezone.now()
    earlier = make_run(teams.member, status=RunStatus.RUNNING, team=teams.team)
    Allocation.objects.create(
        run=earlier, team=teams.team, user=teams.member, pool=h100, gpus=8, slots=8, admitted_at=now - timedelta(hours=15)
    )
    quota.max_concurrent_gpus = 16  # so only the GPU-hours hold it back
    quota.save()

    assert admit_queued_runs() == []
    assert reasons(h100) == {waiting.pk: "GPU-hours of team ml on h100 in the last 30 days used: 120.0/120"}


def test_rays_free_gpus_cap_what_is_admitted_beyond_the_pools_arithmetic(teams, h100):
    # The pool has 8 free GPUs by its own count; the Ray cluster has 2 free.
    runs = [launch(teams.member, teams.team, name=f"r{i}") for i in range(3)]

    assert admit_queued_runs(cluster_free_gpus=2) == [runs[0].pk, runs[1].pk]
    assert reasons(h100) == {}  # without Ray's numbers (the web tier's view) r2 would fit
    assert plan_pool(h100, cluster_free_gpus=0)[0].reason == "Ray cluster has 0 free GPUs left (this run needs 1)"

    # Ray still shows 2 free: the admitted runs' actors are not placed yet. Both GPUs are
    # promised to them, so nothing more is admitted.
    assert admit_queued_runs(cluster_free_gpus=2) == []
    # Both start (Ray: 0 free), then r0 finishes (Ray: 1 free): r2 gets its GPU.
    for run in runs[:2]:
        lifecycle.transition(run.pk, RunStatus.RUNNING, "picked up")
    lifecycle.transition(runs[0].pk, RunStatus.SUCCEEDED, "all steps done")
    assert admit_queued_runs(cluster_free_gpus=1) == [runs[2].pk]


def test_the_cpu_pool_counts_one_slot_per_run_and_holds_two_by_default(teams):
    runs = [launch(teams.member, teams.team, gpus=0, pool="cpu", name=f"cpu-{i}") for i in range(3)]

    admit_queued_runs()

    assert statuses(*runs) == ["admitted", "admitted", "queued"]
    assert reasons(Pool.objects.get(name="cpu")) == {runs[2].pk: "pool cpu full: 2/2 run slots in use (this run needs 1)"}


def test_an_inactive_pool_admits_nothing_and_says_so(teams, h100):
    waiting = launch(teams.member, teams.team)
    h100.active = False
    h100.save()

    assert admit_queued_runs() == []
    assert reasons(h100) == {waiting.pk: "pool h100 is inactive: it admits nothing until a site admin reopens it"}


def test_the_queue_gives_positions_over_the_whole_pool_but_shows_only_the_users_teams(teams, h100):
    h100.capacity = 1
    h100.save()
    launch(teams.admin, teams.team, name="holds the only GPU")
    admit_queued_runs()
    theirs = launch(teams.outsider, teams.other_team, name="theirs")
    ours = launch(teams.member, teams.team, name="ours")

    entries = queue(teams.viewer)

    assert [(e.run_id, e.position, e.ahead, e.team) for e in entries] == [(ours.pk, 2, 1, "ml")]
    assert entries[0].reason == f"behind run #{theirs.pk}, which is first in line for GPUs of pool h100"
    assert [(e.run_id, e.position, e.reason) for e in queue(teams.outsider)] == [
        (theirs.pk, 1, "pool h100 full: 1/1 GPU in use (this run needs 1)")
    ]


def test_the_worker_refuses_to_start_a_run_admission_has_not_admitted(teams):
    from workers.tasks import execute_run

    waiting = launch(teams.member, teams.team, gpus=0, pool="cpu")

    assert execute_run.run(waiting.pk) == "skipped"
    assert statuses(waiting) == ["queued"]


def test_a_member_of_two_teams_counts_against_each_teams_quota_separately(teams, h100):
    add_member(teams.other_team, teams.member, Role.MEMBER)
    Quota.objects.create(pool=h100, team=teams.team, max_concurrent_gpus=1)
    in_ml = launch(teams.member, teams.team, name="ml")
    in_other = launch(teams.member, teams.other_team, name="other")

    assert sorted(admit_queued_runs()) == sorted([in_ml.pk, in_other.pk])


def test_the_workers_sweep_reads_the_free_gpus_of_the_ray_cluster_it_is_attached_to(teams, h100, monkeypatch):
    import ray

    from workers.capacity import cluster_free_gpus

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.shutdown()  # a Ray an earlier test of the session left running (the engine re-inits on demand)
    assert cluster_free_gpus() is None  # no cluster: trust the pool's capacity
    runs = [launch(teams.member, teams.team, name=f"r{i}") for i in range(3)]
    # A real local Ray whose node declares 2 GPUs (logical resources; no device needed).
    ray.init(num_cpus=1, num_gpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        free = cluster_free_gpus()
        admitted = admit_queued_runs(cluster_free_gpus=free)
    finally:
        ray.shutdown()

    assert free == 2.0
    assert admitted == [runs[0].pk, runs[1].pk]
    assert reasons(h100) == {}  # the pool alone would have room: Ray's numbers held r2 back
