"""API tokens: many named tokens per user, the secret shown once, only a digest stored,
revocation, and the 401s a bad credential gets."""

import hashlib
from datetime import timedelta

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import LAST_USED_RESOLUTION, create_token, revoke_token

pytestmark = pytest.mark.django_db


def client_with(authorization: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    return client


def test_a_new_token_shows_its_secret_once_and_stores_only_a_digest(api_alice, alice):
    response = api_alice.post("/api/tokens/", {"name": "laptop"}, format="json")

    assert response.status_code == 201, response.content
    created = response.json()
    secret = created["secret"]
    assert created["name"] == "laptop" and created["active"] is True
    assert secret.startswith(created["prefix"])
    stored = ApiToken.objects.get(pk=created["id"])
    assert stored.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {stored.digest, stored.prefix, stored.name}
    # Listed by name and prefix, never with the secret again.
    listed = api_alice.get("/api/tokens/").json()
    assert {token["name"] for token in listed["results"]} == {"tests", "laptop"}
    assert all("secret" not in token for token in listed["results"])
    assert api_alice.get(f"/api/tokens/{stored.pk}/").json()["prefix"] == created["prefix"]


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "bearer"])
def test_the_secret_authenticates_with_either_scheme(alice, scheme):
    _, secret = create_token(alice, "cli")
    response = client_with(f"{scheme} {secret}").get("/api/me/")
    assert response.status_code == 200
    assert response.json()["username"] == "alice"


def test_a_revoked_token_answers_401_naming_the_revocation(api_alice, alice, error_of):
    token, secret = create_token(alice, "old laptop")
    assert client_with(f"Token {secret}").get("/api/runs/").status_code == 200

    assert api_alice.delete(f"/api/tokens/{token.pk}/").status_code == 204

    response = client_with(f"Token {secret}").get("/api/runs/")
    assert response.status_code == 401
    assert error_of(response)["code"] == "authentication_failed"
    assert "old laptop" in error_of(response)["message"] and "revoked" in error_of(response)["message"]
    # Still listed, inactive, with when it was revoked.
    listed = {row["name"]: row for row in api_alice.get("/api/tokens/").json()["results"]}
    assert listed["old laptop"]["active"] is False and listed["old laptop"]["revoked_at"]


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        ("Token ry_forged0000000000000000000000000000000", "no such token"),
        ("Token", "malformed"),
        ("Bearer two parts", "malformed"),
        ("Token \x7f\x01", "malformed"),
    ],
)
def test_forged_and_malformed_tokens_answer_401_saying_why(alice, authorization, says, error_of):
    response = client_with(authorization).get("/api/runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert says in error_of(response)["message"]


def test_a_deactivated_users_token_is_refused(alice, error_of):
    _, secret = create_token(alice, "cli")
    alice.is_active = False
    alice.save()
    response = client_with(f"Token {secret}").get("/api/runs/")
    assert response.status_code == 401
    assert "deactivated" in error_of(response)["message"]


def test_last_used_is_stamped_at_most_once_a_minute(alice):
    token, secret = create_token(alice, "cli")
    client = client_with(f"Token {secret}")

    client.get("/api/me/")
    token.refresh_from_db()
    first_use = token.last_used_at
    assert first_use is not None

    client.get("/api/me/")
    token.refresh_from_db()
    assert token.last_used_at == first_use  # within the minute: no write

    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first_use - LAST_USED_RESOLUTION - timedelta(seconds=1))
    client.get("/api/me/")
    token.refresh_from_db()
    assert token.last_used_at > first_use


def test_users_see_and_revoke_only_their_own_tokens(api_alice, api_bob, bob, error_of):
    bobs_token, bobs_secret = create_token(bob, "bob's")

    assert api_alice.get(f"/api/tokens/{bobs_token.pk}/").status_code == 404
    response = api_alice.delete(f"/api/tokens/{bobs_token.pk}/")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert "bob's" not in {token["name"] for token in api_alice.get("/api/tokens/").json()["results"]}
    bobs_token.refresh_from_db()
    assert bobs_token.is_active
    assert client_with(f"Token {bobs_secret}").get("/api/me/").status_code == 200


def test_a_token_needs_a_name(api_alice, error_of):
    response = api_alice.post("/api/tokens/", {}, format="json")
    assert response.status_code == 400
    assert "name" in error_of(response)["fields"]


def test_revoking_twice_keeps_the_first_time(alice):
    token, _ = create_token(alice, "cli")
    first = revoke_token(token).revoked_at
    assert revoke_token(token).revoked_at == first


# --- the Django admin ----------------------------------------------------------------------------


def test_site_admins_see_tokens_without_secrets_and_revoke_them(alice, staff, teams, client):
    token, secret = create_token(alice, "laptop")
    client.force_login(staff)

    listed = client.get("/admin/accounts/apitoken/")
    assert listed.status_code == 200
    assert token.prefix in listed.text and secret not in listed.text
    assert "/admin/accounts/apitoken/add/" not in listed.text  # users make their own
    change = client.get(f"/admin/accounts/apitoken/{token.pk}/change/")
    assert token.digest in change.text and 'name="digest"' not in change.text  # read-only

    response = client.post(
        "/admin/accounts/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]}, follow=True
    )
    token.refresh_from_db()
    assert not token.is_active
    assert [str(message) for message in response.context["messages"]] == ["revoked 1 token(s)"]

    team_page = client.get(f"/admin/accounts/team/{teams.team.pk}/change/")
    assert team_page.status_code == 200
    assert "memberships-TOTAL_FORMS" in team_page.text  # members edited inline
