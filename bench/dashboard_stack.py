"""What the dashboard benchmarks (bench/dashboard_*.py) share: the platform on PostgreSQL
and Redis as in CI, a live Daphne on loopback, latency quantiles and plots.

Each benchmark namespaces what it creates with a fresh prefix (users, teams, channel
groups) so it can run against a database and Redis that others use too.
"""

import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from statistics import quantiles

from bench.load import _setup_django

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def start(name: str) -> str:
    """Refuses to run without PostgreSQL; sets Django up on the configured database (migrated)
    and returns this run's prefix."""
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit(f"bench.{name} measures PostgreSQL and Redis: set DATABASE_URL=postgres://... and REDIS_URL")
    prefix = f"{name.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    os.environ["ROLLYARD_CHANNEL_PREFIX"] = prefix  # groups and cache keys of this run only
    # As deployed (compose.yaml): without DEBUG, which also keeps a log of every query.
    os.environ.setdefault("DJANGO_DEBUG", "0")
    _setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    return prefix


@contextlib.contextmanager
def live_web(name: str) -> Iterator[tuple[str, str]]:
    """A Daphne serving the platform on a free loopback port: (http base url, ws base url)."""
    from devstack.processes import free_port, stack_env, start_web, stop, wait_for_http
    from devstack.services import VAR_DIR

    port = free_port()
    web = start_web(port, stack_env(), VAR_DIR / f"bench-{name}-web.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/accounts/login/", web)
        yield f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    finally:
        stop(web)


def load_average() -> float:
    """The 1-minute load average: the machine is shared, and other work shows here."""
    return round(os.getloadavg()[0], 2)


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of a list of durations in seconds, in milliseconds."""
    cuts = quantiles(seconds, n=100, method="inclusive") if len(seconds) > 1 else [seconds[0]] * 99
    return {
        "count": len(seconds),
        "p50": round(cuts[49] * 1000, 1),
        "p90": round(cuts[89] * 1000, 1),
        "p99": round(cuts[98] * 1000, 1),
        "max": round(max(seconds) * 1000, 1),
    }


def write_plot(name: str, figure) -> Path:
    """bench/results/NAME.html, loading plotly.js from the installed package (no CDN)."""
    import plotly

    path = RESULTS_DIR / f"{name}.html"
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    figure.write_html(path, include_plotlyjs=os.path.relpath(plotly_js, path.parent))
    return path


def watched_run(prefix: str, total_steps: int = 0):
    """A running run with an open attempt, its owner and an API token of the owner:
    (run, attempt, secret)."""
    from django.contrib.auth import get_user_model

    from accounts.services import create_token, default_team
    from runs.models import Run, RunAttempt, RunStatus

    owner = get_user_model().objects.create_user(f"{prefix}-owner")
    run = Run.objects.create(owner=owner, team=default_team(owner), name=f"{prefix}-run", spec={},
                             status=RunStatus.RUNNING, total_steps=total_steps)  # fmt: skip
    attempt = RunAttempt.objects.create(run=run, number=1, worker_host="bench", worker_pid=os.getpid())
    return run, attempt, create_token(owner, prefix)[1]
