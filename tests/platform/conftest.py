"""Fixtures for the platform's tests: users with real API tokens, teams, API clients, runs."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts.models import Role, Team
from accounts.services import add_member, create_token, default_team
from engine.events import Event
from runs import telemetry
from runs.models import Run, RunAttempt, RunStatus


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """The default hasher takes a good part of a second per user on a busy 2-core machine;
    these tests check who may do what, not how passwords are stored."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def enqueued(monkeypatch) -> list[int]:
    """Run ids handed to the workers. Nothing reaches a real broker from these tests, so
    a worker of another test session sharing the Redis never picks up our runs. Admission
    sweeps run here, in the test's process, instead of in a worker (the same function the
    Celery task calls, without Ray): a launched run that fits is admitted and enqueued."""
    from runs.admission import admit_queued_runs

    calls: list[int] = []
    monkeypatch.setattr("rollyard.dispatch.enqueue_run", calls.append)
    monkeypatch.setattr("rollyard.dispatch.request_admission", lambda pool_id=None: admit_queued_runs(pool_id))
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


@pytest.fixture
def error_of() -> Callable[..., dict]:
    """Reads the API's one error body, {"error": {"code", "message", "fields"}}, out of a
    response, failing the test if the body has another shape."""

    def read(response) -> dict:
        body = response.json()
        assert set(body) == {"error"}, body
        assert {"code", "message", "fields"} <= set(body["error"]), body
        return body["error"]

    return read


def token_for(user, name: str = "tests") -> str:
    """The secret of a new, real API token of `user`."""
    return create_token(user, name)[1]


def client_for(user) -> APIClient:
    """An API client authenticated the way scripts are: with a real token's secret."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
    return client


def team_with(name: str, **members_by_role) -> Team:
    """A team whose members hold the given roles: team_with("ml", admin=[a], viewer=[v])."""
    team = Team.objects.create(name=name)
    for role, users in members_by_role.items():
        for user in users:
            add_member(team, user, Role(role))
    return team


@pytest.fixture
def make_user(db) -> Callable[..., object]:
    def make(username: str, **fields):
        return get_user_model().objects.create_user(username, password=f"{username}-pw", **fields)

    return make


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


@pytest.fixture
def record() -> Callable[[int, Sequence[Event]], None]:
    """Record engine events for run `run_id` as its driver does, for its open attempt
    (opened here when there is none: read-side tests store runs directly)."""

    def record_for(run_id: int, events: Sequence[Event]) -> None:
        attempt = RunAttempt.objects.filter(run_id=run_id, ended_at__isnull=True).first()
        if attempt is None:
            number = RunAttempt.objects.filter(run_id=run_id).count() + 1
            attempt = RunAttempt.objects.create(run_id=run_id, number=number, worker_host="test", worker_pid=1)
        telemetry.record_events(run_id, attempt.pk, events)

    return record_for


@dataclass
class Teams:
    """Two teams for permission tests: `team` has an admin, a member and a viewer;
    `other_team` belongs to `outsider` (its admin), who is in no role in `team`."""

    team: Team
    other_team: Team
    admin: object
    member: object
    viewer: object
    outsider: object

    def client(self, user) -> APIClient:
        return client_for(user)


@pytest.fixture
def teams(make_user) -> Teams:
    admin, member, viewer, outsider = (make_user(name) for name in ("ada", "max", "vic", "olga"))
    return Teams(
        team=team_with("ml", admin=[admin], member=[member], viewer=[viewer]),
        other_team=team_with("other", admin=[outsider]),
        admin=admin,
        member=member,
        viewer=viewer,
        outsider=outsider,
    )


@pytest.fixture
def multi_gpu_runs(settings) -> None:
    """Quota and admission arithmetic for runs of several GPUs on the default spec's
    torch training backend, which launch refuses more than one GPU
    (runs.launch.check_launch_resources: only deepspeed takes several, one rank each)."""
    settings.ROLLYARD_MAX_GPUS_PER_RUN = 16
