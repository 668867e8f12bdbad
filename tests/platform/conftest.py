"""Fixtures for the platform's tests: users with real DRF tokens, API clients, runs."""

from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from accounts.services import default_team
from runs.models import Run, RunStatus


@pytest.fixture(autouse=True)
def enqueued(monkeypatch) -> list[int]:
    """Run ids handed to the workers. Nothing reaches a real broker from these tests, so
    a worker of another test session sharing the Redis never picks up our runs."""
    calls: list[int] = []
    monkeypatch.setattr("workers.dispatch.enqueue_run", calls.append)
    return calls


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="alice-pw")


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", password="bob-pw")


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("sam", password="sam-pw", is_staff=True, is_superuser=True)


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def api_alice(alice) -> APIClient:
    return client_for(alice)


@pytest.fixture
def api_bob(bob) -> APIClient:
    return client_for(bob)


@pytest.fixture
def make_run(db) -> Callable[..., Run]:
    """A run stored directly (no service call), in any status, for read-side tests."""

    def make(owner, name: str = "run", status: str = RunStatus.QUEUED, total_steps: int = 10, **fields) -> Run:
        fields.setdefault("team", default_team(owner))
        return Run.objects.create(
            owner=owner, name=name, spec={"name": name}, status=status, total_steps=total_steps, **fields
        )

    return make
