"""`rollyard`: launch, list, inspect, cancel and follow runs through the REST API, and run
the demo stack (`rollyard demo`).

    rollyard runs launch SPEC.yaml [--team T] [--name N]
    rollyard runs list [--team T] [--status S]
    rollyard runs show ID
    rollyard runs cancel ID
    rollyard runs logs ID [--follow]
    rollyard runs alerts ID
    rollyard runs alert-rule add ID --metric M (--above X | --below X) [--consecutive N] [--email A]...
    rollyard runs alert-rule remove ID RULE_ID

The server and credentials come from --url/ROLLYARD_URL and --token/ROLLYARD_TOKEN.
Exit codes: 0 done, 2 bad usage, 3 not authenticated, 4 forbidden, 5 not found,
6 invalid request or spec, 7 conflict (e.g. already finished), 8 server unreachable,
1 anything else.
"""

import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from rollyard_cli.client import ApiError, Client

TERMINAL_STATUSES = {"succeeded", "failed", "cancelled"}
LOG_KINDS = ["log", "status"]

app = typer.Typer(
    help="Rollyard from the command line: runs over the REST API, and the demo stack.",
    no_args_is_help=True,
    add_completion=False,
)
runs_app = typer.Typer(help="Launch, list, show, cancel and follow runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
rule_app = typer.Typer(help="Add and remove a run's metric-threshold alert rules.", no_args_is_help=True)
runs_app.add_typer(rule_app, name="alert-rule")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

UrlOption = Annotated[str, typer.Option("--url", envvar="ROLLYARD_URL", help="the server")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="ROLLYARD_TOKEN", help="an API token's secret", show_default=False)
]
DEFAULT_URL = "http://127.0.0.1:8000"


def fail(error: ApiError) -> typer.Exit:
    err.print(f"[red]error[/red] {error}", markup=True)
    for field, reasons in error.fields.items():
        for reason in reasons:
            err.print(f"  {field}: {reason}", markup=False)
    return typer.Exit(error.exit_code)


def call(action, *args: Any, **kwargs: Any) -> Any:
    """Run one API call; an API error ends the command with its exit code."""
    try:
        return action(*args, **kwargs)
    except ApiError as error:
        raise fail(error) from None


@runs_app.command("launch")
def launch(
    spec_file: Annotated[Path, typer.Argument(help="a run spec, YAML or JSON", exists=True, dir_okay=False)],
    team: Annotated[str | None, typer.Option(help="the team's name or id (default: your first team)")] = None,
    name: Annotated[str | None, typer.Option(help="the run's name (overrides the spec's)")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Launch a run from a spec file; problems with the spec are listed field by field."""
    try:
        spec = yaml.safe_load(spec_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise fail(ApiError(f"{spec_file} is not valid YAML or JSON: {exc}", 6)) from None
    body: dict[str, Any] = {"spec": spec}
    if team is not None:
        body["team"] = team
    if name is not None:
        body["name"] = name
    client = Client(url, token)
    run = call(client.post, "/api/runs/", body)
    out.print(f"launched run #{run['id']} {run['name']!r} in team {run['team']} ({run['status']})")
    out.print(f"  watch it: {client.base_url}{run['url']}")


@runs_app.command("list")
def list_runs(
    team: Annotated[str | None, typer.Option(help="only this team's runs (name or id)")] = None,
    status: Annotated[list[str] | None, typer.Option(help="only runs in this status (repeatable)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many, newest first")] = 50,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Runs you may see, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if team is not None:
        params["team"] = team
    if status:
        params["status"] = status
    page = call(Client(url, token).get, "/api/runs/", **params)
    table = Table("id", "name", "team", "owner", "status", "progress", "created")
    for run in page["results"]:
        table.add_row(
            str(run["id"]), run["name"], run["team"], run["owner"], run["status"],
            f"{run['current_step']}/{run['total_steps']}", moment(run["created_at"]),
        )  # fmt: skip
    out.print(table)
    shown = len(page["results"])
    if page["count"] > shown:
        out.print(f"{shown} of {page['count']} runs (--limit for more)")


@runs_app.command("show")
def show(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """A run's status, progress and latest metrics."""
    run = call(Client(url, token).get, f"/api/runs/{run_id}/")
    table = Table(show_header=False, box=None)
    for key in ("id", "name", "team", "owner", "status", "status_reason", "created_at", "started_at", "finished_at"):
        table.add_row(key, str(run.get(key) if run.get(key) is not None else "-"))
    table.add_row("progress", f"{run['current_step']}/{run['total_steps']} steps")
    out.print(table)
    if run["summary"]:
        metrics = Table("metric", "latest")
        for metric, value in sorted(run["summary"].items()):
            metrics.add_row(metric, "-" if value is None else f"{value:.4g}")
        out.print(metrics)


@runs_app.command("cancel")
def cancel(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Cancel a run: a queued one at once, a running one between two steps."""
    run = call(Client(url, token).post, f"/api/runs/{run_id}/cancel/")
    if run["status"] == "cancelled":
        out.print(f"run #{run_id} cancelled")
    else:
        out.print(f"run #{run_id} will stop after its current step ({run['status']}, cancel requested)")


@runs_app.command("logs")
def logs(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run finishes")] = False,
    poll_seconds: Annotated[float, typer.Option(min=0.1, help="with --follow, how often to ask")] = 1.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """A run's log lines and status changes, oldest first."""
    client = Client(url, token)
    after: int | None = None
    while True:
        # Read the status before the events: a run seen finished has stored all its events.
        finished = call(client.get, f"/api/runs/{run_id}/")["status"] in TERMINAL_STATUSES
        while True:
            params: dict[str, Any] = {"kind": LOG_KINDS, "limit": 500}
            if after is not None:
                params["after"] = after
            page = call(client.get, f"/api/runs/{run_id}/events/", **params)
            for event in page["events"]:
                out.print(log_line(event), markup=False)
            after = page["last_id"]
            if len(page["events"]) < 500:
                break
        if not follow or finished:
            return
        time.sleep(poll_seconds)


def log_line(event: dict[str, Any]) -> str:
    moment = time.strftime("%H:%M:%S", time.localtime(event["wall_time"]))
    if event["kind"] == "status":
        text = f"status {event['status']}" + (f": {event['message']}" if event.get("message") else "")
        return f"{moment} {text}"
    return f"{moment} {event.get('level', 'info'):7} {event['message']}"


@runs_app.command("alerts")
def alerts(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """A run's alert rules, then its alerts, newest first, one a line (as `logs` prints:
    a message is prose, which a table folds at 80 columns)."""
    client = Client(url, token)
    rules = call(client.get, f"/api/runs/{run_id}/alert-rules/")
    if not rules:
        out.print(f"run #{run_id} has no alert rules")
    for rule in rules:
        line = (
            f"rule #{rule['id']} {rule_text(rule)}, mails {', '.join(rule['emails']) or 'the owner'}, "
            f"checked to step {rule['checked_step']}: {'alerting' if rule['open_alert'] else 'quiet'}"
        )
        out.print(line, markup=False, soft_wrap=True)
    history = call(client.get, f"/api/runs/{run_id}/alerts/")
    if not history:
        out.print(f"run #{run_id} has had no alerts")
    for alert in history:
        state = f"resolved {moment(alert['resolved_at'])}" if alert["resolved_at"] else "open"
        rule = f" (rule #{alert['rule']})" if alert["rule"] else ""
        line = f"alert #{alert['id']} {moment(alert['opened_at'])} {alert['kind']}{rule}, {state}: {alert['message']}"
        out.print(line, markup=False, soft_wrap=True)


def rule_text(rule: dict[str, Any]) -> str:
    """"val/acc/mean@1 below 0.6 for 2 steps"."""
    steps = rule["consecutive"]
    return f"{rule['metric']} {rule['comparison']} {rule['threshold']:g} for {steps} step{'s' if steps > 1 else ''}"


def moment(iso: str) -> str:
    """An API timestamp as the tables print it: date and time to the second, UTC."""
    return iso[:19].replace("T", " ")


@rule_app.command("add")
def add_rule(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    metric: Annotated[str, typer.Option(help="a metric name of docs/metrics.md, e.g. val/acc/mean@1")],
    above: Annotated[float | None, typer.Option(help="alert while the metric is above this")] = None,
    below: Annotated[float | None, typer.Option(help="alert while the metric is below this")] = None,
    consecutive: Annotated[int, typer.Option(help="reported steps in a row that must cross")] = 1,
    email: Annotated[list[str] | None, typer.Option(help="an address to mail besides the run's owner (repeatable)")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Add a rule to a run: it alerts once the metric crosses the threshold for that many
    reported steps in a row, and resolves when it comes back."""
    if (above is None) == (below is None):
        raise fail(ApiError("give exactly one of --above or --below", 2))
    comparison, threshold = ("above", above) if above is not None else ("below", below)
    body = {"metric": metric, "comparison": comparison, "threshold": threshold, "consecutive": consecutive,
            "emails": email or []}  # fmt: skip
    rule = call(Client(url, token).post, f"/api/runs/{run_id}/alert-rules/", body)
    out.print(f"added rule #{rule['id']} to run #{run_id}: {rule_text(rule)}", markup=False)


@rule_app.command("remove")
def remove_rule(
    run_id: Annotated[int, typer.Argument(help="the run's id")],
    rule_id: Annotated[int, typer.Argument(help="the rule's id (rollyard runs alerts RUN lists them)")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Remove a rule from a run: its open alert is resolved, its alerts stay listed."""
    call(Client(url, token).delete, f"/api/runs/{run_id}/alert-rules/{rule_id}/")
    out.print(f"removed rule #{rule_id} from run #{run_id}")


@app.command("demo")
def demo(port: Annotated[int, typer.Option(envvar="ROLLYARD_PORT", help="the web server's port")] = 8000) -> None:
    """Run the whole platform on this machine with a demo run learning live."""
    from devstack.__main__ import demo as run_demo

    raise typer.Exit(run_demo(port))


def main() -> None:
    app()
