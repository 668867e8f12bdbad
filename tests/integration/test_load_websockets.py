"""Load on a live Daphne (the session's live stack) with real websocket clients (the
`websockets` library): 200 clients on one run all receive every published batch, and a
token revoked mid-stream is refused by the API and has its socket closed within a second
(bench/load.py's scenarios 2 and 3)."""

import asyncio

import pytest
from django.contrib.auth import get_user_model

from accounts.services import create_token, default_team
from bench.load import fan_out, revocation
from runs.models import Run, RunStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

CLIENTS, BATCHES = 200, 20


@pytest.fixture
def watched_run(live_stack):
    user = get_user_model().objects.create_user("watcher")
    run = Run.objects.create(owner=user, team=default_team(user), name="watched", spec={}, status=RunStatus.RUNNING, total_steps=BATCHES)
    return user, run


def test_two_hundred_websocket_clients_on_one_run_all_receive_every_batch(live_stack, watched_run):
    user, run = watched_run
    secret = create_token(user, "fan-out")[1]

    result = asyncio.run(fan_out(live_stack.ws_url, run.pk, secret, clients=CLIENTS, batches=BATCHES))

    assert result["listener_errors"] == [], live_stack.logs()
    assert result["deliveries"] == CLIENTS * BATCHES == 4000
    assert result["clients_with_every_batch"] == CLIENTS


def test_a_token_revoked_mid_stream_stops_its_api_calls_and_its_socket_within_a_second(live_stack, watched_run):
    user, run = watched_run
    manager = create_token(user, "manager")[1]

    def new_token() -> tuple[int, str]:
        token, secret = create_token(user, "revoked mid-stream")
        return token.pk, secret

    result = asyncio.run(revocation(live_stack.base_url, live_stack.ws_url, run.pk, new_token, manager, trials=3))

    assert result["close_codes"] == [4401, 4401, 4401]
    assert max(result["api_401_after_s"]) < 1.0, result
    assert max(result["socket_closed_after_s"]) < 1.0, result
