"""The authorisation matrix: every URL pattern of the URL configuration, every method its
view answers, for six roles — anonymous, a viewer, a member and an admin of the object's
team, an admin of another team (the outsider), and site staff — and the run websocket.

The patterns are read from the resolver, so a new endpoint without a rule here fails
`test_every_url_pattern_and_method_has_a_rule`. API endpoints are called the way scripts
call them (a real token), pages the way browsers do (a session). Each role's request runs
in a savepoint rolled back afterwards, so every role meets the same objects.

Outcomes: a status code; LOGIN (a redirect to the sign-in page); DONE (a page form that
answers 302 whether it worked or not, and its effect happened). Where a rule has an
effect, every role whose outcome is not DONE must leave no trace of it.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken, Membership, Role
from accounts.services import create_token
from catalog.models import Dataset, Preset, PromptRecord
from quotas.models import Accelerator, Pool, Quota
from runs.models import AlertRule, Checkpoint, Run, RunStatus

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "viewer", "member", "admin", "outsider", "staff")
LOGIN = "login"
DONE = "done"
Outcome = int | str


def roles(anonymous: Outcome, viewer: Outcome, member: Outcome, admin: Outcome, outsider: Outcome, staff: Outcome):
    return dict(zip(ROLES, (anonymous, viewer, member, admin, outsider, staff), strict=True))


# Reads of one object of team "ml": its roles and staff see it, the outsider gets a 404
# exactly like a missing object.
API_TEAM_READ = roles(401, 200, 200, 200, 404, 200)
PAGE_TEAM_READ = roles(LOGIN, 200, 200, 200, 404, 200)
# Reads for anyone signed in (lists filtered to what they may see, registries, forms).
API_SIGNED_IN = roles(401, 200, 200, 200, 200, 200)
PAGE_SIGNED_IN = roles(LOGIN, 200, 200, 200, 200, 200)
PUBLIC = roles(200, 200, 200, 200, 200, 200)
# Launching or creating in team "ml": members and above, staff; the outsider names a team
# that is not among theirs (400 on the field), a viewer learns the role needed (403).
API_CREATE_IN_TEAM = roles(401, 403, 201, 201, 400, 201)
# Writes of site-wide limits (pools, quotas) and teams: staff only.
API_STAFF_WRITE = roles(401, 403, 403, 403, 403, 201)


@dataclass
class World:
    """The objects every request is aimed at, all of team "ml" unless said otherwise."""

    users: dict[str, Any]
    run: Run
    checkpoint: Checkpoint
    dataset: Dataset
    record: PromptRecord
    preset: Preset
    pool: Pool
    quota: Quota
    members_token: ApiToken  # a token of the member's other than the one they call with
    team_id: int
    tokens: dict[str, str] = field(default_factory=dict)

    def api(self, role: str) -> APIClient:
        client = APIClient()
        if role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Token {self.tokens[role]}")
        return client

    def page(self, role: str) -> Client:
        # An address per role: the sign-in limit counts failures per address, and the
        # roles' failed sign-ins below must not add up to one client's.
        client = Client(REMOTE_ADDR=f"10.9.0.{ROLES.index(role) + 1}")
        if role != "anonymous":
            client.force_login(self.users[role])
        return client


@dataclass
class Case:
    expect: dict[str, Outcome]
    body: Callable[[World], dict] | None = None
    query: Callable[[World], dict] | None = None
    multipart: bool = False
    effect: Callable[[World], bool] | None = None  # did the request change what it should?
    kwargs: Callable[[World], dict] | None = None  # path arguments, when the defaults do not fit


def jsonl(rows: int = 2) -> SimpleUploadedFile:
    content = b"".join(json.dumps({"prompt": f"{n} + 1 =", "answer": str(n + 1)}).encode() + b"\n" for n in range(rows))
    return SimpleUploadedFile("sums.jsonl", content)


SMALL_SPEC = {"training": {"steps": 5}, "rollout": {"n": 4}}


def cancelled(world: World) -> bool:
    return Run.objects.get(pk=world.run.pk).cancel_requested or Run.objects.get(pk=world.run.pk).status == RunStatus.CANCELLED


def forked(world: World) -> bool:
    return Run.objects.filter(parent=world.run).exists()


TWINNABLE_SPEC = SMALL_SPEC | {"rollout": {"n": 4, "strategy": "april"}}


def twinnable(world: World) -> int:
    """The world's run that uses a technique (APRIL), so it has a GRPO twin."""
    return Run.objects.get(name="matrix-april").pk


def twinned(world: World) -> bool:
    return Run.objects.filter(twin_of__name="matrix-april").exists()


def matrix_rule(world: World) -> AlertRule:
    """A rule on the world's run (made inside the role's rolled-back savepoint)."""
    rule, _ = AlertRule.objects.get_or_create(run=world.run, metric="actor/entropy", comparison="below", threshold=0.1)
    return rule


def page_read(methods: tuple[str, ...] = ("GET", "POST"), **case: Any) -> dict[str, Case]:
    # Function views answer POST like GET unless they say otherwise: both are checked.
    return {method: Case(PAGE_TEAM_READ, **case) for method in methods}


def page_signed_in(**case: Any) -> dict[str, Case]:
    return {method: Case(PAGE_SIGNED_IN, **case) for method in ("GET", "POST")}


# The rules, by URL name (the route, for a pattern without one) and method.
RULES: dict[str, dict[str, Case]] = {
    # --- pages -------------------------------------------------------------------------------
    "": {method: Case(roles(302, 302, 302, 302, 302, 302)) for method in ("GET", "POST", "PUT", "PATCH", "DELETE")},
    "runs:list": page_signed_in(),
    "runs:new": {
        "GET": Case(PAGE_SIGNED_IN),
        "POST": Case(
            roles(LOGIN, 400, DONE, DONE, 404, DONE),
            body=lambda w: {"spec": "training: {steps: 2}", "team": "ml"},
            effect=lambda w: Run.objects.filter(spec__training__steps=2).exists(),
        ),
    },
    "runs:detail": page_read(),
    "runs:cancel": {
        "GET": Case(roles(LOGIN, 405, 405, 405, 405, 405)),
        # The owner (the member), the team's admin and staff cancel; a viewer is told why.
        "POST": Case(roles(LOGIN, 302, DONE, DONE, 404, DONE), effect=cancelled),
    },
    "runs:fork": {
        "GET": Case(roles(LOGIN, 405, 405, 405, 405, 405)),
        "POST": Case(roles(LOGIN, 302, DONE, DONE, 404, DONE), body=lambda w: {"step": "1"}, effect=forked),
    },
    # A GRPO twin is a launch in the run's team: members and above; a viewer is told why.
    "runs:twin": {
        "GET": Case(roles(LOGIN, 405, 405, 405, 405, 405)),
        "POST": Case(roles(LOGIN, 302, DONE, DONE, 404, DONE), effect=twinned,
                     kwargs=lambda w: {"run_id": twinnable(w)}),
    },
    "runs:diff": page_read(query=lambda w: {"a": w.run.pk, "b": w.run.pk}),
    "runs:compare": page_read(methods=("GET",), query=lambda w: {"run": [w.run.pk, w.run.pk]}),
    "quotas:queue": page_signed_in(),
    "quotas:quotas": page_signed_in(),
    "catalog:dataset-list": {
        "GET": Case(PAGE_SIGNED_IN),
        "POST": Case(
            roles(LOGIN, 403, DONE, DONE, 400, DONE),
            body=lambda w: {"file": jsonl(), "name": "form-upload", "team": "ml"},
            effect=lambda w: Dataset.objects.filter(name="form-upload").exists(),
        ),
    },
    "catalog:dataset-detail": page_read(),
    "catalog:prompt-detail": page_read(),
    "catalog:preset-list": {
        "GET": Case(PAGE_SIGNED_IN),
        "POST": Case(
            roles(LOGIN, 403, DONE, DONE, 400, DONE),
            body=lambda w: {"name": "form-preset", "team": "ml", "kind": "algorithm", "body": "clip_eps_high: 0.28\n"},
            effect=lambda w: Preset.objects.filter(name="form-preset").exists(),
        ),
    },
    "catalog:preset-detail": {
        "GET": Case(PAGE_TEAM_READ),
        "POST": Case(
            roles(LOGIN, 403, DONE, DONE, 404, DONE),
            body=lambda w: {"body": "clip_eps_high: 0.3\n"},
            effect=lambda w: Preset.objects.filter(name=w.preset.name, version=2).exists(),
        ),
    },
    # A user's tokens page: anyone signed in makes their own; a token is revoked by its
    # user alone (the member's token is a 404 to everyone else, staff too, as in the API).
    "accounts:tokens": page_signed_in(body=lambda w: {"name": "page-token"}),
    "accounts:token-revoke": {
        "GET": Case(roles(LOGIN, 405, 405, 405, 405, 405), kwargs=lambda w: {"token_id": w.members_token.pk}),
        "POST": Case(
            roles(LOGIN, 404, DONE, 404, 404, 404),
            kwargs=lambda w: {"token_id": w.members_token.pk},
            effect=lambda w: ApiToken.objects.get(pk=w.members_token.pk).revoked_at is not None,
        ),
    },
    # Django's sign-in and password pages.
    # Form views answer PUT as POST (Django's ProcessFormView).
    "login": {method: Case(PUBLIC, body=lambda w: {"username": "nobody", "password": "wrong"}) for method in ("GET", "POST", "PUT")},
    "logout": {"POST": Case(roles(302, 302, 302, 302, 302, 302))},
    "password_change": {
        "GET": Case(PAGE_SIGNED_IN),
        **{
            method: Case(PAGE_SIGNED_IN, body=lambda w: {"old_password": "wrong", "new_password1": "x", "new_password2": "x"})
            for method in ("POST", "PUT")
        },
    },
    "password_change_done": {"GET": Case(PAGE_SIGNED_IN)},
    # A PUT's body is no form (request.POST stays empty): the form comes back with its errors.
    "password_reset": {
        "GET": Case(PUBLIC),
        "POST": Case(roles(302, 302, 302, 302, 302, 302), body=lambda w: {"email": "someone@example.com"}),
        "PUT": Case(PUBLIC, body=lambda w: {"email": "someone@example.com"}),
    },
    "password_reset_done": {"GET": Case(PUBLIC)},
    "password_reset_confirm": {
        method: Case(PUBLIC, kwargs=lambda w: {"uidb64": "MQ", "token": "set-password"}) for method in ("GET", "POST", "PUT")
    },
    "password_reset_complete": {"GET": Case(PUBLIC)},
    # --- the API ----------------------------------------------------------------------------
    "api:api-root": {"GET": Case(API_SIGNED_IN)},
    "api:schema": {"GET": Case(PUBLIC)},  # documents the API, holds no data
    "api-docs": {"GET": Case(PUBLIC)},  # the schema drawn by Swagger UI
    "api:spec-defaults": {"GET": Case(API_SIGNED_IN)},
    "api:spec-schema": {"GET": Case(API_SIGNED_IN)},
    # Validating a launch in team "ml" is checked like the launch, and stores nothing.
    "api:spec-validate": {"POST": Case(roles(401, 403, 200, 200, 400, 200), body=lambda w: {"spec": SMALL_SPEC, "team": "ml"})},
    "api:run-list": {
        "GET": Case(API_SIGNED_IN),
        "POST": Case(API_CREATE_IN_TEAM, body=lambda w: {"spec": SMALL_SPEC, "team": "ml"}),
    },
    "api:run-diff": {"GET": Case(API_TEAM_READ, query=lambda w: {"a": w.run.pk, "b": w.run.pk})},
    "api:run-detail": {"GET": Case(API_TEAM_READ)},
    "api:run-attempts": {"GET": Case(API_TEAM_READ)},
    "api:run-checkpoints": {"GET": Case(API_TEAM_READ)},
    "api:run-clone": {"GET": Case(API_TEAM_READ)},
    "api:run-events": {"GET": Case(API_TEAM_READ)},
    "api:run-metrics": {"GET": Case(API_TEAM_READ, query=lambda w: {"name": "reward/mean"})},
    "api:run-prompts": {"GET": Case(API_TEAM_READ)},
    "api:run-prompts-heatmap": {"GET": Case(API_TEAM_READ)},
    "api:run-prompt-samples": {"GET": Case(API_TEAM_READ)},
    "api:run-samples": {"GET": Case(API_TEAM_READ)},
    "api:run-savings": {"GET": Case(API_TEAM_READ)},
    # The owner (the member), the team's admin and staff cancel; a viewer may not.
    "api:run-cancel": {"POST": Case(roles(401, 403, 200, 200, 404, 200))},
    # Forking launches in the run's team: members and above.
    "api:run-fork": {"POST": Case(roles(401, 403, 201, 201, 404, 201), body=lambda w: {"step": 1})},
    "api:run-twin": {"POST": Case(roles(401, 403, 201, 201, 404, 201), kwargs=lambda w: {"pk": twinnable(w)})},
    "api:run-alerts": {"GET": Case(API_TEAM_READ)},
    # Alert rules are read by the team, changed by whoever may change the run (as cancel).
    "api:run-alert-rules": {
        "GET": Case(API_TEAM_READ),
        "POST": Case(
            roles(401, 403, 201, 201, 404, 201),
            body=lambda w: {"metric": "val/acc/mean@1", "comparison": "below", "threshold": 0.5},
        ),
    },
    "api:run-alert-rule": {
        "DELETE": Case(roles(401, 403, 204, 204, 404, 204), kwargs=lambda w: {"pk": w.run.pk, "rule_id": matrix_rule(w).pk}),
    },
    "accounts-api:me": {"GET": Case(API_SIGNED_IN)},
    "accounts-api:team-list": {"GET": Case(API_SIGNED_IN), "POST": Case(API_STAFF_WRITE, body=lambda w: {"name": "new-team"})},
    "accounts-api:team-detail": {"GET": Case(API_TEAM_READ, kwargs=lambda w: {"pk": w.team_id})},
    # Members are read by the team, managed by its admins and staff.
    "accounts-api:team-members": {
        "GET": Case(API_TEAM_READ),
        "POST": Case(roles(401, 403, 403, 201, 404, 201), body=lambda w: {"user": "olga", "role": "viewer"}),
    },
    "accounts-api:team-member": {
        "GET": Case(API_TEAM_READ),
        "PATCH": Case(roles(401, 403, 403, 200, 404, 200), body=lambda w: {"role": "viewer"}),
        "DELETE": Case(roles(401, 403, 403, 204, 404, 204)),
    },
    # Tokens are their user's alone: the member's token is a 404 to everyone else, staff too.
    "accounts-api:token-list": {"GET": Case(API_SIGNED_IN), "POST": Case(roles(401, 201, 201, 201, 201, 201), body=lambda w: {"name": "new"})},
    "accounts-api:token-detail": {
        method: Case(roles(401, 404, status, 404, 404, 404), kwargs=lambda w: {"pk": w.members_token.pk})
        for method, status in (("GET", 200), ("DELETE", 204))
    },
    "quotas-api:queue": {"GET": Case(API_SIGNED_IN)},
    "quotas-api:usage": {"GET": Case(API_SIGNED_IN)},
    "quotas-api:pool-list": {
        "GET": Case(API_SIGNED_IN),
        "POST": Case(API_STAFF_WRITE, body=lambda w: {"name": "h200", "accelerator": "gpu", "gpu_type": "H200", "capacity": 8}),
    },
    # Pools are public knowledge to anyone signed in; their limits are staff's.
    "quotas-api:pool-detail": {
        "GET": Case(API_SIGNED_IN, kwargs=lambda w: {"pk": w.pool.pk}),
        "PUT": Case(
            roles(401, 403, 403, 403, 403, 200),
            kwargs=lambda w: {"pk": w.pool.pk},
            body=lambda w: {"name": "spare", "accelerator": "gpu", "gpu_type": "H100", "capacity": 4},
        ),
        "PATCH": Case(roles(401, 403, 403, 403, 403, 200), kwargs=lambda w: {"pk": w.pool.pk}, body=lambda w: {"capacity": 2}),
        "DELETE": Case(roles(401, 403, 403, 403, 403, 204), kwargs=lambda w: {"pk": w.pool.pk}),
    },
    "quotas-api:quota-list": {
        "GET": Case(API_SIGNED_IN),
        "POST": Case(API_STAFF_WRITE, body=lambda w: {"pool": "spare", "team": "other", "max_concurrent_gpus": 1}),
    },
    # Quotas of team "ml" are seen by its roles; writes are refused to non-staff before any
    # lookup, so the outsider learns nothing from a 403 either.
    "quotas-api:quota-detail": {
        "GET": Case(API_TEAM_READ, kwargs=lambda w: {"pk": w.quota.pk}),
        "PUT": Case(
            roles(401, 403, 403, 403, 403, 200),
            kwargs=lambda w: {"pk": w.quota.pk},
            body=lambda w: {"pool": "spare", "team": "ml", "max_concurrent_gpus": 3},
        ),
        "PATCH": Case(roles(401, 403, 403, 403, 403, 200), kwargs=lambda w: {"pk": w.quota.pk}, body=lambda w: {"max_concurrent_gpus": 3}),
        "DELETE": Case(roles(401, 403, 403, 403, 403, 204), kwargs=lambda w: {"pk": w.quota.pk}),
    },
    "catalog-api:dataset-list": {
        "GET": Case(API_SIGNED_IN),
        "POST": Case(API_CREATE_IN_TEAM, multipart=True, body=lambda w: {"file": jsonl(), "name": "api-upload", "team": "ml"}),
    },
    "catalog-api:dataset-detail": {"GET": Case(API_TEAM_READ)},
    "catalog-api:dataset-records": {"GET": Case(API_TEAM_READ)},
    "catalog-api:dataset-record": {"GET": Case(API_TEAM_READ)},
    "catalog-api:preset-list": {
        "GET": Case(API_SIGNED_IN),
        "POST": Case(API_CREATE_IN_TEAM, body=lambda w: {"team": "ml", "kind": "algorithm", "name": "api-preset", "body": {}}),
    },
    "catalog-api:preset-algorithms": {"GET": Case(API_SIGNED_IN)},
    "catalog-api:preset-curricula": {"GET": Case(API_SIGNED_IN)},
    "catalog-api:preset-detail": {"GET": Case(API_TEAM_READ)},
    "catalog-api:preset-versions": {
        "GET": Case(API_TEAM_READ),
        "POST": Case(roles(401, 403, 201, 201, 404, 201), body=lambda w: {"body": {"clip_eps_high": 0.3}}),
    },
}
ADMIN_NAMESPACE = "admin"  # every admin page (under /admin/): staff only, the rest are sent to its sign-in


# --- reading the URL configuration --------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    key: str  # the URL name with its namespaces, or the route for an unnamed pattern
    route: str
    params: tuple[str, ...]
    methods: frozenset[str] | None  # None: a function view, whose methods cannot be read


def _methods(pattern: URLPattern) -> frozenset[str] | None:
    callback = pattern.callback
    if actions := getattr(callback, "actions", None):  # a DRF viewset route
        return frozenset(method.upper() for method in actions)
    view = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view is None:
        return None
    answered = {"get", "post", "put", "patch", "delete"} & set(view.http_method_names)
    return frozenset(method.upper() for method in answered if hasattr(view, method))


def endpoints() -> list[Endpoint]:
    found: list[Endpoint] = []

    def walk(patterns, namespace: str, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, inner, route)
                continue
            converters = getattr(pattern.pattern, "converters", None)
            params = tuple(converters) if converters else tuple(pattern.pattern.regex.groupindex)
            if "format" in params:
                continue  # DRF's .json suffix twin of a named route: the same view and rule
            key = f"{namespace}{pattern.name}" if pattern.name else route
            found.append(Endpoint(key, route, params, _methods(pattern)))

    walk(get_resolver().url_patterns, "", "")
    return found


ENDPOINTS = endpoints()
ADMIN_ENDPOINTS = [endpoint for endpoint in ENDPOINTS if endpoint.route.startswith(f"{ADMIN_NAMESPACE}/")]
APP_ENDPOINTS = [endpoint for endpoint in ENDPOINTS if endpoint not in ADMIN_ENDPOINTS]
# The admin's own sign-in and sign-out pages are for everyone.
ADMIN_PUBLIC = {"admin:login", "admin:logout"}


def test_every_url_pattern_and_method_has_a_rule():
    by_key = {endpoint.key: endpoint for endpoint in APP_ENDPOINTS}
    assert sorted(set(by_key) - set(RULES)) == [], "endpoints without a rule: add them to RULES"
    assert sorted(set(RULES) - set(by_key)) == [], "rules of endpoints that no longer exist"
    for key, endpoint in by_key.items():
        # Function views are checked on GET and POST, the methods a page's form uses.
        methods = endpoint.methods if endpoint.methods is not None else {"GET", "POST"}
        if endpoint.methods is None:
            assert {"GET", "POST"} <= set(RULES[key]) or set(RULES[key]) == {"GET"}, key
        else:
            assert set(RULES[key]) == methods, f"{key}: the view answers {sorted(methods)}"
    assert ADMIN_PUBLIC <= {endpoint.key for endpoint in ADMIN_ENDPOINTS}


# --- the world every request meets --------------------------------------------------------------


@pytest.fixture
def world(teams, staff, make_run, settings, tmp_path) -> World:
    settings.ROLLYARD_DATA_DIR = tmp_path / "data"
    users = {"viewer": teams.viewer, "member": teams.member, "admin": teams.admin, "outsider": teams.outsider, "staff": staff}
    member = teams.client(teams.member)
    run = make_run(teams.member, "matrix", team=teams.team)
    Run.objects.filter(pk=run.pk).update(spec=SMALL_SPEC)  # a fork must train past step 1
    run.refresh_from_db()
    checkpoint = Checkpoint.objects.create(run=run, step=1, path=str(tmp_path / "ckpt-1"))
    Run.objects.create(owner=teams.member, team=teams.team, name="matrix-april", spec=TWINNABLE_SPEC)
    uploaded = member.post("/api/datasets/", {"file": jsonl(3), "name": "sums", "team": "ml"}, format="multipart")
    assert uploaded.status_code == 201, uploaded.content
    dataset = Dataset.objects.get(pk=uploaded.json()["id"])
    created = member.post("/api/presets/", {"team": "ml", "kind": "algorithm", "name": "wide", "body": {}}, format="json")
    assert created.status_code == 201, created.content
    pool = Pool.objects.create(name="spare", accelerator=Accelerator.GPU, gpu_type="H100", capacity=4)
    world = World(
        users=users,
        run=run,
        checkpoint=checkpoint,
        dataset=dataset,
        record=dataset.records.order_by("pk").first(),
        preset=Preset.objects.get(pk=created.json()["id"]),
        pool=pool,
        quota=Quota.objects.create(pool=pool, team=teams.team, max_concurrent_gpus=2),
        members_token=create_token(teams.member, "target")[0],
        team_id=teams.team.pk,
    )
    world.tokens = {role: create_token(user, "matrix")[1] for role, user in users.items()}
    return world


def path_of(endpoint: Endpoint, case: Case | None, world: World) -> str:
    if not endpoint.params and endpoint.key == endpoint.route:
        return "/" + endpoint.route
    defaults = {
        "run_id": world.run.pk,
        "pk": world.run.pk,
        "dataset_id": world.dataset.pk,
        "record_id": world.record.pk,
        "prompt_id": "sums/0",
        "preset_id": world.preset.pk,
        "team_id": world.team_id,
        "user_id": world.users["member"].pk,
        # Admin pages: an object that exists for some models, a missing one for others.
        "object_id": world.run.pk,
        "id": world.users["member"].pk,
        "content_type_id": 1,
        "app_label": "accounts",
        "url": "nowhere/",
    }
    chosen = case.kwargs(world) if case is not None and case.kwargs else {}
    kwargs = {name: chosen[name] if name in chosen else defaults[name] for name in endpoint.params}
    if endpoint.key == endpoint.route:  # unnamed (the admin's redirects, its catch-all): fill in by hand
        route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(kwargs[m.group(1)]), endpoint.route)
        return "/" + route.replace("(?P<url>.*)$", str(kwargs.get("url", "")))
    return reverse(endpoint.key, kwargs=kwargs)


def call(world: World, endpoint: Endpoint, method: str, case: Case, role: str):
    path = path_of(endpoint, case, world)
    query = case.query(world) if case.query else {}
    body = case.body(world) if case.body else {}
    is_api = endpoint.key.split(":")[0].endswith("api")
    if is_api:
        client = world.api(role)
        send = getattr(client, method.lower())
        if method == "GET":
            return send(path, query)
        return send(path + _query_string(query), body, format="multipart" if case.multipart else "json")
    client = world.page(role)
    send = getattr(client, method.lower())
    if method == "GET":
        return send(path, query)
    if method == "POST":
        return send(path + _query_string(query), body)
    return send(path + _query_string(query))


def _query_string(query: dict) -> str:
    from urllib.parse import urlencode

    return f"?{urlencode(query)}" if query else ""


def check(response, outcome: Outcome, label: str) -> None:
    status = response.status_code
    if outcome == LOGIN:
        assert status == 302 and "/login/" in response["Location"], f"{label}: {status} {response.get('Location')}"
    elif outcome == DONE:
        assert status == 302 and "/login/" not in response["Location"], f"{label}: {status}"
    else:
        assert status == outcome, f"{label}: expected {outcome}, got {status}: {response.content[:300]!r}"


CASES = [(endpoint, method) for endpoint in APP_ENDPOINTS for method in sorted(RULES.get(endpoint.key, {}))]


@pytest.mark.parametrize(("endpoint", "method"), CASES, ids=[f"{e.key or '/'} {m}" for e, m in CASES])
def test_each_role_gets_what_its_rule_says(endpoint, method, world):
    case = RULES[endpoint.key][method]
    for role in ROLES:
        outcome = case.expect[role]
        label = f"{method} {endpoint.key} as {role}"
        with transaction.atomic():
            response = call(world, endpoint, method, case, role)
            check(response, outcome, label)
            if case.effect is not None:
                assert case.effect(world) == (outcome == DONE), f"{label}: effect {'missing' if outcome == DONE else 'happened'}"
            transaction.set_rollback(True)


@pytest.mark.parametrize("endpoint", ADMIN_ENDPOINTS, ids=[e.key for e in ADMIN_ENDPOINTS])
def test_every_admin_page_is_for_staff_only(endpoint, world):
    path = path_of(endpoint, None, world)
    for role in ROLES:
        response = world.page(role).get(path)
        if endpoint.key in ADMIN_PUBLIC:
            assert response.status_code < 500, f"{path} as {role}"
        elif role == "staff":
            # The page, or what the admin itself decides for staff: a missing object sends
            # them back to a list (302), a model without an add form is 403, and so on.
            assert response.status_code < 500, f"{path}: {response.status_code}"
            if response.status_code == 302:
                assert "/login/" not in response["Location"], path
        else:
            assert response.status_code == 302 and "/admin/login/" in response["Location"], f"{path} as {role}"


# --- the websockets ---------------------------------------------------------------------------------


async def check_socket_matrix(path: str, expect: dict[str, Outcome | str], teams, staff) -> None:
    """Each role opens `path` with a token of its own: its first frame is a message of the
    type `expect` names, or a close with that code."""
    from rollyard.asgi import application

    users = {"viewer": teams.viewer, "member": teams.member, "admin": teams.admin, "outsider": teams.outsider, "staff": staff}
    tokens = {role: (await sync_to_async(create_token)(user, "ws"))[1] for role, user in users.items()}
    for role in ROLES:
        query = f"?token={tokens[role]}" if role != "anonymous" else ""
        communicator = WebsocketCommunicator(application, f"{path}{query}")
        connected, _ = await communicator.connect(timeout=10)
        assert connected, role
        message = await communicator.receive_output(timeout=10)
        if isinstance(expect[role], str):
            assert message["type"] == "websocket.send" and json.loads(message["text"])["type"] == expect[role], role
        else:
            assert (message["type"], message.get("code")) == ("websocket.close", expect[role]), role
        await communicator.disconnect()


# Each websocket route's rule: the first frame per role, a message type or a close code.
# The board sockets are for anyone signed in, who hears only what the page shows them.
SOCKET_RULES = {
    # The runs list's socket is for anyone signed in; which rows it may watch is the next test.
    "ws/runs/": roles(4401, "hello", "hello", "hello", "hello", "hello"),
    "ws/runs/<int:run_id>/": roles(4401, "hello", "hello", "hello", 4403, "hello"),
    "ws/queue/": roles(4401, "queue", "queue", "queue", "queue", "queue"),
    "ws/quotas/": roles(4401, "quotas", "quotas", "quotas", "quotas", "quotas"),
}


def test_every_websocket_route_has_a_rule():
    from runs.routing import websocket_urlpatterns

    assert {str(route.pattern) for route in websocket_urlpatterns} == set(SOCKET_RULES)


@pytest.mark.django_db(transaction=True)
async def test_the_run_websocket_follows_the_matrix(teams, staff, make_run, settings):
    settings.ROLLYARD_WS_AUTH_TIMEOUT_S = 0.2
    run = await sync_to_async(make_run)(teams.member, "watched", team=teams.team)
    await check_socket_matrix(f"/ws/runs/{run.pk}/", SOCKET_RULES["ws/runs/<int:run_id>/"], teams, staff)


@pytest.mark.django_db(transaction=True)
async def test_the_runs_list_websocket_follows_the_matrix(teams, staff, make_run, settings):
    """Anyone signed in opens it; a watch of the team's run is answered with its row for
    the team's roles and staff, and with no row for the outsider (as for a missing run)."""
    from rollyard.asgi import application

    settings.ROLLYARD_WS_AUTH_TIMEOUT_S = 0.2
    await check_socket_matrix("/ws/runs/", SOCKET_RULES["ws/runs/"], teams, staff)
    run = await sync_to_async(make_run)(teams.member, "watched", team=teams.team)
    users = {"viewer": teams.viewer, "member": teams.member, "admin": teams.admin, "outsider": teams.outsider, "staff": staff}
    for role, user in users.items():
        communicator = WebsocketCommunicator(application, f"/ws/runs/?token={(await sync_to_async(create_token)(user, 'ws'))[1]}")
        await communicator.connect(timeout=10)
        assert (await communicator.receive_json_from(timeout=10))["type"] == "hello"
        await communicator.send_json_to({"type": "watch", "runs": [run.pk]})
        rows = (await communicator.receive_json_from(timeout=10))["rows"]
        assert [row["id"] for row in rows] == ([] if role == "outsider" else [run.pk]), role
        await communicator.disconnect()


@pytest.mark.parametrize("route", ["ws/queue/", "ws/quotas/"])
@pytest.mark.django_db(transaction=True)
async def test_the_board_websockets_follow_the_matrix(route, teams, staff, settings):
    settings.ROLLYARD_WS_AUTH_TIMEOUT_S = 0.2
    await check_socket_matrix(f"/{route}", SOCKET_RULES[route], teams, staff)


def test_roles_are_what_the_matrix_assumes(world):
    # The matrix's premises: the run is the member's, in team "ml", whose roles are these.
    assert world.run.owner == world.users["member"] and world.run.team.name == "ml"
    held = dict(Membership.objects.filter(team_id=world.team_id).values_list("user__username", "role"))
    assert held == {"vic": Role.VIEWER, "max": Role.MEMBER, "ada": Role.ADMIN}
    assert not Membership.objects.filter(team_id=world.team_id, user=world.users["outsider"]).exists()
    assert world.users["staff"].is_staff and not Membership.objects.filter(user=world.users["staff"]).exists()
    assert world.checkpoint.step == 1 and PromptRecord.objects.filter(dataset=world.dataset).count() == 3


# --- CSRF: every form and every session-authenticated API write --------------------------------

CSRF_FAILED = b"CSRF verification failed"
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
PAGE_FORMS = [e for e in APP_ENDPOINTS if not e.key.split(":")[0].endswith("api") and "POST" in RULES.get(e.key, {})]
API_WRITES = [(e, m) for e in APP_ENDPOINTS if e.key.split(":")[0].endswith("api") for m in UNSAFE if m in RULES.get(e.key, {})]
PUBLIC_FORMS = {"login", "password_reset", "password_reset_confirm"}


def csrf_client(world: World, role: str) -> Client:
    client = Client(enforce_csrf_checks=True, REMOTE_ADDR="10.9.1.1")
    if role != "anonymous":
        client.force_login(world.users[role])
    return client


def form_post(client: Client, endpoint: Endpoint, world: World, token: str | None = None):
    case = RULES.get(endpoint.key, {}).get("POST")
    body = dict(case.body(world)) if case is not None and case.body else {}
    if token is not None:
        body["csrfmiddlewaretoken"] = token
    return client.post(path_of(endpoint, case, world), body)


@pytest.mark.parametrize("endpoint", PAGE_FORMS + ADMIN_ENDPOINTS, ids=[e.key for e in PAGE_FORMS + ADMIN_ENDPOINTS])
def test_every_form_refuses_a_post_without_its_csrf_token(endpoint, world):
    # Staff may do everything, so a 403 here is the CSRF check and nothing else.
    roles_tried = ["staff", "anonymous"] if endpoint.key in PUBLIC_FORMS else ["staff"]
    for role in roles_tried:
        with transaction.atomic():
            runs, datasets, presets = Run.objects.count(), Dataset.objects.count(), Preset.objects.count()
            client = csrf_client(world, role)
            refused = form_post(client, endpoint, world)
            assert refused.status_code == 403 and CSRF_FAILED in refused.content, f"{endpoint.key} as {role}"
            assert (Run.objects.count(), Dataset.objects.count(), Preset.objects.count()) == (runs, datasets, presets)
            # The same post with the token of a page it was served passes the check.
            client.get("/accounts/login/")
            passed = form_post(client, endpoint, world, token=client.cookies["csrftoken"].value)
            assert CSRF_FAILED not in passed.content, f"{endpoint.key} as {role}, with the token"
            transaction.set_rollback(True)


@pytest.mark.parametrize(("endpoint", "method"), API_WRITES, ids=[f"{e.key} {m}" for e, m in API_WRITES])
def test_api_writes_with_a_session_need_the_csrf_token_and_with_a_token_do_not(endpoint, method, world):
    case = RULES[endpoint.key][method]
    path = path_of(endpoint, case, world)
    with transaction.atomic():
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(world.users["staff"])
        body = case.body(world) if case.body else {}
        response = getattr(client, method.lower())(path, body, format="multipart" if case.multipart else "json")
        assert response.status_code == 403 and "CSRF" in response.json()["error"]["message"], endpoint.key
        transaction.set_rollback(True)
    with transaction.atomic():
        response = call(world, endpoint, method, case, "staff")  # a token: no cookie, no CSRF to forge
        assert response.status_code == case.expect["staff"], endpoint.key
        transaction.set_rollback(True)


def test_every_post_form_in_the_templates_carries_the_csrf_token():
    from pathlib import Path

    templates = Path(__file__).resolve().parents[2] / "frontend" / "templates"
    forms = 0
    for template in templates.rglob("*.html"):
        for form in re.findall(r"<form\b[^>]*>.*?</form>", template.read_text(), flags=re.S | re.I):
            if re.search(r'method=["\']?post', form, flags=re.I):
                forms += 1
                assert "{% csrf_token %}" in form, f"{template.name}: a POST form without {{% csrf_token %}}"
    assert forms >= 6  # login, launch, cancel, fork, dataset upload, preset create and edit
