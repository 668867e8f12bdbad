"""The runs list and a run page with 10,000 runs and 100 users.

100 users in 10 teams of 10; 10,000 runs (100 per user, each with a fully resolved default
spec, a status among the six, a summary of 20 metrics and two status changes). The viewer
is a member of every team, so every list pages through all 10,000 (the API's counts them
too). Over HTTP to a live Daphne (a session cookie for the pages, a token for the API),
30 requests each after one warm-up: the runs list page (first page, last page by its
cursor, filtered by status, a search), the run page of a run with a history (10
attempts, 10 checkpoints, 10 forks), and the API's list (first and last page) and run.
In-process (Django's test client): the queries per request, for the API list at page
sizes 10, 50 and 200 too, and the median time a request spends in its queries
(`database_ms_p50`: the database's share, apart from rendering and the machine's load).

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python -m bench.dashboard_lists

Writes bench/results/dashboard_lists.json (+ .html: latency per endpoint).
"""

import json
import time
from statistics import median

USERS = 100
TEAMS = 10
RUNS = 10_000
REQUESTS = 30
AIM_MS = 100
AIMED = ["list page", "run page", "api list", "api run"]


def seed(prefix: str):
    """The users, teams and runs; returns (viewer, a run with a history)."""
    from django.contrib.auth import get_user_model

    from accounts.models import Membership, Role, Team
    from runs import selectors
    from runs.models import Checkpoint, Run, RunAttempt, RunStatus, RunStatusChange

    User = get_user_model()
    teams = Team.objects.bulk_create(Team(name=f"{prefix}-team{t}") for t in range(TEAMS))
    users = User.objects.bulk_create(User(username=f"{prefix}-user{u}") for u in range(USERS))
    viewer = User.objects.create_user(f"{prefix}-viewer")
    Membership.objects.bulk_create(
        [Membership(team=teams[u % TEAMS], user=user, role=Role.MEMBER) for u, user in enumerate(users)]
        + [Membership(team=team, user=viewer, role=Role.MEMBER) for team in teams]
    )
    spec = selectors.spec_defaults()
    statuses = list(RunStatus.values)
    summary = {f"metric/{m}": m / 20 for m in range(20)}
    runs = Run.objects.bulk_create(
        (Run(owner=users[i % USERS], team=teams[(i % USERS) % TEAMS], name=f"{prefix}-run{i}", spec=spec,
             status=statuses[i % len(statuses)], total_steps=100, current_step=i % 100, summary=summary)
         for i in range(RUNS)),
        batch_size=1000,
    )  # fmt: skip
    RunStatusChange.objects.bulk_create(
        (RunStatusChange(run=run, from_status=old, to_status=new)
         for run in runs for old, new in [("", RunStatus.QUEUED), (RunStatus.QUEUED, run.status)]),
        batch_size=2000,
    )  # fmt: skip
    busy = runs[-1]  # the newest: first on the list
    RunAttempt.objects.bulk_create(RunAttempt(run=busy, number=n + 1, worker_host="w", worker_pid=1) for n in range(10))
    Checkpoint.objects.bulk_create(Checkpoint(run=busy, step=10 * (n + 1), path=f"/ckpt/{n}") for n in range(10))
    Run.objects.bulk_create(Run(owner=busy.owner, team=busy.team, name=f"{prefix}-fork{n}", spec=spec, parent=busy) for n in range(10))
    return viewer, busy


def main() -> None:
    from bench.dashboard_stack import latency_ms, live_web, load_average, start, write_plot

    load_at_start = load_average()
    prefix = start("dashboard_lists")
    import httpx
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from accounts.services import create_token
    from rollyard.pagination import Cursor
    from runs.models import Run

    began = time.perf_counter()
    viewer, busy = seed(prefix)
    seed_s = time.perf_counter() - began
    with connection.cursor() as cursor:
        # What autovacuum does after such an insert: statistics, and the visibility map
        # that lets a count read the index alone.
        cursor.execute("VACUUM ANALYZE")
    secret = create_token(viewer, prefix)[1]
    browser = Client(HTTP_HOST="127.0.0.1")
    browser.force_login(viewer)
    api = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {secret}")
    # The last page: the 50 oldest runs, reached by "older" links (a cursor at the 51st oldest).
    last_page = Cursor.of(Run.objects.filter(name__startswith=prefix).order_by("created_at", "id")[50])
    endpoints = {
        "list page": (browser, "/runs/"),
        "list page, last": (browser, f"/runs/?before={last_page}"),
        "list page, status filter": (browser, "/runs/?status=running"),
        "list page, search": (browser, f"/runs/?q={prefix}-run9999"),
        "run page": (browser, f"/runs/{busy.pk}/"),
        "api list": (api, "/api/runs/?limit=50"),
        "api list, last": (api, f"/api/runs/?limit=50&offset={RUNS - 40}"),
        "api run": (api, f"/api/runs/{busy.pk}/"),
    }

    def queries(client, url: str) -> int:
        client.get(url)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return len(captured)

    def database_ms(client, url: str, repeats: int = 10) -> float:
        """The median time a request spends in its queries (in-process): the database's
        share of the latency, apart from rendering and the machine's load."""
        spent: list[float] = []

        def timed(execute, sql, params, many, context):
            began = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                spent[-1] += time.perf_counter() - began

        with connection.execute_wrapper(timed):
            for _ in range(repeats):
                spent.append(0.0)
                assert client.get(url).status_code == 200, url
        return round(median(spent) * 1000, 2)

    query_counts = {name: queries(client, url) for name, (client, url) in endpoints.items()}
    database = {name: database_ms(client, url) for name, (client, url) in endpoints.items()}
    by_page_size = {limit: queries(api, f"/api/runs/?limit={limit}") for limit in (10, 50, 200)}

    timings: dict[str, list[float]] = {}
    cookies = {"sessionid": browser.cookies["sessionid"].value}
    with live_web("dashboard_lists") as (base_url, _):
        with httpx.Client(base_url=base_url, cookies=cookies, trust_env=False, timeout=30) as pages, \
             httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {secret}"}, trust_env=False, timeout=30) as rest:  # fmt: skip
            for name, (client, url) in endpoints.items():
                http = pages if client is browser else rest
                http.get(url).raise_for_status()  # warm
                timings[name] = []
                for _ in range(REQUESTS):
                    sent = time.perf_counter()
                    http.get(url).raise_for_status()
                    timings[name].append(time.perf_counter() - sent)

    latencies = {name: latency_ms(seconds) for name, seconds in timings.items()}
    # The aim: the list as it opens and a run page (page and API); the last page, a filter
    # and a search are measured beside it.
    worst = max((latencies[name] for name in AIMED), key=lambda row: row["p99"])
    metrics = {
        "users": USERS,
        "teams": TEAMS,
        "runs": RUNS,
        "seed_s": round(seed_s, 1),
        "latency_ms": latencies,
        "queries": query_counts,
        "database_ms_p50": database,
        "api_list_queries_by_page_size": by_page_size,
        "aim_p99_ms": AIM_MS,
        "aim_endpoints": AIMED,
        "load_average_1m": {"start": load_at_start, "end": load_average()},
        "met": worst["p99"] < AIM_MS and len(set(by_page_size.values())) == 1,
    }
    plot(timings, write_plot)

    from bench.record import record

    beyond = [name for name, row in latencies.items() if row["p99"] >= AIM_MS]
    parts = ", ".join(f"{name} p50 {row['p50']} / p99 {row['p99']} ms ({query_counts[name]} q, db {database[name]} ms)"
                      for name, row in latencies.items())
    summary = (
        f"{RUNS:,} runs, {USERS} users, viewer in all {TEAMS} teams, {REQUESTS} requests each over HTTP: {parts}; "
        f"API list queries at page size 10/50/200: {'/'.join(str(n) for n in by_page_size.values())}; "
        f"aim p99 < {AIM_MS} ms ({', '.join(AIMED)}) and constant queries: {'met' if metrics['met'] else 'missed'}"
        f"{'' if not beyond else '; over it: ' + ', '.join(beyond)}; "
        f"load {load_at_start} → {metrics['load_average_1m']['end']}; PostgreSQL, Daphne on loopback"
    )
    print(json.dumps(record("bench.dashboard_lists", metrics, summary), indent=2))


def plot(timings: dict[str, list[float]], write_plot) -> None:
    import plotly.graph_objects as go

    figure = go.Figure([go.Box(y=[s * 1000 for s in seconds], name=name, boxpoints="all") for name, seconds in timings.items()])
    figure.add_hline(y=AIM_MS, line_dash="dash", annotation_text="aim (p99)")
    figure.update_layout(title=f"Runs list and run page, {RUNS:,} runs and {USERS} users: latency per request",
                         yaxis_title="ms", width=1100, height=550)  # fmt: skip
    write_plot("dashboard_lists", figure)


if __name__ == "__main__":
    main()
