"""The run websocket through the whole ASGI stack (origin check, session-or-token auth,
routing) and the real Redis channel layer at REDIS_URL. transaction=True: the services'
on_commit pushes must really fire."""

import copy
import os
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from accounts.models import ApiToken, Role
from accounts.services import add_member, create_token, default_team, revoke_token
from engine.events import LengthHistogram, Metrics
from rollyard.asgi import application
from runs import services
from runs.models import Run, RunStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

ORIGIN = (b"origin", b"http://localhost")


@pytest.fixture(autouse=True)
def own_channel_prefix(settings):
    """Groups of this test process only: another test session on the same Redis may be
    watching a run with the same id (ids restart in every test database)."""
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = layers  # Channels drops its cached layer on this change


@database_sync_to_async
def user_with_token(username: str, **fields) -> tuple:
    user = get_user_model().objects.create_user(username, password="pw", **fields)
    return user, create_token(user, "socket")[1]


@database_sync_to_async
def run_of(user, status: str = RunStatus.QUEUED) -> Run:
    # Stored directly: create_run would hand the run to the workers' broker on commit.
    return Run.objects.create(owner=user, team=default_team(user), name="live", spec={}, status=status, total_steps=3)


@database_sync_to_async
def session_cookie_of(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def socket(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, headers=[ORIGIN, *headers])


async def closed_with(communicator: WebsocketCommunicator) -> int:
    """The close code of a socket the server accepts and then closes at once."""
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    message = await communicator.receive_output(timeout=10)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def test_without_credentials_the_socket_is_closed_with_4401():
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    assert await closed_with(socket(f"/ws/runs/{run.id}/")) == 4401


async def test_a_forged_token_is_closed_with_4401_even_with_a_session():
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    cookie = await session_cookie_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/?token=forged", (b"cookie", cookie))
    assert await closed_with(communicator) == 4401


async def test_a_revoked_token_is_closed_with_4401():
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    await database_sync_to_async(lambda: revoke_token(ApiToken.objects.get(user=alice)))()
    assert await closed_with(socket(f"/ws/runs/{run.id}/?token={token}")) == 4401


async def test_another_teams_run_is_closed_with_4403():
    alice, _ = await user_with_token("alice")
    _, bob_token = await user_with_token("bob")
    run = await run_of(alice)
    assert await closed_with(socket(f"/ws/runs/{run.id}/?token={bob_token}")) == 4403
    assert await closed_with(socket(f"/ws/runs/{run.id + 1000}/?token={bob_token}")) == 4403


async def test_a_viewer_of_the_runs_team_may_watch_it():
    alice, _ = await user_with_token("alice")
    viewer, viewer_token = await user_with_token("victor")
    run = await run_of(alice)
    await database_sync_to_async(add_member)(run.team, viewer, Role.VIEWER)

    communicator = socket(f"/ws/runs/{run.id}/?token={viewer_token}")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    assert (await communicator.receive_json_from(timeout=10))["run"]["id"] == run.id
    await communicator.disconnect()


async def test_a_foreign_origin_is_refused():
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    communicator = WebsocketCommunicator(
        application, f"/ws/runs/{run.id}/?token={token}", headers=[(b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert not connected


async def test_a_session_cookie_authenticates_and_hello_describes_the_run():
    alice, _ = await user_with_token("alice")
    run = await run_of(alice, RunStatus.RUNNING)
    communicator = socket(f"/ws/runs/{run.id}/", (b"cookie", await session_cookie_of(alice)))

    connected, _ = await communicator.connect(timeout=10)
    assert connected
    hello = await communicator.receive_json_from(timeout=10)

    assert hello["type"] == "hello"
    assert {key: hello["run"][key] for key in ("id", "status", "current_step", "total_steps")} == {
        "id": run.id,
        "status": "running",
        "current_step": 0,
        "total_steps": 3,
    }
    await communicator.disconnect()


async def test_recorded_events_and_status_changes_are_pushed_live():
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/?token={token}")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    assert (await communicator.receive_json_from(timeout=10))["type"] == "hello"

    await database_sync_to_async(services.transition)(run.id, RunStatus.ADMITTED, "no quota applies")
    admitted = await communicator.receive_json_from(timeout=10)
    assert (admitted["type"], admitted["status"]) == ("status", "admitted")
    await database_sync_to_async(services.transition)(run.id, RunStatus.RUNNING, "picked up")
    status = await communicator.receive_json_from(timeout=10)
    assert (status["type"], status["status"], status["reason"]) == ("status", "running", "picked up")
    assert status["started_at"] is not None

    batch = [
        Metrics(step=1, values={"reward/mean": 0.5}),
        LengthHistogram(step=1, bin_edges=[0, 32, 64], counts=[7, 1]),
    ]
    await database_sync_to_async(services.record_events)(run.id, batch)
    pushed = await communicator.receive_json_from(timeout=10)

    assert pushed["type"] == "events"
    assert [event["kind"] for event in pushed["events"]] == ["metrics", "length_histogram"]
    assert pushed["events"][0]["values"] == {"reward/mean": 0.5}
    assert pushed["events"][1]["counts"] == [7, 1]

    await database_sync_to_async(services.request_cancel)(alice, run)
    cancelling = await communicator.receive_json_from(timeout=10)
    assert (cancelling["status"], cancelling["cancel_requested"]) == ("running", True)
    await communicator.disconnect()
