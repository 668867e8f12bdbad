"""The run websocket through the whole ASGI stack (origin check, session-or-token auth,
routing) and the real Redis channel layer at REDIS_URL. transaction=True: the services'
on_commit pushes must really fire."""

import asyncio
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
from runs import alerts, launch, lifecycle, live
from runs.models import AlertKind, Run, RunStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

# A browser on the dashboard at http://localhost:8000: its Origin and the Host it asks for.
HOST = (b"host", b"localhost:8000")
ORIGIN = (b"origin", b"http://localhost:8000")


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


def socket(path: str, *headers: tuple[bytes, bytes], origin: bytes | None = ORIGIN[1], host: bytes = HOST[1],
           scheme: str = "ws") -> WebsocketCommunicator:
    """A handshake as Daphne hands it to the app: Host always, Origin when a browser sends
    it (None: a script's), over ws:// or wss://."""
    sent = [(b"host", host), *([(b"origin", origin)] if origin is not None else []), *headers]

    async def app(scope, receive, send):
        return await application({**scope, "scheme": scheme}, receive, send)

    communicator = WebsocketCommunicator(app, path, headers=sent)
    OPENED.append(communicator)
    return communicator


OPENED: list[WebsocketCommunicator] = []


@pytest.fixture(autouse=True)
async def close_every_socket():
    """Each test's sockets end with the test: a consumer still waiting on the channel
    layer would hold the event loop's teardown."""
    yield
    while OPENED:
        await OPENED.pop().disconnect()


async def closed_with(communicator: WebsocketCommunicator) -> int:
    """The close code of a socket the server accepts and then closes at once."""
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    message = await communicator.receive_output(timeout=10)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def refused_at_handshake(communicator: WebsocketCommunicator) -> bool:
    """True when the handshake itself is refused (Daphne answers it with HTTP 403)."""
    connected, _ = await communicator.connect(timeout=10)
    return not connected


async def hello_of(communicator: WebsocketCommunicator) -> dict:
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    hello = await communicator.receive_json_from(timeout=10)
    assert hello["type"] == "hello", hello
    return hello


@pytest.fixture
def quick_auth_timeout(settings) -> float:
    settings.ROLLYARD_WS_AUTH_TIMEOUT_S = 0.3
    return 0.3


# --- origin: a session cookie counts only from an allowed origin ---------------------------


async def test_a_session_cookie_from_the_sockets_own_origin_authenticates():
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    hello = await hello_of(socket(f"/ws/runs/{run.id}/", (b"cookie", await session_cookie_of(alice))))
    assert hello["run"]["id"] == run.id


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        (b"http://localhost:9000", b"localhost:8000", "ws"),  # same host, another port
        (b"http://localhost", b"localhost:8000", "ws"),  # no port is port 80, not 8000
        (b"https://localhost:8000", b"localhost:8000", "ws"),  # another scheme
        (b"http://localhost:8000", b"localhost:8000", "wss"),  # an http page on a wss socket
        (b"http://evil.example", b"localhost:8000", "ws"),  # another host
        (b"http://evil.example", b"evil.example", "ws"),  # a Host outside ALLOWED_HOSTS
        (b"null", b"localhost:8000", "ws"),  # sandboxed frames and file:// pages
        (b"\xff\xfe", b"localhost:8000", "ws"),
    ],
)
async def test_a_handshake_from_another_origin_is_refused_even_with_a_token(origin, host, scheme):
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    cookie = (b"cookie", await session_cookie_of(alice))
    assert await refused_at_handshake(socket(f"/ws/runs/{run.id}/", cookie, origin=origin, host=host, scheme=scheme))
    assert await refused_at_handshake(socket(f"/ws/runs/{run.id}/?token={token}", origin=origin, host=host, scheme=scheme))


async def test_an_https_page_on_a_wss_socket_is_its_own_origin():
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(
        f"/ws/runs/{run.id}/", (b"cookie", await session_cookie_of(alice)),
        origin=b"https://localhost:8000", host=b"localhost:8000", scheme="wss",
    )
    assert (await hello_of(communicator))["run"]["id"] == run.id


async def test_a_trusted_origin_is_compared_by_scheme_host_and_port(settings):
    # The dashboard served from https://dash.example.com (a proxy in front of Daphne).
    settings.CSRF_TRUSTED_ORIGINS = ["https://dash.example.com"]
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    cookie = (b"cookie", await session_cookie_of(alice))
    path = f"/ws/runs/{run.id}/"

    assert (await hello_of(socket(path, cookie, origin=b"https://dash.example.com")))["run"]["id"] == run.id
    assert (await hello_of(socket(path, cookie, origin=b"https://DASH.example.com:443")))["run"]["id"] == run.id
    for origin in (b"http://dash.example.com", b"https://dash.example.com:8443", b"https://evil.dash.example.com"):
        assert await refused_at_handshake(socket(path, cookie, origin=origin)), origin


async def test_without_an_origin_a_session_cookie_is_ignored(quick_auth_timeout):
    # A script with a stolen cookie: no Origin, so no session; it must bring a token.
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/", (b"cookie", await session_cookie_of(alice)), origin=None)
    assert await closed_with(communicator) == 4401


async def test_without_credentials_the_socket_is_closed_with_4401_after_the_auth_timeout(quick_auth_timeout):
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    loop = asyncio.get_running_loop()
    communicator = socket(f"/ws/runs/{run.id}/")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    opened = loop.time()
    message = await communicator.receive_output(timeout=10)
    assert (message["type"], message["code"]) == ("websocket.close", 4401)
    assert loop.time() - opened >= quick_auth_timeout * 0.9


# --- tokens: header, query, first message ---------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer"])
async def test_a_token_in_the_authorization_header_authenticates_a_client_without_origin(scheme):
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/", (b"authorization", f"{scheme} {token}".encode()), origin=None)
    assert (await hello_of(communicator))["run"]["id"] == run.id
    await communicator.disconnect()


async def test_a_token_in_the_query_authenticates_a_client_without_origin():
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    assert (await hello_of(socket(f"/ws/runs/{run.id}/?token={token}", origin=None)))["run"]["id"] == run.id


async def test_a_token_in_the_first_message_authenticates():
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/", origin=None)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    await communicator.send_json_to({"type": "auth", "token": token})
    hello = await communicator.receive_json_from(timeout=10)
    assert (hello["type"], hello["run"]["id"]) == ("hello", run.id)
    await communicator.disconnect()


@pytest.mark.parametrize(
    "first_message",
    [
        {"text_data": '{"type": "auth", "token": "ry_forged"}'},
        {"text_data": '{"type": "auth", "token": 7}'},
        {"text_data": '{"type": "hello"}'},
        {"text_data": "[1, 2"},
        {"bytes_data": b"\x00\x01"},
    ],
)
async def test_a_first_message_that_does_not_authenticate_closes_with_4401(first_message):
    alice, _ = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/", origin=None)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    await communicator.send_to(**first_message)
    message = await communicator.receive_output(timeout=10)
    assert (message["type"], message["code"]) == ("websocket.close", 4401)


async def test_a_token_beats_a_cookie_and_speaks_for_its_own_user():
    alice, _ = await user_with_token("alice")
    _, bob_token = await user_with_token("bob")
    run = await run_of(alice)
    cookie = (b"cookie", await session_cookie_of(alice))
    # Alice's cookie, Bob's token: the socket is Bob's, who may not see Alice's run.
    assert await closed_with(socket(f"/ws/runs/{run.id}/?token={bob_token}", cookie)) == 4403


async def test_revoking_the_token_closes_its_open_socket_with_4401():
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/", (b"authorization", f"Bearer {token}".encode()), origin=None)
    await hello_of(communicator)
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()
    await database_sync_to_async(lambda: revoke_token(ApiToken.objects.get(user=alice)))()
    message = await communicator.receive_output(timeout=5)
    assert (message["type"], message["code"]) == ("websocket.close", 4401)
    assert loop.time() - revoked_at < 1.0


async def test_failed_token_uses_are_rate_limited_with_4429_shared_with_the_api(settings):
    settings.ROLLYARD_RATE_LIMITS = {**settings.ROLLYARD_RATE_LIMITS, "token": (3, 60)}
    alice, token = await user_with_token("alice")
    run = await run_of(alice)

    # The communicator has no peer address, so its failures count against "unknown":
    # failures 1 and 2 on sockets, 3 through the API from the same address make the limit of 3.
    for _ in range(2):
        assert await closed_with(socket(f"/ws/runs/{run.id}/?token=ry_guess", origin=None)) == 4401
    api = await database_sync_to_async(
        lambda: Client(REMOTE_ADDR="unknown").get("/api/me/", HTTP_AUTHORIZATION="Bearer ry_guess").status_code
    )()
    assert api == 401
    # The 4th try is refused before the token is looked at, even the right one.
    assert await closed_with(socket(f"/ws/runs/{run.id}/?token={token}", origin=None)) == 4429
    # A browser's session is no token use: it still gets in.
    assert (await hello_of(socket(f"/ws/runs/{run.id}/", (b"cookie", await session_cookie_of(alice)))))["run"]["id"] == run.id


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


async def test_recorded_events_and_status_changes_are_pushed_live(record):
    alice, token = await user_with_token("alice")
    run = await run_of(alice)
    communicator = socket(f"/ws/runs/{run.id}/?token={token}")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    assert (await communicator.receive_json_from(timeout=10))["type"] == "hello"

    await database_sync_to_async(lifecycle.transition)(run.id, RunStatus.ADMITTED, "no quota applies")
    admitted = await communicator.receive_json_from(timeout=10)
    assert (admitted["type"], admitted["status"]) == ("status", "admitted")
    await database_sync_to_async(lifecycle.transition)(run.id, RunStatus.RUNNING, "picked up")
    status = await communicator.receive_json_from(timeout=10)
    assert (status["type"], status["status"], status["reason"]) == ("status", "running", "picked up")
    assert status["started_at"] is not None

    batch = [
        Metrics(step=1, values={"reward/mean": 0.5}),
        LengthHistogram(step=1, bin_edges=[0, 32, 64], counts=[7, 1]),
    ]
    await database_sync_to_async(record)(run.id, batch)
    pushed = await communicator.receive_json_from(timeout=10)

    assert pushed["type"] == "events"
    assert [event["kind"] for event in pushed["events"]] == ["metrics", "length_histogram"]
    assert pushed["events"][0]["values"] == {"reward/mean": 0.5}
    assert pushed["events"][1]["counts"] == [7, 1]

    await database_sync_to_async(lifecycle.request_cancel)(alice, run)
    cancelling = await communicator.receive_json_from(timeout=10)
    assert (cancelling["status"], cancelling["cancel_requested"]) == ("running", True)
    await communicator.disconnect()


async def test_an_alert_that_opens_or_resolves_is_pushed_live(record):
    alice, token = await user_with_token("alice")
    run = await run_of(alice, RunStatus.RUNNING)
    rule = await database_sync_to_async(alerts.add_rule)(
        alice, run, {"metric": "reward/mean", "comparison": "below", "threshold": 0.5}
    )
    communicator = socket(f"/ws/runs/{run.id}/?token={token}")
    assert (await hello_of(communicator))["run"]["id"] == run.id

    # Given a reward below the rule's 0.5, when the sweep evaluates the rule: the alert opens.
    await database_sync_to_async(record)(run.id, [Metrics(step=1, values={"reward/mean": 0.25})])
    assert (await communicator.receive_json_from(timeout=10))["type"] == "events"
    await database_sync_to_async(alerts.check_metric_rules)()
    opened = await communicator.receive_json_from(timeout=10)
    assert opened["type"] == "alerts"
    [alert] = opened["alerts"]
    assert (alert["kind"], alert["rule"], alert["resolved_at"]) == ("metric", rule.pk, None)
    assert "(0.25 at step 1)" in alert["message"]

    # The reward back above 0.5: the same alert, resolved.
    await database_sync_to_async(record)(run.id, [Metrics(step=2, values={"reward/mean": 0.75})])
    assert (await communicator.receive_json_from(timeout=10))["type"] == "events"
    await database_sync_to_async(alerts.check_metric_rules)()
    [resolved] = (await communicator.receive_json_from(timeout=10))["alerts"]
    assert resolved["id"] == alert["id"] and resolved["resolved_at"] is not None

    # A run-level alert (stuck) too, and its resolution when the run finishes.
    stuck = await database_sync_to_async(alerts.open_alert)(run, AlertKind.STUCK, "no progress")
    [pushed] = (await communicator.receive_json_from(timeout=10))["alerts"]
    assert (pushed["id"], pushed["kind"], pushed["resolved_at"]) == (stuck.pk, "stuck", None)
    await database_sync_to_async(lifecycle.transition)(run.id, RunStatus.SUCCEEDED, "done")
    assert (await communicator.receive_json_from(timeout=10))["type"] == "status"
    await database_sync_to_async(alerts.resolve_alerts_of_finished_runs)()
    [closed] = (await communicator.receive_json_from(timeout=10))["alerts"]
    assert closed["id"] == stuck.pk and closed["resolved_at"] is not None
    await communicator.disconnect()


# --- the runs list: /ws/runs/ -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_progress_throttle(monkeypatch):
    """Run ids restart in every test database: an earlier test's run #1 must not hold back
    this one's first progress frame."""
    monkeypatch.setattr(live, "_progress_sent_at", {})


async def watching(communicator: WebsocketCommunicator, run_ids: list[int]) -> dict:
    """Connect the list socket, watch `run_ids` and return its "rows" answer."""
    hello = await hello_of(communicator)
    assert "teams" in hello
    await communicator.send_json_to({"type": "watch", "runs": run_ids})
    rows = await communicator.receive_json_from(timeout=10)
    assert rows["type"] == "rows", rows
    return rows


async def test_the_list_socket_watches_only_runs_the_user_may_see():
    alice, alice_token = await user_with_token("alice")
    bob, _ = await user_with_token("bob")
    alices, bobs = await run_of(alice, RunStatus.RUNNING), await run_of(bob)

    communicator = socket(f"/ws/runs/?token={alice_token}")
    rows = await watching(communicator, [alices.id, bobs.id, bobs.id + 1000])

    # Bob's run and a missing one are left out alike.
    assert rows["rows"] == [{"id": alices.id, "status": "running", "cancel_requested": False, "current_step": 0,
                             "total_steps": 3, "summary": {"reward/mean": None, "acc/mean": None}}]
    await database_sync_to_async(lifecycle.transition)(bobs.id, RunStatus.CANCELLED, "by bob")
    assert await communicator.receive_nothing(timeout=0.5)


async def test_a_watched_row_hears_status_changes_and_throttled_progress(record):
    alice, token = await user_with_token("alice")
    run = await run_of(alice, RunStatus.RUNNING)
    communicator = socket("/ws/runs/", (b"cookie", await session_cookie_of(alice)))
    await watching(communicator, [run.id])

    await database_sync_to_async(record)(run.id, [Metrics(step=1, values={"reward/mean": 0.25, "acc/mean": 0.5})])
    first = await communicator.receive_json_from(timeout=10)
    assert first == {"type": "row", "row": {"id": run.id, "status": "running", "cancel_requested": False,
                                             "current_step": 1, "total_steps": 3,
                                             "summary": {"reward/mean": 0.25, "acc/mean": 0.5}}}
    # A second batch within PROGRESS_INTERVAL_S (3 s) of the first: stored, not sent to the list.
    await database_sync_to_async(record)(run.id, [Metrics(step=2, values={"reward/mean": 0.75})])
    assert await communicator.receive_nothing(timeout=0.5)

    # A status change is sent at once, with the progress the throttle held back.
    await database_sync_to_async(lifecycle.request_cancel)(alice, run)
    cancelling = await communicator.receive_json_from(timeout=10)
    assert cancelling["row"] | {"summary": None} == {"id": run.id, "status": "running", "cancel_requested": True,
                                                     "current_step": 2, "total_steps": 3, "summary": None}
    assert cancelling["row"]["summary"] == {"reward/mean": 0.75, "acc/mean": 0.5}
    await database_sync_to_async(lifecycle.transition)(run.id, RunStatus.CANCELLED, "cancel requested")
    assert (await communicator.receive_json_from(timeout=10))["row"]["status"] == "cancelled"


async def test_a_run_launched_in_the_team_reaches_its_members_lists_only():
    alice, alice_token = await user_with_token("alice")
    viewer, viewer_token = await user_with_token("victor")
    outsider, outsider_token = await user_with_token("olga")
    team = await database_sync_to_async(default_team)(alice)
    await database_sync_to_async(add_member)(team, viewer, Role.VIEWER)
    viewers, outsiders = socket(f"/ws/runs/?token={viewer_token}"), socket(f"/ws/runs/?token={outsider_token}")
    await watching(viewers, [])
    await watching(outsiders, [])

    run = await database_sync_to_async(launch.create_run)(alice, {"name": "fresh", "training": {"steps": 5}}, team=team)

    created = await viewers.receive_json_from(timeout=10)
    assert created["type"] == "created"
    assert {key: created["run"][key] for key in ("id", "team", "team_id", "owner", "name", "status")} == {
        "id": run.id, "team": team.name, "team_id": team.id, "owner": "alice", "name": "fresh", "status": "queued"}
    assert await outsiders.receive_nothing(timeout=0.5)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"type": "subscribe"}, 'expected {"type": "watch", "runs": [run id, ...]}'),
        ({"type": "watch", "runs": "1,2"}, "watch: runs must be a list of run ids (whole numbers)"),
        ({"type": "watch", "runs": [1, "2"]}, "watch: runs must be a list of run ids (whole numbers)"),
        ({"type": "watch", "runs": [True]}, "watch: runs must be a list of run ids (whole numbers)"),
        ({"type": "watch", "runs": list(range(101))}, "watch: at most 100 runs, not 101"),
    ],
)
async def test_a_watch_the_server_cannot_read_is_answered_with_the_problem(message, error):
    _, token = await user_with_token("alice")
    communicator = socket(f"/ws/runs/?token={token}")
    await hello_of(communicator)
    await communicator.send_json_to(message)
    assert await communicator.receive_json_from(timeout=10) == {"type": "error", "error": error}
