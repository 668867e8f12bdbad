"""`python -m devstack demo`: the whole platform on one machine, a run learning live.

Starts the embedded services (Redis; SQLite unless DATABASE_URL says otherwise), applies
migrations, creates the demo user, starts the web server, a run worker and a housekeeping
worker with Celery beat (reconciler, retention, admission sweeps), launches a GRPO
run on the built-in task and prints where to watch it. Ctrl-C (or SIGTERM) stops everything.
"""

import argparse
import logging
import os
import signal
import sys
import time

from devstack.processes import start_housekeeper, start_web, start_worker, stack_env, stop, wait_for_http
from devstack.services import ensure_redis, redis_url
from rollyard.defaults import VAR_DIR

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
# The demo starts one run worker, which drives one run at a time.
DEMO_RUN_WORKERS = 1


def prepare_database():
    """Migrate and make the demo user (a superuser, so the admin pages open too).
    Returns the secret of a new API token of the user (secrets are shown once and not
    stored, so every start makes its own) and the user."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rollyard.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from accounts.services import create_token

    call_command("migrate", interactive=False, verbosity=0)
    user, created = get_user_model().objects.get_or_create(
        username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save()
    _, secret = create_token(user, "demo")
    return secret, user


def match_cpu_pool_to_workers(user) -> None:
    """Give the default CPU pool as many run slots as the demo has run workers. Admission
    counts the pool's slots, not live workers: with more slots than workers, a second run
    is admitted and then sits with no worker and no reason given, where with one slot it
    waits in the queue (/queue/) with its position and why."""
    from quotas.models import DEFAULT_POOL, Pool
    from quotas.services import save_pool_or_quota

    pool = Pool.objects.filter(name=DEFAULT_POOL).first()
    if pool is not None and pool.capacity != DEMO_RUN_WORKERS:
        pool.capacity = DEMO_RUN_WORKERS
        save_pool_or_quota(user, pool)


def launch_demo_run(user) -> int:
    from runs.launch import create_run

    run = create_run(user, {"name": "demo: GRPO on arith"})
    return run.id


def demo(port: int) -> int:
    VAR_DIR.mkdir(exist_ok=True)
    # Ctrl-C (SIGINT) and `kill`, a service manager or `docker stop` (SIGTERM) take the same
    # way out, through `finally`, so nothing started here outlives the demo. Set before
    # anything starts, and for SIGINT too: a non-interactive shell starts background jobs
    # with SIGINT ignored, and every process started here leads a group of its own, out of
    # reach of a terminal's Ctrl-C, so only this launcher can stop them.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    redis = web = worker = housekeeper = None
    try:
        redis = ensure_redis()
        env = stack_env(REDIS_URL=redis_url())
        os.environ.update(REDIS_URL=env["REDIS_URL"])
        token, user = prepare_database()
        match_cpu_pool_to_workers(user)
        # httpx logs every request at INFO (Django's root level): the readiness polls
        # below would print between the launcher's own lines.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        web = start_web(port, env, VAR_DIR / "web.log")
        worker = start_worker(env, VAR_DIR / "worker.log")
        housekeeper = start_housekeeper(env, VAR_DIR / "housekeeper.log")
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/accounts/login/", web)
        run_id = launch_demo_run(user)
        print(
            f"\nRollyard is up.\n"
            f"  watch the demo run:  {base}/runs/{run_id}/\n"
            f"  log in as:           {DEMO_USER} / {DEMO_PASSWORD}\n"
            f"  API token:           {token}\n"
            f"  REST API docs:       {base}/api/docs/ (OpenAPI schema: {base}/api/schema/)\n"
            f"  logs:                {VAR_DIR}/web.log, {VAR_DIR}/worker.log, {VAR_DIR}/housekeeper.log\n"
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        while web.poll() is None and worker.poll() is None and housekeeper.poll() is None:
            time.sleep(1)
        print("a stack process exited; see the logs above", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second signal must not cut the cleanup short (stop is bounded by its grace
        # period anyway). Redis last: the workers talk to it while they shut down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop(web, worker, housekeeper)
        stop(redis)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollyard", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run the platform with a demo run learning live")
    demo_parser.add_argument(
        "--port", type=int, default=int(os.environ.get("ROLLYARD_PORT", 8000)),
        help="the web server's port on 127.0.0.1 (default: $ROLLYARD_PORT, else 8000)",
    )
    args = parser.parse_args(argv)
    return demo(args.port)


if __name__ == "__main__":
    sys.exit(main())
