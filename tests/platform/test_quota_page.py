"""The live quota page (/queue/quotas/) and its websocket (/ws/quotas/): the user's teams'
quotas with GPU-hours and GPUs in use, staff seeing every team's, a fresh snapshot pushed
when a run starts or finishes, and by the admission sweep when time alone changes why a
run waits. Through the whole ASGI stack and the real Redis channel layer; transaction=True
so the lifecycle's on_commit pushes fire."""

import copy
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

from accounts.services import create_token
from quotas import services as quota_services
from quotas import live
from quotas.models import Accelerator, Allocation, Pool, Quota
from rollyard.asgi import application
from runs import lifecycle
from runs.models import Run, RunStatus
from workers.tasks import admit_runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def own_channel_prefix(settings):
    """Groups of this test process only (another session may share the Redis)."""
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = layers


@pytest.fixture
def gpu_world(teams):
    """Pool h100 (4 GPUs); team ml may hold 2 at once and 10 GPU-hours a week, team other 1.
    A finished run of ml held 1 GPU for the last 3 hours."""
    pool = Pool.objects.create(name="h100", accelerator=Accelerator.GPU, gpu_type="H100", capacity=4)
    Quota.objects.create(pool=pool, team=teams.team, max_concurrent_gpus=2, gpu_hours_per_period=10, period_days=7)
    Quota.objects.create(pool=pool, team=teams.other_team, max_concurrent_gpus=1)
    now = timezone.now()
    done = Run.objects.create(owner=teams.member, team=teams.team, name="done", spec={}, status=RunStatus.SUCCEEDED)
    Allocation.objects.create(run=done, pool=pool, team=teams.team, user=teams.member, gpus=1, slots=1,
                              requested_at=now - timedelta(hours=3), admitted_at=now - timedelta(hours=3), released_at=now)
    return pool


def queued_run(teams, pool) -> Run:
    """A run of ml's member queued in the pool for 1 GPU, stored directly (no worker)."""
    run = Run.objects.create(owner=teams.member, team=teams.team, name="waits", spec={}, status=RunStatus.QUEUED)
    quota_services.queue(run.pk, teams.team, teams.member, pool, 1, 0, requested_at=timezone.now())
    return run


def rows_by_holder(board: dict) -> dict[str, dict]:
    return {row["holder"]: row for row in board["quotas"]}


async def board_of(communicator: WebsocketCommunicator) -> dict:
    message = await communicator.receive_json_from(timeout=10)
    assert message["type"] == "quotas", message
    return message


def test_the_page_shows_the_teams_quotas_with_hours_used_and_staff_see_every_team(gpu_world, teams, staff, client):
    client.force_login(teams.member)
    page = client.get("/queue/quotas/")
    assert page.status_code == 200
    board = page.context["board"]
    ml = rows_by_holder(board)["team ml"]
    assert set(rows_by_holder(board)) == {"team ml"}  # not team other's
    assert (ml["concurrent_in_use"], ml["max_concurrent_gpus"]) == (0, 2)
    assert ml["gpu_hours_used"] == pytest.approx(3.0, abs=0.01) and ml["gpu_hours_per_period"] == 10
    h100 = next(pool for pool in board["pools"] if pool["name"] == "h100")
    assert (h100["in_use"], h100["capacity"], h100["unit"]) == (0, 4, "GPUs")
    html = page.content.decode()
    assert "3.00 / 10 per 7 days" in html and "0 / 2 GPUs" in html and "team other" not in html
    client.force_login(staff)
    staff_board = client.get("/queue/quotas/").context["board"]
    assert set(rows_by_holder(staff_board)) == {"team ml", "team other"} and staff_board["all_teams"]


def test_without_quotas_the_page_says_only_capacity_limits(teams, client):
    client.force_login(teams.member)
    html = client.get("/queue/quotas/").content.decode()
    assert 'id="quota-empty"' in html and "only pool capacity limits them" in html


async def test_the_socket_pushes_a_fresh_board_when_a_run_starts_and_finishes(gpu_world, teams):
    token = (await database_sync_to_async(create_token)(teams.member, "quotas"))[1]
    communicator = WebsocketCommunicator(application, f"/ws/quotas/?token={token}")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    try:
        first = rows_by_holder(await board_of(communicator))["team ml"]
        assert first["concurrent_in_use"] == 0

        # Launched into the pool; the admission sweep after commit admits it: it holds its GPU.
        run = await database_sync_to_async(queued_run)(teams, gpu_world)
        admitted = await board_of(communicator)
        assert rows_by_holder(admitted)["team ml"]["concurrent_in_use"] == 1
        assert next(p for p in admitted["pools"] if p["name"] == "h100")["in_use"] == 1

        # Two changes in a row (running, then finished) arrive as snapshots at most one
        # per THROTTLE_S, changes heard meanwhile folded in; the last shows the GPU released.
        await database_sync_to_async(lifecycle.transition)(run.pk, RunStatus.RUNNING, "started")
        await database_sync_to_async(lifecycle.transition)(run.pk, RunStatus.SUCCEEDED, "done")
        board = await board_of(communicator)
        while rows_by_holder(board)["team ml"]["concurrent_in_use"] != 0:
            board = await board_of(communicator)
        assert await communicator.receive_nothing(timeout=1.0)  # nothing more is pending
    finally:
        await communicator.disconnect()



# --- the queue page: /queue/ and /ws/queue/ ----------------------------------------------------


def blocked_run(teams, pool) -> Run:
    """Team ml holds its 2 GPUs at once (a running run, stored directly); a run of its
    member then queues for 1 more and waits behind the quota."""
    now = timezone.now()
    holder = Run.objects.create(owner=teams.member, team=teams.team, name="holds-two", spec={}, status=RunStatus.RUNNING)
    Allocation.objects.create(run=holder, pool=pool, team=teams.team, user=teams.member, gpus=2, slots=2,
                              requested_at=now, admitted_at=now)
    return queued_run(teams, pool), holder


async def queue_of(communicator: WebsocketCommunicator) -> dict:
    message = await communicator.receive_json_from(timeout=10)
    assert message["type"] == "queue", message
    return message


def waiting_ids(board: dict) -> list[int]:
    return [entry["run_id"] for entry in board["queue"]]


async def test_the_queue_socket_sends_the_waiting_runs_and_pushes_each_change_of_reason(gpu_world, teams, staff):
    waiting, holder = await database_sync_to_async(blocked_run)(teams, gpu_world)
    tokens = {who: (await database_sync_to_async(create_token)(user, "queue"))[1]
              for who, user in {"member": teams.member, "outsider": teams.outsider}.items()}
    member = WebsocketCommunicator(application, f"/ws/queue/?token={tokens['member']}")
    outsider = WebsocketCommunicator(application, f"/ws/queue/?token={tokens['outsider']}&pool=h100")
    assert (await member.connect(timeout=10))[0] and (await outsider.connect(timeout=10))[0]
    try:
        # The snapshot on connect: the run's place and why it waits; the outsider's page
        # (filtered to h100) lists nothing of team ml's.
        board = await queue_of(member)
        [entry] = board["queue"]
        assert (entry["run_id"], entry["position"], entry["ahead"], entry["pool"]) == (waiting.pk, 1, 0, "h100")
        assert entry["reason"] == "team ml quota on h100: 2/2 GPUs in use (this run needs 1)"
        assert board["waiting_total"] == 1 and [q["holder"] for q in board["quotas"]] == ["team ml"]
        hidden = await queue_of(outsider)
        assert (hidden["queue"], hidden["pool_name"]) == ([], "h100")

        # A site admin closes the pool: the reason changes for every page, pushed.
        gpu_world.active = False
        await database_sync_to_async(quota_services.save_pool_or_quota)(staff, gpu_world)
        closed = await queue_of(member)
        assert closed["queue"][0]["reason"].startswith("pool h100 is inactive")
        assert not next(p for p in closed["pools"] if p["name"] == "h100")["active"]
        assert (await queue_of(outsider))["queue"] == []

        # Reopened, and the holder finishes: the sweep admits the run, which leaves the queue.
        gpu_world.active = True
        await database_sync_to_async(quota_services.save_pool_or_quota)(staff, gpu_world)
        await database_sync_to_async(lifecycle.transition)(holder.pk, RunStatus.SUCCEEDED, "done")
        board = await queue_of(member)
        while waiting_ids(board):
            board = await queue_of(member)
        assert await database_sync_to_async(lambda: Run.objects.get(pk=waiting.pk).status)() == RunStatus.ADMITTED
    finally:
        await member.disconnect()
        await outsider.disconnect()


async def test_a_reconnect_starts_with_a_fresh_snapshot_and_the_anonymous_are_refused(gpu_world, teams, settings):
    settings.ROLLYARD_WS_AUTH_TIMEOUT_S = 0.2
    anonymous = WebsocketCommunicator(application, "/ws/queue/")
    assert (await anonymous.connect(timeout=10))[0]
    assert await anonymous.receive_output(timeout=10) == {"type": "websocket.close", "code": 4401}
    await anonymous.disconnect()

    token = (await database_sync_to_async(create_token)(teams.member, "queue"))[1]
    first = WebsocketCommunicator(application, f"/ws/queue/?token={token}")
    assert (await first.connect(timeout=10))[0]
    assert (await queue_of(first))["queue"] == []
    await first.disconnect()
    # Queued while no socket listened: the next connection's first frame has it.
    waiting, _ = await database_sync_to_async(blocked_run)(teams, gpu_world)
    again = WebsocketCommunicator(application, f"/ws/queue/?token={token}")
    assert (await again.connect(timeout=10))[0]
    try:
        assert waiting_ids(await queue_of(again)) == [waiting.pk]
    finally:
        await again.disconnect()


def test_the_queue_page_is_drawn_from_the_sockets_snapshot_and_lists_a_bounded_number(gpu_world, teams, client, monkeypatch):
    monkeypatch.setattr(live, "QUEUE_ROWS", 1)
    first, _ = blocked_run(teams, gpu_world)
    second = queued_run(teams, gpu_world)
    client.force_login(teams.member)
    page = client.get("/queue/", {"pool": "h100"})
    board = page.context["board"]
    assert waiting_ids(board) == [first.pk] and board["waiting_total"] == 2
    html = page.content.decode()
    assert f'data-run-id="{first.pk}"' in html and f'data-run-id="{second.pk}"' not in html
    assert "2 waiting in all; the first 1 are listed" in html
    assert '"/ws/queue/?pool=h100"' in html  # the page's socket asks for the same pool


# --- time alone: the admission sweep pushes when why a run waits changed ------------------


@pytest.fixture
def hours_world(teams):
    """Pool a100 (3 GPUs), full: team other's run holds 2 GPUs and team ml's run "long" 1,
    admitted 1.8 h ago. Team ml may use 10 GPU-hours in any 7 days; a finished run of ml
    held 2 GPUs for 4 hours from 2 hours after the period's start: 8 GPU-hours, all inside
    it. So ml has used 8 + 1.8 = 9.8 and a run of its member, queued last, waits for 1 GPU
    behind the full pool."""
    pool = Pool.objects.create(name="a100", accelerator=Accelerator.GPU, capacity=3)
    Quota.objects.create(pool=pool, team=teams.team, gpu_hours_per_period=10, period_days=7)
    now = timezone.now()
    period_start = now - timedelta(days=7)

    def hold(owner, team, name: str, gpus: int, admitted_at, released_at=None) -> None:
        status = RunStatus.SUCCEEDED if released_at else RunStatus.RUNNING
        run = Run.objects.create(owner=owner, team=team, name=name, spec={}, status=status)
        Allocation.objects.create(run=run, pool=pool, team=team, user=owner, gpus=gpus, slots=gpus,
                                  requested_at=admitted_at, admitted_at=admitted_at, released_at=released_at)

    hold(teams.outsider, teams.other_team, "big", 2, now - timedelta(hours=1))
    hold(teams.member, teams.team, "long", 1, now - timedelta(hours=1.8))
    hold(teams.member, teams.team, "old", 2, period_start + timedelta(hours=2), period_start + timedelta(hours=6))
    # Through the service, last: its push after commit records the decisions as published.
    return queued_run(teams, pool)


def time_passes(hours: float) -> None:
    """The clock moves on with no event: every allocation's times move `hours` into the
    past (a bulk update: no signal, no push), as if the ledger were read `hours` later."""
    gone = timedelta(hours=hours)
    Allocation.objects.update(requested_at=F("requested_at") - gone, admitted_at=F("admitted_at") - gone,
                              released_at=F("released_at") - gone)


POOL_FULL = "pool a100 full: 3/3 GPUs in use (this run needs 1)"


async def test_the_sweep_pushes_once_when_time_alone_changes_why_a_run_waits(hours_world, teams):
    sweep = database_sync_to_async(admit_runs)
    token = (await database_sync_to_async(create_token)(teams.member, "pages"))[1]
    queue_page = WebsocketCommunicator(application, f"/ws/queue/?token={token}")
    quota_page = WebsocketCommunicator(application, f"/ws/quotas/?token={token}")
    assert (await queue_page.connect(timeout=10))[0] and (await quota_page.connect(timeout=10))[0]
    try:
        [entry] = (await queue_of(queue_page))["queue"]
        assert (entry["run_id"], entry["reason"], entry["fits_now"]) == (hours_world.pk, POOL_FULL, False)
        assert rows_by_holder(await board_of(quota_page))["team ml"]["gpu_hours_used"] == pytest.approx(9.8, abs=0.01)
        # Nothing changed since the last push: a sweep wakes no page.
        assert await sweep() == []
        assert await queue_page.receive_nothing(timeout=1.0) and await quota_page.receive_nothing(timeout=0.1)

        # 0.4 h later "long" has held its GPU 2.2 h: 8 + 2.2 = 10.2 of 10 GPU-hours, used up.
        await database_sync_to_async(time_passes)(0.4)
        assert await sweep() == []
        [entry] = (await queue_of(queue_page))["queue"]
        assert entry["reason"] == "GPU-hours of team ml on a100 in the last 7 days used: 10.2/10"
        assert rows_by_holder(await board_of(quota_page))["team ml"]["gpu_hours_used"] == pytest.approx(10.2, abs=0.01)
        # A second sweep, nothing changed: nothing pushed.
        assert await sweep() == []
        assert await queue_page.receive_nothing(timeout=1.0) and await quota_page.receive_nothing(timeout=0.1)

        # 5 h more: the period's start has moved past all but the last 0.6 h of "old"
        # (2 GPUs: 1.2 GPU-hours left in it) and "long" has 7.2: 8.4 of 10. The hours are
        # back, and so is the reason the run waits.
        await database_sync_to_async(time_passes)(5)
        assert await sweep() == []
        [entry] = (await queue_of(queue_page))["queue"]
        assert entry["reason"] == POOL_FULL
        assert rows_by_holder(await board_of(quota_page))["team ml"]["gpu_hours_used"] == pytest.approx(8.4, abs=0.01)
        assert await queue_page.receive_nothing(timeout=1.0)
    finally:
        await queue_page.disconnect()
        await quota_page.disconnect()


class InLockstep:
    """A real Redis client whose every command waits for all the sweeps to reach it, so
    that concurrent sweeps talk to Redis at the same moment: the race at its narrowest."""

    def __init__(self, client, sweeps: int):
        self.client, self.all_there = client, threading.Barrier(sweeps)

    def __getattr__(self, command: str):
        def in_step(*args, **kwargs):
            self.all_there.wait(timeout=10)
            return getattr(self.client, command)(*args, **kwargs)

        return in_step


def test_of_sweeps_that_notice_the_same_change_at_once_exactly_one_pushes(hours_world, monkeypatch):
    time_passes(0.4)  # team ml's GPU-hours run out (10.2 of 10, as above)
    sweeps = 8
    lockstep = InLockstep(live._redis(settings.REDIS_URL), sweeps)
    monkeypatch.setattr(live, "_redis", lambda url: lockstep)

    def sweep_pushes(_) -> bool:
        try:
            return live.publish_if_decisions_changed()
        finally:
            connection.close()

    with ThreadPoolExecutor(sweeps) as pool:
        pushed = list(pool.map(sweep_pushes, range(sweeps)))
    assert pushed.count(True) == 1


def test_a_quota_row_carries_the_rate_its_gpu_hours_grow_at(hours_world, teams):
    # "long" holds 1 GPU now and nothing of ml was held when the period began: +1 GPU-hour per hour.
    [ml] = live.quota_board(teams.member)["quotas"]
    assert (ml["gpu_hours_used"], ml["gpu_hours_rate"]) == (pytest.approx(9.8, abs=0.01), 1)
    # 5.4 h later "old" (2 GPUs) straddles the period's start: 1 - 2 = -1 GPU-hour per hour.
    time_passes(5.4)
    [ml] = live.quota_board(teams.member)["quotas"]
    assert (ml["gpu_hours_used"], ml["gpu_hours_rate"]) == (pytest.approx(8.4, abs=0.01), -1)
