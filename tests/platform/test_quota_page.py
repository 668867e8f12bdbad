"""The live quota page (/queue/quotas/) and its websocket (/ws/quotas/): the user's teams'
quotas with GPU-hours and GPUs in use, staff seeing every team's, a fresh snapshot pushed
when a run starts or finishes. Through the whole ASGI stack and the real Redis channel
layer; transaction=True so the lifecycle's on_commit pushes fire."""

import copy
import os
import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from accounts.services import create_token
from quotas import services as quota_services
from quotas.models import Accelerator, Allocation, Pool, Quota
from rollyard.asgi import application
from runs import lifecycle
from runs.models import Run, RunStatus

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

