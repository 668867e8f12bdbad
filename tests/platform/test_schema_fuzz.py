"""Schema fuzzing: schemathesis reads the OpenAPI schema the app serves and sends each
operation generated requests, valid and invalid, through the real Django app (WSGI,
in-process, on the test database), authenticated with a real API token and without one.
Whatever it sends, the API must never answer 5xx.

Stateful: sequences of linked calls, where one answer's ids feed the next request
(POST /api/presets/ → GET /api/presets/{preset_id}/versions/, GET /api/runs/ → POST
/api/runs/{id}/fork/, ...), with the links schemathesis infers from the schema's response
fields and path parameters.

ROLLYARD_FUZZ_EXAMPLES sets the examples per operation (default 20: about 40 s for the
whole file on an idle machine); ROLLYARD_FUZZ_SEQUENCES the stateful sequences per role
(default 25, up to 10 calls each)."""

import os

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from accounts.services import create_token
from runs import launch

pytestmark = pytest.mark.timeout(300)

EXAMPLES_PER_OPERATION = int(os.environ.get("ROLLYARD_FUZZ_EXAMPLES", 20))
SEQUENCES = int(os.environ.get("ROLLYARD_FUZZ_SEQUENCES", 25))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,  # the same requests every run: a failure reproduces
    database=None,
)

# The schema endpoint is public, so loading it needs neither a token nor the database.
SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture
def wsgi_in_test_transaction(db):
    """Requests through the WSGI handler, inside the test's transaction. The handler
    closes the database connection after each request, which would end the transaction
    (and the test's isolation); Django's test client unhooks the same signal handler."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def cases(operation, real_ids: dict[str, int] | None = None) -> st.SearchStrategy:
    """Valid and invalid requests of the operation; with `real_ids`, valid requests also
    go to objects that exist (random ids alone would nearly always find nothing)."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    path_names = {parameter.name for parameter in operation.path_parameters}
    if real_ids and path_names and path_names <= set(real_ids):
        existing = {name: real_ids[name] for name in path_names}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=existing))
    return st.one_of(strategies)


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_request_with_a_token_gets_a_server_error(operation, teams, wsgi_in_test_transaction):
    run = launch.create_run(teams.member, {"training": {"steps": 2}}, name="fuzzed", team=teams.team)
    secret = create_token(teams.member, "fuzz")[1]
    # Tokens stay out: a fuzzed DELETE would revoke the one the fuzzer uses.
    real_ids = {"team_id": teams.team.pk, "user_id": teams.member.pk}
    if operation.path.startswith("/api/runs/"):
        real_ids["id"] = run.pk
    elif operation.path.startswith("/api/teams/"):
        real_ids["id"] = teams.team.pk

    @FUZZ_SETTINGS
    @given(case=cases(operation, real_ids))
    def fuzz(case) -> None:
        case.call_and_validate(headers={"Authorization": f"Token {secret}"}, checks=[not_a_server_error])

    fuzz()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_request_without_a_token_gets_a_server_error(operation, wsgi_in_test_transaction):
    @FUZZ_SETTINGS
    @given(case=cases(operation))
    def fuzz(case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    fuzz()


@pytest.mark.parametrize("role", ["member", "staff"])
def test_no_sequence_of_linked_calls_gets_a_server_error(role, teams, staff, make_run, wsgi_in_test_transaction):
    """As a member of team "ml" (whose run, dataset-free preset and team the links start
    from) and as staff (who also reach pools, quotas and teams' writes)."""
    user = teams.member if role == "member" else staff
    launch.create_run(teams.member, {"training": {"steps": 2}}, name="fuzzed", team=teams.team)
    secret = create_token(user, "fuzz")[1]
    assert SCHEMA.as_state_machine().bundles, "no links inferred: the stateful phase would test nothing"

    class LinkedCalls(SCHEMA.as_state_machine()):
        # Each sequence starts from the same rows (a savepoint rolled back after it), so
        # Hypothesis replays a sequence exactly when it shrinks one.
        def setup(self) -> None:
            self.savepoint = transaction.atomic()
            self.savepoint.__enter__()

        def teardown(self) -> None:
            transaction.set_rollback(True)
            self.savepoint.__exit__(None, None, None)

        def get_call_kwargs(self, case) -> dict:
            return {"headers": {"Authorization": f"Token {secret}"}}

        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            case.validate_response(response, checks=[not_a_server_error])

    LinkedCalls.run(
        settings=settings(
            max_examples=SEQUENCES,
            stateful_step_count=10,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("created_after", "status"),
    [
        ("0562-10-26T06:09:21+17:41", 200),  # found by the stateful fuzzing: PostgreSQL refused the offset (500)
        ("0001-01-01T00:00:00+23:00", 400),  # no UTC equivalent: before year 1
    ],
)
def test_a_creation_time_filter_with_any_offset_is_compared_in_utc(teams, created_after, status, error_of):
    response = teams.client(teams.member).get("/api/runs/", {"created_after": created_after})
    assert response.status_code == status, response.content
    if status == 400:
        assert "created_after" in error_of(response)["fields"]
