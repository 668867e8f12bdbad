"""Pools and quotas through the API with real tokens: a launch that can never fit is
refused with a 400 naming the limit and stores nothing; quotas are readable by the
teams they bind and writable only by site admins; the queue and usage endpoints and the
queue page answer for the user's teams only."""

from datetime import timedelta

import pytest
from django.utils import timezone

from quotas.models import Accelerator, Allocation, Pool, Quota
from runs.models import Run, RunStatus

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("multi_gpu_runs")]


@pytest.fixture
def h100() -> Pool:
    return Pool.objects.create(name="h100", accelerator=Accelerator.GPU, gpu_type="H100", capacity=8)


def launch(client, gpus: int = 1, pool: str = "h100", **body):
    spec = {"resources": {"gpus": gpus, "executor": "inprocess"}, "training": {"steps": 2}}
    return client.post("/api/runs/", {"spec": spec, "pool": pool, **body}, format="json")


def refusal(response) -> dict:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "cannot_fit"
    return error["fields"]


# --- submit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "pool", "field", "message"),
    [
        (1, "a100", "pool", "unknown pool 'a100'; pools open to launches: cpu, h100"),
        (1, "cpu", "resources.gpus", "pool cpu has no GPUs; this run asks for 1: choose a GPU pool or set 0"),
        (0, "h100", "resources.gpus", "pool h100 is a GPU pool; ask for at least 1 GPU in resources.gpus"),
        (9, "h100", "resources.gpus", "pool h100 has 8 GPUs in all; this run needs 9"),
    ],
)
def test_a_launch_the_pool_can_never_hold_is_refused_naming_the_limit(teams, h100, gpus, pool, field, message):
    response = launch(teams.client(teams.member), gpus=gpus, pool=pool)

    assert refusal(response) == {field: [message]}
    assert not Run.objects.exists() and not Allocation.objects.exists()


def test_an_inactive_pool_takes_no_launches(teams, h100):
    h100.active = False
    h100.save()

    fields = refusal(launch(teams.client(teams.member)))

    assert fields == {"pool": ["inactive pool 'h100'; pools open to launches: cpu"]}


def test_each_quota_limit_a_run_can_never_fit_is_named_with_its_value(teams, h100):
    Quota.objects.create(pool=h100, team=teams.team, max_gpus_per_run=2, max_concurrent_gpus=6)
    Quota.objects.create(pool=h100, user=teams.member, max_concurrent_gpus=3)

    fields = refusal(launch(teams.client(teams.member), gpus=4))

    assert fields == {
        "resources.gpus": [
            "team ml quota on h100 allows at most 2 GPUs per run; this run asks for 4",
            "user max quota on h100 allows 3 GPUs at once; this run needs 4",
        ]
    }
    assert not Run.objects.exists()


def test_a_count_of_one_is_singular_in_refusals_and_on_the_pages(teams, h100, client):
    Pool.objects.filter(name="cpu").update(capacity=1)
    Quota.objects.create(pool=h100, team=teams.team, max_gpus_per_run=1, max_concurrent_gpus=1,
                         gpu_hours_per_period=1, period_days=1)

    fields = refusal(launch(teams.client(teams.member), gpus=2))
    client.force_login(teams.member)
    quota_page = client.get("/queue/quotas/").content.decode()
    launch_form = client.get("/runs/new/").content.decode()

    assert fields == {"resources.gpus": ["team ml quota on h100 allows at most 1 GPU per run; this run asks for 2",
                                         "team ml quota on h100 allows 1 GPU at once; this run needs 2"]}
    assert '<td class="num">1 run slot</td>' in quota_page and "0 / 1 GPU</td>" in quota_page
    assert "per 1 day" in quota_page and "1 days" not in quota_page
    assert "0/1 run slot in use" in launch_form and "1 GPU per run;" in launch_form
    assert "1 GPU at once; 1.0 GPU-hour per 1 day" in launch_form and "of 1.0 GPU-hour left" in launch_form
    assert "1 run slots" not in quota_page + launch_form


def test_a_team_whose_gpu_hours_are_used_up_is_refused_until_the_window_moves(teams, h100, make_run):
    Quota.objects.create(pool=h100, team=teams.team, gpu_hours_per_period=10, period_days=1)
    earlier = make_run(teams.member, status=RunStatus.SUCCEEDED, team=teams.team)
    now = timezone.now()
    # 4 GPUs for 3 hours, ended an hour ago: 12 GPU-hours in the last day, 10 allowed.
    Allocation.objects.create(
        run=earlier, team=teams.team, user=teams.member, pool=h100, gpus=4, slots=4,
        admitted_at=now - timedelta(hours=4), released_at=now - timedelta(hours=1),
    )  # fmt: skip

    fields = refusal(launch(teams.client(teams.member)))

    assert fields == {"pool": ["GPU-hours of team ml on h100 in the last 1 day used: 12.0/10"]}
    assert Run.objects.count() == 1  # only the earlier run


def test_a_launch_that_fits_joins_its_pools_queue_and_the_sweep_admits_it(
    teams, h100, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = launch(teams.client(teams.member), gpus=2)

    assert response.status_code == 201, response.content
    run = Run.objects.get(pk=response.json()["id"])
    allocation = Allocation.objects.get(run=run)
    assert (allocation.pool, allocation.gpus, allocation.slots, allocation.priority) == (h100, 2, 2, 0)
    assert run.status == RunStatus.ADMITTED and enqueued == [run.pk]
    assert run.status_reason == "admitted to pool h100: 2 GPUs"


def test_a_launch_without_a_pool_goes_to_the_cpu_pool(teams):
    response = teams.client(teams.member).post("/api/runs/", {"spec": {"training": {"steps": 2}}}, format="json")

    assert response.status_code == 201, response.content
    assert Allocation.objects.get(run_id=response.json()["id"]).pool.name == "cpu"


def test_only_a_team_admin_may_launch_above_the_default_priority(teams, h100):
    denied = launch(teams.client(teams.member), priority=10)
    allowed = launch(teams.client(teams.admin), priority=10)
    lowered = launch(teams.client(teams.member), priority=-5)

    assert denied.status_code == 403
    assert "admin role" in denied.json()["error"]["message"]
    assert allowed.status_code == 201 and lowered.status_code == 201
    assert sorted(Allocation.objects.values_list("priority", flat=True)) == [-5, 10]


# --- quotas: read by their teams, written by site admins ---------------------------------------


def test_members_read_their_teams_and_their_own_quotas_only(teams, h100):
    team_quota = Quota.objects.create(pool=h100, team=teams.team, max_concurrent_gpus=4)
    own = Quota.objects.create(pool=h100, user=teams.member, max_gpus_per_run=1)
    Quota.objects.create(pool=h100, team=teams.other_team, max_concurrent_gpus=2)

    body = teams.client(teams.member).get("/api/quotas/").json()

    rows = body["results"] if isinstance(body, dict) else body
    assert sorted(row["id"] for row in rows) == sorted([team_quota.pk, own.pk])
    assert {row["team"] for row in rows} == {"ml", None}


@pytest.mark.parametrize("method", ["post", "patch", "delete"])
def test_a_user_who_is_not_a_site_admin_may_not_edit_quotas_even_as_team_admin(teams, h100, method):
    quota = Quota.objects.create(pool=h100, team=teams.team, max_concurrent_gpus=4)
    client = teams.client(teams.admin)  # admin of the team, not of the site
    url = "/api/quotas/" if method == "post" else f"/api/quotas/{quota.pk}/"

    response = getattr(client, method)(url, {"pool": "h100", "team": "ml", "max_concurrent_gpus": 64}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        "only site admins may change pools and quotas; ask one to change your team's limits"
    )
    assert list(Quota.objects.values_list("max_concurrent_gpus", flat=True)) == [4]


def test_a_site_admin_sets_a_quota_and_a_raised_limit_admits_the_waiting_runs(
    teams, staff, h100, enqueued, django_capture_on_commit_callbacks
):
    admin_client = teams.client(staff)
    created = admin_client.post(
        "/api/quotas/", {"pool": "h100", "team": "ml", "max_concurrent_gpus": 1}, format="json"
    )
    assert created.status_code == 201, created.content
    quota_id = created.json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        first, second = (launch(teams.client(teams.member)).json()["id"] for _ in range(2))
    assert enqueued == [first]

    with django_capture_on_commit_callbacks(execute=True):
        raised = admin_client.patch(f"/api/quotas/{quota_id}/", {"max_concurrent_gpus": 2}, format="json")

    assert raised.status_code == 200, raised.content
    assert enqueued == [first, second]


def test_a_quota_names_exactly_one_of_a_team_or_a_user(teams, staff, h100):
    response = teams.client(staff).post(
        "/api/quotas/", {"pool": "h100", "team": "ml", "user": "max", "max_concurrent_gpus": 1}, format="json"
    )

    assert response.status_code == 400
    assert "exactly one of a team or a user" in response.json()["error"]["message"]
    assert not Quota.objects.exists()


def test_pools_are_listed_with_what_they_hold_and_only_site_admins_change_them(teams, staff, h100):
    launch(teams.client(teams.member), gpus=3)  # waits: no sweep ran

    pools = {row["name"]: row for row in teams.client(teams.viewer).get("/api/pools/").json()["results"]}
    denied = teams.client(teams.admin).patch(f"/api/pools/{h100.pk}/", {"capacity": 80}, format="json")
    allowed = teams.client(staff).patch(f"/api/pools/{h100.pk}/", {"capacity": 16}, format="json")

    assert (pools["h100"]["capacity"], pools["h100"]["in_use"], pools["h100"]["queued"]) == (8, 0, 1)
    assert pools["cpu"]["unit"] == "run slots"
    assert denied.status_code == 403
    assert allowed.status_code == 200 and Pool.objects.get(pk=h100.pk).capacity == 16


def test_a_pool_with_runs_on_record_cannot_be_deleted_only_deactivated(teams, staff, h100):
    launch(teams.client(teams.member))

    response = teams.client(staff).delete(f"/api/pools/{h100.pk}/")

    assert response.status_code == 409
    assert "deactivate it instead" in response.json()["error"]["message"]


# --- queue and usage ------------------------------------------------------------------------------


def test_the_queue_endpoint_gives_each_waiting_run_its_position_and_reason(teams, h100):
    Quota.objects.create(pool=h100, team=teams.team, max_concurrent_gpus=4)
    Allocation.objects.create(
        run=Run.objects.create(owner=teams.admin, team=teams.team, name="big", spec={}, status=RunStatus.RUNNING),
        team=teams.team, user=teams.admin, pool=h100, gpus=4, slots=4, admitted_at=timezone.now(),
    )  # fmt: skip
    theirs = launch(teams.client(teams.outsider)).json()["id"]
    ours = launch(teams.client(teams.member)).json()["id"]

    body = teams.client(teams.viewer).get("/api/queue/", {"pool": "h100"}).json()

    assert body["queue"] == [
        {
            "run_id": ours, "run_name": "grpo on arith", "owner": "max", "team": "ml", "pool": "h100", "gpus": 1, "priority": 0,
            "requested_at": body["queue"][0]["requested_at"], "position": 2, "ahead": 1,
            "reason": "team ml quota on h100: 4/4 GPUs in use (this run needs 1)", "fits_now": False,
        }
    ]  # fmt: skip
    # The other team's run is ahead and fits (the next sweep starts it); only its owners see it.
    other = teams.client(teams.outsider).get("/api/queue/").json()["queue"]
    assert [(e["run_id"], e["position"], e["fits_now"]) for e in other] == [(theirs, 1, True)]


def test_usage_counts_gpu_hours_per_team_and_user_for_the_users_teams_only(teams, staff, h100):
    now = timezone.now()
    ledger = [
        # (owner, team, GPUs, hours held, ended hours ago)
        (teams.member, teams.team, 2, 3, 1),  # 6 GPU-hours
        (teams.admin, teams.team, 1, 4, 0),  # 4
        (teams.outsider, teams.other_team, 8, 1, 2),  # 8, another team's
    ]
    for owner, team, gpus, hours, ended in ledger:
        run = Run.objects.create(owner=owner, team=team, name="r", spec={}, status=RunStatus.SUCCEEDED)
        released = now - timedelta(hours=ended)
        Allocation.objects.create(
            run=run, team=team, user=owner, pool=h100, gpus=gpus, slots=gpus,
            admitted_at=released - timedelta(hours=hours), released_at=released,
        )

    mine = teams.client(teams.viewer).get("/api/usage/", {"pool": "h100"}).json()
    everyone = teams.client(staff).get("/api/usage/").json()

    assert [(row["team"], row["gpu_hours"], row["runs"]) for row in mine["teams"]] == [("ml", pytest.approx(10), 2)]
    assert [(row["user"], row["gpu_hours"]) for row in mine["users"]] == [
        ("max", pytest.approx(6)),
        ("ada", pytest.approx(4)),
    ]
    assert [(row["team"], row["gpu_hours"]) for row in everyone["teams"]] == [
        ("ml", pytest.approx(10)),
        ("other", pytest.approx(8)),
    ]
    # The last 2 hours only: max's run ended 1 h ago, 2 GPUs × 1 h = 2; ada's ended now,
    # 1 GPU × 2 h = 2 (equal hours list by name).
    since = (now - timedelta(hours=2)).isoformat()
    recent = teams.client(teams.viewer).get("/api/usage/", {"since": since}).json()
    assert [(row["user"], round(row["gpu_hours"], 2)) for row in recent["users"]] == [("ada", 2.0), ("max", 2.0)]


def test_usage_refuses_a_window_that_ends_before_it_starts(teams):
    response = teams.client(teams.member).get(
        "/api/usage/", {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    )

    assert response.status_code == 400
    assert "since" in response.json()["error"]["fields"]
    # No default window reaches back 30 days before the year 1.
    too_early = teams.client(teams.member).get("/api/usage/", {"until": "0001-01-02T00:00:00Z"})
    assert too_early.status_code == 400 and "until" in too_early.json()["error"]["fields"]


def test_the_queue_page_shows_the_reason_a_run_waits(teams, h100, client):
    h100.capacity = 1
    h100.save()
    Allocation.objects.create(
        run=Run.objects.create(owner=teams.admin, team=teams.team, name="big", spec={}, status=RunStatus.RUNNING),
        team=teams.team, user=teams.admin, pool=h100, gpus=1, slots=1, admitted_at=timezone.now(),
    )  # fmt: skip
    launch(teams.client(teams.member))
    client.force_login(teams.member)

    page = client.get("/queue/").content.decode()

    assert "pool h100 full: 1/1 GPU in use (this run needs 1)" in page
    assert 'href="/queue/"' in page  # the nav link


def test_the_launch_form_lists_the_pools_and_shows_a_refusal_instead_of_launching(teams, h100, client):
    Quota.objects.create(pool=h100, team=teams.team, max_gpus_per_run=2)
    client.force_login(teams.member)

    form = client.get("/runs/new/").content.decode()
    refused = client.post("/runs/new/", {"spec": "resources: {gpus: 4}", "pool": "h100"})

    assert "h100 (H100): 0/8 GPUs in use, 0 queued" in form
    assert "team ml on h100: 2 GPUs per run;" in form
    assert refused.status_code == 400
    assert "team ml quota on h100 allows at most 2 GPUs per run; this run asks for 4" in refused.content.decode()
    assert not Run.objects.exists()


def test_a_clone_is_offered_its_source_runs_pool(teams, h100, client):
    source = launch(teams.client(teams.member), gpus=2).json()["id"]
    client.force_login(teams.member)

    form = client.get(f"/runs/new/?from={source}").content.decode()

    assert '<option value="h100" selected>' in form


def test_site_admins_set_quotas_in_the_django_admin_and_waiting_runs_are_swept(
    teams, staff, h100, client, enqueued, django_capture_on_commit_callbacks
):
    quota = Quota.objects.create(pool=h100, user=teams.member, max_concurrent_gpus=1)
    first, second = (launch(teams.client(teams.member)).json()["id"] for _ in range(2))  # both wait: no sweep yet
    client.force_login(staff)
    form = {"pool": h100.pk, "user": teams.member.pk, "max_concurrent_gpus": 2, "period_days": 30}

    assert client.get("/admin/quotas/pool/").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        saved = client.post(f"/admin/quotas/quota/{quota.pk}/change/", form)

    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert Quota.objects.get().max_concurrent_gpus == 2
    assert sorted(enqueued) == sorted([first, second])
