"""The runs list's visibility filter on PostgreSQL: a subquery of the viewer's teams
against their team ids resolved first (`accounts.permissions.visible_to`).

200,000 runs in 100 teams of 2,000 (created in turn, so a team's runs are spread over
the whole history), seeded in one transaction that is rolled back at the end. For
viewers in 1, 3 and 10 teams, the first page of the runs list as the page asks for it
(newest first by (created_at, id), 51 rows, the owner joined, the algorithm read from
the spec) is run under EXPLAIN ANALYZE, 20 times each way, filtered by

- before: `team_id IN (SELECT team_id FROM memberships WHERE user_id = ...)`, and
- after:  `team_id IN (<ids>)`, the ids read by one query first (timed too: in the
  database, and the round trip through Django, which is what it adds to a request),

and `?team=` (one team's index, read in order) as the floor. Reported: the median
planning + execution time and the plan's top nodes.

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python -m bench.list_visibility

Writes bench/results/list_visibility.json.
"""

import json
import re
import time
from statistics import median

TEAMS = 100
RUNS_PER_TEAM = 2_000
REPEATS = 20
PAGE = 51  # keyset_page reads a page of 50 and one more
VIEWER_TEAMS = (1, 3, 10)


class RolledBack(Exception):
    """Raised to leave the seeding transaction without committing it."""


def seed(prefix: str):
    from datetime import UTC, datetime, timedelta

    from django.contrib.auth import get_user_model

    from accounts.models import Membership, Role, Team
    from runs.models import Run, RunStatus

    User = get_user_model()
    teams = Team.objects.bulk_create(Team(name=f"{prefix}-team{t}") for t in range(TEAMS))
    owners = User.objects.bulk_create(User(username=f"{prefix}-owner{t}") for t in range(TEAMS))
    viewers = {count: User.objects.create_user(f"{prefix}-viewer{count}") for count in VIEWER_TEAMS}
    Membership.objects.bulk_create(
        [Membership(team=team, user=owner, role=Role.MEMBER) for team, owner in zip(teams, owners, strict=True)]
        + [Membership(team=teams[t], user=viewer, role=Role.VIEWER) for count, viewer in viewers.items() for t in range(count)]
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = list(RunStatus.values)
    spec = {"algorithm": {"name": "grpo"}}
    for first in range(0, TEAMS * RUNS_PER_TEAM, 10_000):
        Run.objects.bulk_create(
            (Run(owner=owners[i % TEAMS], team=teams[i % TEAMS], name=f"{prefix}-run{i}", spec=spec,
                 status=statuses[i % len(statuses)], total_steps=100, created_at=start + timedelta(seconds=i),
                 status_changed_at=start + timedelta(seconds=i), summary={"reward/mean": 0.5, "acc/mean": 0.5})
             for i in range(first, first + 10_000)),
            batch_size=10_000,
        )  # fmt: skip
    return teams, viewers


def first_page(runs):
    """The runs list page's query (runs.views.run_list) over `runs`."""
    from django.db.models.fields.json import KT

    rows = runs.select_related("owner").defer("spec", "retention").annotate(algorithm=KT("spec__algorithm__name"))
    return rows.order_by("-created_at", "-id")[:PAGE]


def explained(queryset) -> tuple[float, str]:
    """Median planning + execution time (ms) of REPEATS EXPLAIN ANALYZE runs, and the plan's
    first lines (its top nodes)."""
    from django.db import connection

    sql, params = queryset.query.sql_with_params()
    times, plan = [], ""
    with connection.cursor() as cursor:
        for _ in range(REPEATS):
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT TEXT) {sql}", params)
            lines = [row[0] for row in cursor.fetchall()]
            text = "\n".join(lines)
            times.append(sum(float(ms) for ms in re.findall(r"(?:Planning|Execution) Time: ([0-9.]+) ms", text)))
            plan = " / ".join(line.strip() for line in lines[:4])
    return round(median(times), 3), plan


def main() -> None:
    from bench.dashboard_stack import load_average, start

    load_at_start = load_average()
    prefix = start("list_visibility")
    from django.db import connection, transaction

    from accounts.models import Membership
    from accounts.permissions import visible_to
    from runs.models import Run

    metrics: dict = {"teams": TEAMS, "runs": TEAMS * RUNS_PER_TEAM, "repeats": REPEATS}
    try:
        with transaction.atomic():
            began = time.perf_counter()
            teams, viewers = seed(prefix)
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE runs_run")
                cursor.execute("ANALYZE accounts_membership")
            metrics["seed_s"] = round(time.perf_counter() - began, 1)
            for count, viewer in viewers.items():
                subquery = Run.objects.filter(team__in=Membership.objects.filter(user=viewer).values("team_id"))
                team_ids = Membership.objects.filter(user=viewer).values_list("team_id", flat=True)
                ids_round_trip = []
                for _ in range(REPEATS):
                    sent = time.perf_counter()
                    list(team_ids.all())  # a fresh queryset: a used one answers from its cache
                    ids_round_trip.append((time.perf_counter() - sent) * 1000)
                ids_ms, _ = explained(team_ids)
                before_ms, before_plan = explained(first_page(subquery))
                after_ms, after_plan = explained(first_page(visible_to(viewer, Run.objects.all())))
                metrics[f"{count}_teams"] = {
                    "runs_visible": count * RUNS_PER_TEAM,
                    "before_ms": before_ms,
                    "after_ms": after_ms,
                    "team_ids_query_ms": ids_ms,  # in the database, as the list's query is measured
                    "team_ids_round_trip_ms": round(median(ids_round_trip), 3),  # through Django, from Python
                    "before_plan": before_plan,
                    "after_plan": after_plan,
                }
            metrics["team_filter_ms"], metrics["team_filter_plan"] = explained(first_page(Run.objects.filter(team=teams[0])))
            raise RolledBack
    except RolledBack:
        pass
    metrics["load_average_1m"] = {"start": load_at_start, "end": load_average()}

    from bench.record import record

    parts = ", ".join(
        f"{count} team{'s' if count > 1 else ''} ({metrics[f'{count}_teams']['runs_visible']:,} runs): "
        f"{metrics[f'{count}_teams']['before_ms']} → {metrics[f'{count}_teams']['after_ms']} ms "
        f"(+ {metrics[f'{count}_teams']['team_ids_query_ms']} ms for the ids, "
        f"{metrics[f'{count}_teams']['team_ids_round_trip_ms']} ms round trip)"
        for count in VIEWER_TEAMS
    )
    summary = (
        f"{TEAMS * RUNS_PER_TEAM:,} runs in {TEAMS} teams, the list's first page under EXPLAIN ANALYZE (median of "
        f"{REPEATS}), subquery of the viewer's teams → their ids: {parts}; ?team= {metrics['team_filter_ms']} ms; "
        f"load {load_at_start} → {metrics['load_average_1m']['end']}; PostgreSQL on loopback"
    )
    print(json.dumps(record("bench.list_visibility", metrics, summary), indent=2))


if __name__ == "__main__":
    main()
