"""Rate limits on failed sign-ins and failed token uses (accounts.ratelimit), counted in
the real Redis cache at REDIS_URL: past the limit a 429 with Retry-After, whatever the
credentials, until the window that opened with the first failure closes."""

import time

import pytest
from django.test import Client

from accounts.services import create_token

pytestmark = pytest.mark.django_db

LOGIN_WINDOW_S = 300
TOKEN_WINDOW_S = 60


@pytest.fixture
def small_limits(settings) -> None:
    # 3 sign-in failures per address and username, 5 per address, 3 token failures.
    settings.ROLLYARD_RATE_LIMITS = {
        "login": (3, LOGIN_WINDOW_S),
        "login_address": (5, LOGIN_WINDOW_S),
        "token": (3, TOKEN_WINDOW_S),
    }


def sign_in(client: Client, username: str, password: str, path: str = "/accounts/login/"):
    return client.post(path, {"username": username, "password": password})


def from_address(address: str) -> Client:
    return Client(REMOTE_ADDR=address)


def retry_after(response) -> int:
    return int(response["Retry-After"])


# --- sign-ins ------------------------------------------------------------------------------------


def test_the_fourth_failed_sign_in_is_refused_with_429_even_with_the_right_password(alice, small_limits):
    client = from_address("10.0.0.1")
    for _ in range(3):
        assert sign_in(client, "alice", "wrong").status_code == 200  # the form again, with its error

    refused = sign_in(client, "alice", "alice-pw")

    assert refused.status_code == 429
    # The window opened with the first failure, under a second ago: 300 s, give or take one.
    assert LOGIN_WINDOW_S - 2 <= retry_after(refused) <= LOGIN_WINDOW_S
    assert f"{retry_after(refused)} s" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    # Another address, or another username from this one, is not held up.
    assert sign_in(from_address("10.0.0.2"), "alice", "alice-pw").status_code == 302
    assert sign_in(client, "bob", "wrong").status_code == 200


def test_a_successful_sign_in_clears_the_usernames_count(alice, small_limits):
    client = from_address("10.0.0.3")
    for _ in range(2):
        assert sign_in(client, "alice", "wrong").status_code == 200
    assert sign_in(client, "alice", "alice-pw").status_code == 302
    client.logout()
    # 2 failures were forgotten: 2 more (4 in all, but 2 since the success) stay under 3.
    for _ in range(2):
        assert sign_in(client, "alice", "wrong").status_code == 200
    assert sign_in(client, "alice", "alice-pw").status_code == 302


def test_one_address_guessing_many_usernames_is_held_up_too(db, small_limits):
    client = from_address("10.0.0.4")
    # 5 failures per address, each for another username (1 each, under the per-user 3).
    for index in range(5):
        assert sign_in(client, f"user{index}", "guess").status_code == 200
    assert sign_in(client, "user9", "guess").status_code == 429


def test_the_admins_sign_in_form_shares_the_count(staff, small_limits):
    client = from_address("10.0.0.5")
    assert sign_in(client, "sam", "wrong").status_code == 200
    assert sign_in(client, "sam", "wrong", "/admin/login/").status_code == 200
    assert sign_in(client, "sam", "wrong", "/admin/login/").status_code == 200
    assert sign_in(client, "sam", "sam-pw", "/admin/login/").status_code == 429
    assert sign_in(client, "sam", "sam-pw").status_code == 429


def test_the_window_closes_and_sign_ins_work_again(alice, settings):
    settings.ROLLYARD_RATE_LIMITS = {**settings.ROLLYARD_RATE_LIMITS, "login": (1, 1)}
    client = from_address("10.0.0.6")
    assert sign_in(client, "alice", "wrong").status_code == 200
    refused = sign_in(client, "alice", "alice-pw")
    assert refused.status_code == 429 and retry_after(refused) == 1
    time.sleep(1.1)
    assert sign_in(client, "alice", "alice-pw").status_code == 302


# --- token uses -----------------------------------------------------------------------------------


def test_the_fourth_failed_token_use_is_refused_with_429_even_for_a_valid_token(alice, small_limits, error_of):
    _, secret = create_token(alice, "cli")
    client = from_address("10.0.1.1")
    for guess in ("Token ry_guess1", "Bearer ry_guess2", "Token"):  # forged, forged, malformed
        assert client.get("/api/me/", HTTP_AUTHORIZATION=guess).status_code == 401

    refused = client.get("/api/me/", HTTP_AUTHORIZATION=f"Token {secret}")

    assert refused.status_code == 429
    assert TOKEN_WINDOW_S - 2 <= retry_after(refused) <= TOKEN_WINDOW_S
    assert error_of(refused)["code"] == "throttled"
    assert "failed token uses" in error_of(refused)["message"]
    # The valid token still works from another address; requests without one are not counted.
    assert from_address("10.0.1.2").get("/api/me/", HTTP_AUTHORIZATION=f"Token {secret}").status_code == 200
    assert client.get("/api/me/").status_code == 401


def test_successful_token_uses_never_count(alice, small_limits):
    _, secret = create_token(alice, "cli")
    client = from_address("10.0.1.3")
    for _ in range(10):
        assert client.get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
