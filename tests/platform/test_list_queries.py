"""The runs list and the run page cost a fixed number of queries, however many runs a page
shows or how much a run has (attempts, checkpoints, forks, status changes): no query per
row. bench.dashboard_lists times them with 10,000 runs and 100 users."""

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from accounts.services import add_member, default_team
from runs.models import Checkpoint, Run, RunAttempt, RunStatus, RunStatusChange

pytestmark = pytest.mark.django_db


def queries_of(client, url: str) -> int:
    client.get(url)  # the first use of a token or session may write (its last use): not per page
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return len(queries)


@pytest.fixture
def browser_alice(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def many_runs(owners, count: int) -> None:
    """`count` runs spread over `owners`, statuses and a summary each, as a busy team has."""
    statuses = [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.FAILED]
    Run.objects.bulk_create(
        Run(owner=owner, team=team, name=f"run-{i}", spec={"algorithm": {"name": "grpo"}}, status=statuses[i % 4],
            total_steps=100, current_step=i % 100, summary={"reward/mean": i / count, "acc/mean": 0.5})
        for i in range(count) for owner, team in [owners[i % len(owners)]]
    )  # fmt: skip


def test_the_runs_list_api_costs_the_same_queries_at_any_page_size(api_alice, alice, bob):
    team = default_team(alice)
    add_member(team, bob, Role.MEMBER)
    many_runs([(alice, team), (bob, team)], 60)

    counts = {limit: queries_of(api_alice, f"/api/runs/?limit={limit}") for limit in (1, 10, 50)}

    assert len(set(counts.values())) == 1, counts


def test_the_runs_list_page_costs_the_same_queries_for_2_or_50_runs(browser_alice, alice, bob):
    team = default_team(alice)
    add_member(team, bob, Role.MEMBER)
    many_runs([(alice, team), (bob, team)], 2)
    few = queries_of(browser_alice, "/runs/")
    many_runs([(alice, team), (bob, team)], 48)
    many = queries_of(browser_alice, "/runs/")  # a full page: 50 runs

    assert few == many, (few, many)
    # The list reads each run's algorithm out of its spec in the query.
    assert "<td>grpo</td>" in browser_alice.get("/runs/").content.decode()


def test_an_older_page_costs_what_the_first_does_and_nothing_counts_the_runs(browser_alice, alice):
    many_runs([(alice, default_team(alice))], 120)
    older = re.search(r'href="\?(before=[0-9_]+)" rel="next"', browser_alice.get("/runs/").content.decode())[1]

    first = queries_of(browser_alice, "/runs/")
    with CaptureQueriesContext(connection) as queries:
        assert browser_alice.get(f"/runs/?{older}").status_code == 200

    assert len(queries) == first
    assert not any("COUNT(" in query["sql"] for query in queries.captured_queries)


def test_the_run_page_costs_the_same_queries_however_much_the_run_has(browser_alice, alice):
    team = default_team(alice)

    def run_with(things: int) -> Run:
        run = Run.objects.create(owner=alice, team=team, name=f"with-{things}", spec={}, status=RunStatus.RUNNING)
        RunStatusChange.objects.bulk_create(RunStatusChange(run=run, to_status=RunStatus.RUNNING) for _ in range(things))
        RunAttempt.objects.bulk_create(RunAttempt(run=run, number=n + 1, worker_host="w", worker_pid=1) for n in range(things))
        Checkpoint.objects.bulk_create(Checkpoint(run=run, step=n + 1, path=f"/c/{n}") for n in range(things))
        Run.objects.bulk_create(Run(owner=alice, team=team, name="child", spec={}, parent=run) for _ in range(things))
        return run

    little, much = run_with(1), run_with(10)

    assert queries_of(browser_alice, f"/runs/{little.pk}/") == queries_of(browser_alice, f"/runs/{much.pk}/")


def test_filtering_the_list_by_status_adds_no_distinct(api_alice, alice):
    many_runs([(alice, default_team(alice))], 8)  # 2 of each of 4 statuses

    with CaptureQueriesContext(connection) as queries:
        body = api_alice.get("/api/runs/?status=running&status=failed").json()

    assert body["count"] == 4
    assert not any("DISTINCT" in query["sql"] for query in queries.captured_queries)
