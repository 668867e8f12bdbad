"""The API tokens page (/accounts/tokens/) and the API docs page (/api/docs/).

Tokens: a named token made on the page shows its secret once, then only its prefix;
revoking it there makes its next API call a 401; another user's token cannot be revoked.
Docs: Swagger UI over the schema, from our own static files (no CDN), for a signed-in user."""

import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import create_token

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_with(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


def test_a_token_made_on_the_page_is_shown_once_then_by_its_prefix(alice):
    page = signed_in(alice)

    made = page.post("/accounts/tokens/", {"name": "laptop"})

    assert made.status_code == 200
    secret = re.search(r'id="new-token-secret">([^<]+)</pre>', made.content.decode()).group(1)
    token = ApiToken.objects.get(user=alice, name="laptop")
    assert secret.startswith(token.prefix) and len(secret) > len(token.prefix)
    assert api_with(secret).get("/api/me/").json()["username"] == "alice"
    # Listed again: name, prefix, created and last used (just now, by the call above), never the secret.
    listed = page.get("/accounts/tokens/").content.decode()
    assert secret not in listed and f"{token.prefix}…" in listed and "laptop" in listed
    row = re.search(rf'<tr data-token="{token.pk}">(.*?)</tr>', listed, re.S).group(1)
    assert row.count(token.created_at.strftime("%Y-%m-%d")) == 2 and "never" not in row


def test_revoking_on_the_page_makes_the_token_a_401_at_once(alice, error_of):
    token, secret = create_token(alice, "old laptop")
    assert api_with(secret).get("/api/runs/").status_code == 200

    revoked = signed_in(alice).post(f"/accounts/tokens/{token.pk}/revoke/", follow=True)

    assert revoked.status_code == 200 and "revoked" in revoked.content.decode()
    response = api_with(secret).get("/api/runs/")
    assert response.status_code == 401 and "revoked" in error_of(response)["message"]
    # Still listed, inactive, with no revoke button left.
    assert f'action="/accounts/tokens/{token.pk}/revoke/"' not in revoked.content.decode()


def test_a_user_cannot_revoke_another_users_token(alice, bob):
    token, secret = create_token(alice, "cli")

    response = signed_in(bob).post(f"/accounts/tokens/{token.pk}/revoke/")

    assert response.status_code == 404
    assert api_with(secret).get("/api/runs/").status_code == 200
    assert "cli" not in signed_in(bob).get("/accounts/tokens/").content.decode()


@pytest.mark.parametrize(("name", "says"), [("", "This field is required."), ("x" * 101, "at most 100 characters")])
def test_a_bad_token_name_is_a_400_saying_why_and_makes_nothing(alice, name, says):
    response = signed_in(alice).post("/accounts/tokens/", {"name": name})

    assert response.status_code == 400 and says in response.content.decode()
    assert not ApiToken.objects.filter(user=alice).exists()


def test_the_token_page_needs_a_login_and_a_post_to_revoke(client, alice):
    token, _ = create_token(alice, "cli")
    assert client.get("/accounts/tokens/")["Location"] == "/accounts/login/?next=/accounts/tokens/"
    assert signed_in(alice).get(f"/accounts/tokens/{token.pk}/revoke/").status_code == 405


def test_the_nav_leads_to_the_tokens_and_the_api_docs(alice):
    html = signed_in(alice).get("/runs/").content.decode()
    assert 'href="/accounts/tokens/"' in html and 'href="/api/docs/"' in html


def test_the_api_docs_page_loads_swagger_ui_from_our_own_static_files(alice):
    page = signed_in(alice)

    response = page.get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "/api/schema/" in html  # the schema it draws
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    # Offline: no address on another host anywhere in the page, and every asset is ours.
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", html), re.findall(r"\S*//\S+", html)
    for asset in assets:
        assert asset.startswith("/static/"), asset
        served = page.get(asset)
        body = b"".join(served.streaming_content) if served.streaming else served.content
        assert served.status_code == 200 and body, asset
