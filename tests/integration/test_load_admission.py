"""Load: 50 launches at once by 10 users of two teams (one thread and one database
connection each) against team quotas of 4 and 3 GPUs in a 12-GPU pool, with sweeps
racing them, then every admitted run finishing while sweeps race the releases
(bench/load.py's scenario 1, on the test database: PostgreSQL in CI). Counted from the
database: never more GPUs held than a quota allows, every run admitted exactly once."""

import pytest
from django.db import connection

from bench.load import LAUNCH_USERS, LAUNCHES_PER_USER, TEAM_QUOTAS, admission_storm, dispatch_in_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def test_fifty_simultaneous_launches_never_over_admit_and_each_run_is_admitted_once(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises every writer: the race needs PostgreSQL (DATABASE_URL)")
    enqueued: list[int] = []
    dispatch_in_process(enqueued, monkeypatch.setattr)
    result = admission_storm("load")

    launches = LAUNCH_USERS * LAUNCHES_PER_USER  # 10 users × 5 = 50
    assert result["errors"] == []
    assert result["runs_stored"] == launches
    # Quotas 4 + 3 = 7 GPUs bind before the pool's 12: peaks are exactly the quotas.
    assert result["over_admissions"] == 0
    assert sorted(result["team_peak_gpus"].values()) == sorted(TEAM_QUOTAS)
    assert result["pool_peak_gpus"] == sum(TEAM_QUOTAS)
    assert result["admitted_while_launching"] == sum(TEAM_QUOTAS)
    assert result["runs_succeeded"] == launches
    assert (result["runs_admitted_once"], result["runs_admitted_twice_or_more"]) == (launches, 0)
    assert len(enqueued) == launches and len(set(enqueued)) == launches
