"""Alerts on runs: dead (heartbeat lost), stuck (heartbeats but no step progress), idle
(the trainer idle above a threshold), and metric thresholds (a run's AlertRules). At most
one open Alert per (run, kind), and per rule for metric alerts: opening one that is
already open does nothing, so a problem that lasts many sweeps notifies once.

Rules are evaluated by the housekeeper's sweep, not at ingest: the sweep reads each rule's
points reported since its last look (an index range of MetricPoint), so telemetry ingest
pays nothing for them and no step between two sweeps is missed; an alert opens within a
sweep period (ROLLYARD_RECONCILE_EVERY_S) of the step that trips it.

Each new alert is POSTed as JSON to settings.ROLLYARD_ALERT_WEBHOOK_URL and mailed to its
`email_to` (the run's owner, and a rule's own addresses) through Django's email framework
when settings.EMAIL_HOST is set, after it is stored; a delivery that fails is recorded on
the row, per channel, and retried by the next sweep, and never breaks the sweep.

Every alert that opens or resolves is also pushed to the run's open pages on commit
(runs.live, {"type": "alerts", "alerts": [...]}), so the run page shows it without a reload.
"""

import functools
import logging
import math
import re
import smtplib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from engine.spec import SpecError
from rollyard.defaults import REPO_ROOT
from rollyard.text import count
from runs import live
from runs.lifecycle import RunPermissionDenied, User, check_can_manage
from runs.models import Alert, AlertComparison, AlertKind, AlertRule, MetricPoint, Run, RunStatus

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0
# The metric names a rule may watch: the tables of these sections of the metrics page.
# tests/test_metrics_doc.py holds "Emitted today" to exactly what the engine reports on
# the CPU, tests/engine/test_nvml.py the GPU section to what it reports on a GPU.
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
METRIC_SECTIONS = ("Emitted today", "On GPU nodes (NVML)")
RULE_FIELDS = ("metric", "comparison", "threshold", "consecutive", "emails")
MAX_CONSECUTIVE = 100_000
MAX_RULE_EMAILS = 10


class InvalidRule(SpecError):
    """An alert rule that cannot be evaluated; `problems` holds (field, reason) pairs, and
    the API answers it as any spec error (400 naming each field)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        listed = "; ".join(f"{field}: {reason}" for field, reason in problems)
        ValueError.__init__(self, f"invalid alert rule: {listed}")


def open_alert(run: Run, kind: AlertKind, message: str) -> Alert | None:
    """Open a dead, stuck or idle alert unless one of this kind is open for the run.
    Returns the new alert."""
    if Alert.objects.filter(run=run, kind=kind, resolved_at__isnull=True).exists():
        return None
    try:
        with transaction.atomic():
            alert = Alert.objects.create(run=run, kind=kind, message=message, email_to=recipients(run))
    except IntegrityError:  # another sweep opened it between our check and our insert
        return None
    publish_on_commit([alert])
    return alert


def recipients(run: Run, rule: AlertRule | None = None) -> list[str]:
    """Whom an alert of `run` is mailed to: its owner when they have an address, then the
    rule's addresses, each once."""
    addresses = [run.owner.email] if run.owner.email else []
    return list(dict.fromkeys(addresses + (rule.emails if rule else [])))


def resolve_alerts(run: Run, kinds: list[AlertKind] | None = None) -> int:
    """Close the run's open alerts (of `kinds`, or all). Returns how many closed."""
    alerts = Alert.objects.filter(run=run)
    if kinds is not None:
        alerts = alerts.filter(kind__in=kinds)
    return resolve(alerts)


def resolve(alerts: QuerySet[Alert]) -> int:
    """Close the open ones of `alerts` and tell their runs' pages. Returns how many closed."""
    closing = list(alerts.filter(resolved_at__isnull=True).order_by("id"))
    if not closing:
        return 0
    now = timezone.now()
    closed = Alert.objects.filter(pk__in=[alert.pk for alert in closing], resolved_at__isnull=True).update(resolved_at=now)
    for alert in closing:
        alert.resolved_at = now
    # A concurrent sweep may have closed one of them first: pushed twice, which a page
    # that replaces alerts by id does not mind.
    publish_on_commit(closing)
    return closed


def alert_fields(alert: Alert) -> dict[str, Any]:
    """What the run's pages receive of an alert: the REST list's fields, less delivery."""
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "rule": alert.rule_id,
        "message": alert.message,
        "opened_at": alert.opened_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


def publish_on_commit(alerts: Sequence[Alert]) -> None:
    """Push `alerts` (just opened or resolved) to their runs' pages once the transaction
    commits: a rolled-back sweep shows nobody an alert that never was."""
    by_run: dict[int, list[dict[str, Any]]] = {}
    for alert in alerts:
        by_run.setdefault(alert.run_id, []).append(alert_fields(alert))
    for run_id, fields in by_run.items():
        message = {"type": "run.alerts", "alerts": fields}
        # robust: the alerts are stored; a Redis hiccup must not break the sweep.
        transaction.on_commit(lambda run_id=run_id, message=message: live.publish(run_id, message), robust=True)


def idle_ratio(run: Run) -> float | None:
    """Mean of the run's last IDLE_WINDOW_STEPS values of IDLE_METRIC; None before it has
    that many (a run warming up is not idle)."""
    window = settings.ROLLYARD_IDLE_WINDOW_STEPS
    values = list(
        MetricPoint.objects.filter(run=run, name=settings.ROLLYARD_IDLE_METRIC, value__isnull=False)
        .order_by("-step")
        .values_list("value", flat=True)[:window]
    )
    return sum(values) / len(values) if len(values) == window else None


def check_running_runs(now: datetime) -> list[Alert]:
    """Open stuck and idle alerts for running runs that show them, and close those whose
    problem passed. Dead alerts are opened by the reconciler when it acts on a lost
    worker and closed here once the run beats again. Returns the alerts opened."""
    opened: list[Alert] = []
    alive_after = now - timedelta(seconds=settings.ROLLYARD_HEARTBEAT_TIMEOUT_S)
    stuck_before = now - timedelta(seconds=settings.ROLLYARD_STUCK_AFTER_S)
    running = Run.objects.filter(status=RunStatus.RUNNING).annotate(
        last_sign=Coalesce("last_heartbeat_at", "started_at"), last_progress=Coalesce("step_advanced_at", "started_at")
    )
    for run in running:
        if run.last_sign is None or run.last_sign < alive_after:
            continue  # the reconciler's business: requeue or fail, and a dead alert
        resolve_alerts(run, [AlertKind.DEAD])
        if run.last_progress < stuck_before:
            minutes = (now - run.last_progress).total_seconds() / 60
            message = f"run #{run.pk} is stuck at step {run.current_step}: heartbeats but no progress for {minutes:.0f} min"
            opened.append(open_alert(run, AlertKind.STUCK, message))
        else:
            resolve_alerts(run, [AlertKind.STUCK])
        ratio = idle_ratio(run)
        if ratio is not None and ratio > settings.ROLLYARD_IDLE_THRESHOLD:
            message = (
                f"run #{run.pk} is idle: {settings.ROLLYARD_IDLE_METRIC} averages {ratio:.2f} over its last "
                f"{count(settings.ROLLYARD_IDLE_WINDOW_STEPS, 'step')} (threshold {settings.ROLLYARD_IDLE_THRESHOLD:.2f})"
            )
            opened.append(open_alert(run, AlertKind.IDLE, message))
        else:
            resolve_alerts(run, [AlertKind.IDLE])
    return [alert for alert in opened if alert is not None]


def resolve_alerts_of_finished_runs() -> int:
    """A finished run has no live problem left: close its alerts."""
    return resolve(Alert.objects.filter(run__status__in=list(RunStatus.TERMINAL)))


# --- metric-threshold rules ---------------------------------------------------------------


@functools.cache
def documented_metrics() -> tuple[str, ...]:
    """The metric names in the tables of docs/metrics.md's METRIC_SECTIONS, as written
    there: a placeholder (`val/pass@{k}`, `gpu/{i}/utilization`) stands for one path
    segment. The rule forms offer them."""
    sections = METRICS_DOC.read_text().split("\n## ")
    tables = "\n".join(section for section in sections if section.split("\n", 1)[0].strip() in METRIC_SECTIONS)
    return tuple(re.findall(r"^\| `([^`]+)` \|", tables, re.MULTILINE))


@functools.cache
def documented_metric_names() -> tuple[re.Pattern[str], ...]:
    """documented_metrics() as patterns, a placeholder matching one path segment."""
    return tuple(
        re.compile("[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]*\}", name)))
        for name in documented_metrics()
    )


def is_metric_name(name: str) -> bool:
    return any(pattern.fullmatch(name) for pattern in documented_metric_names())


def check_rule(data: Any, field_prefix: str = "") -> dict[str, Any]:
    """The rule `data` describes ({"metric", "comparison", "threshold", optional
    "consecutive" (default 1) and "emails"}) as AlertRule fields, checked. Raises
    InvalidRule naming each bad field (as `<field_prefix><field>`)."""
    if not isinstance(data, Mapping):
        raise InvalidRule([(field_prefix.rstrip(".") or "rule", f"expected a mapping, got {type(data).__name__}")])
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in RULE_FIELDS:
            problems.append((f"{field_prefix}{key}", f"unknown field; known: {', '.join(RULE_FIELDS)}"))
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric:
        problems.append((f"{field_prefix}metric", f"required: a metric name (docs/metrics.md), got {metric!r}"))
    elif not is_metric_name(metric):
        problems.append((f"{field_prefix}metric", f"{metric!r} is not a metric the engine reports (docs/metrics.md)"))
    comparison = data.get("comparison")
    if comparison not in AlertComparison.values:
        known = ", ".join(AlertComparison.values)
        problems.append((f"{field_prefix}comparison", f"unknown comparison {comparison!r}; one of {known}"))
    threshold = data.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        problems.append((f"{field_prefix}threshold", f"required: a number, got {threshold!r}"))
    elif not math.isfinite(threshold):
        problems.append((f"{field_prefix}threshold", f"must be a finite number, got {threshold!r}"))
    consecutive = data.get("consecutive", 1)
    if isinstance(consecutive, bool) or not isinstance(consecutive, int) or not 1 <= consecutive <= MAX_CONSECUTIVE:
        problems.append(
            (f"{field_prefix}consecutive", f"must be a whole number from 1 to {MAX_CONSECUTIVE}, got {consecutive!r}")
        )
    emails = data.get("emails", [])
    if not isinstance(emails, list) or len(emails) > MAX_RULE_EMAILS:
        problems.append((f"{field_prefix}emails", f"must be a list of at most {MAX_RULE_EMAILS} addresses"))
    else:
        for address in emails:
            try:
                validate_email(address)
            except ValidationError:
                problems.append((f"{field_prefix}emails", f"{address!r} is not an email address"))
    if problems:
        raise InvalidRule(problems)
    return {
        "metric": metric,
        "comparison": comparison,
        "threshold": float(threshold),
        "consecutive": consecutive,
        "emails": list(dict.fromkeys(emails)),
    }


def check_rules(data: Any) -> list[dict[str, Any]]:
    """A launch's `alert_rules`: a list of rules, each checked (fields `alert_rules.<i>.<field>`)."""
    if not isinstance(data, list):
        raise InvalidRule([("alert_rules", f"expected a list of rules, got {type(data).__name__}")])
    checked, problems = [], []
    for index, rule in enumerate(data):
        try:
            checked.append(check_rule(rule, f"alert_rules.{index}."))
        except InvalidRule as invalid:
            problems += invalid.problems
    if problems:
        raise InvalidRule(problems)
    return checked


def create_rules(run: Run, rules: Sequence[Mapping[str, Any]], created_by: User) -> list[AlertRule]:
    """Store checked rules (check_rule) on `run`. A run that already reported the metric
    starts from its newest `consecutive` points: a rule added mid-run alerts on the state
    now, not on every past excursion."""
    created = []
    for fields in rules:
        newest = list(
            MetricPoint.objects.filter(run=run, name=fields["metric"], value__isnull=False)
            .order_by("-step")
            .values_list("step", flat=True)[: fields["consecutive"]]
        )
        checked_step = newest[-1] - 1 if len(newest) == fields["consecutive"] else 0
        created.append(AlertRule.objects.create(run=run, created_by=created_by, checked_step=checked_step, **fields))
    return created


def rule_fields(rule: AlertRule) -> dict[str, Any]:
    """What a launch's `alert_rules` holds for `rule` (a clone launches with it)."""
    return {field: getattr(rule, field) for field in RULE_FIELDS}


def add_rule(user: User, run: Run, data: Any) -> AlertRule:
    """A rule added to an existing run by someone who may change it (its owner, a team
    admin: RunPermissionDenied otherwise). Raises InvalidRule naming each bad field."""
    check_can_manage(user, run)
    fields = check_rule(data)
    with transaction.atomic():
        return create_rules(run, [fields], user)[0]


def may_change_rules(user: User, run: Run) -> bool:
    """Whether `user` may add and delete the run's rules (as add_rule decides): the run
    page shows its controls only to them."""
    try:
        check_can_manage(user, run)
    except RunPermissionDenied:
        return False
    return True


def delete_rule(user: User, rule: AlertRule) -> None:
    """Delete a rule (who may: as add_rule); its open alert is resolved, its alerts stay."""
    check_can_manage(user, rule.run)
    with transaction.atomic():
        resolve(rule.alerts.all())
        rule.delete()


def crosses(rule: AlertRule, value: float) -> bool:
    return value > rule.threshold if rule.comparison == AlertComparison.ABOVE else value < rule.threshold


def check_metric_rules() -> list[Alert]:
    """Evaluate every rule whose run may have reported steps since the rule's last look;
    a finished run's rules once more, then never again. Returns the alerts opened."""
    due = AlertRule.objects.filter(checked_step__lt=F("run__current_step"))
    opened: list[Alert] = []
    for rule_id in due.values_list("id", flat=True):
        opened += evaluate_rule(rule_id)
    return opened


def evaluate_rule(rule_id: int) -> list[Alert]:
    """Walk the rule's finite points after its checked step, in step order: a point that
    crosses the threshold lengthens the streak, and the streak reaching `consecutive`
    opens an alert; a point that does not ends the streak and resolves the open alert.
    Under the rule's row lock, so two sweeps never walk the same points. Non-finite
    points (stored as null) are skipped: they neither cross nor come back. Steps that a
    resumed attempt reports again at or before the checked step are not walked twice."""
    opened: list[Alert] = []
    with transaction.atomic():
        # Only the rule's row: the run's is the ingest's lock (runs.telemetry), left alone.
        locked = AlertRule.objects.select_for_update(of=("self",)).select_related("run__owner")
        rule = locked.filter(pk=rule_id).first()
        if rule is None:  # deleted meanwhile
            return opened
        points = MetricPoint.objects.filter(
            run_id=rule.run_id, name=rule.metric, step__gt=rule.checked_step, value__isnull=False
        ).order_by("step")
        for step, value in points.values_list("step", "value"):
            if crosses(rule, value):
                rule.streak += 1
                if rule.streak == rule.consecutive:
                    alert = open_metric_alert(rule, step, value)
                    opened += [alert] if alert else []
            else:
                if rule.streak >= rule.consecutive:
                    resolve(rule.alerts.all())
                rule.streak = 0
            rule.checked_step = step
        if rule.run.is_terminal:
            # Its driver is gone and its points are final: nothing more to walk.
            rule.checked_step = max(rule.checked_step, rule.run.current_step)
        rule.save(update_fields=["checked_step", "streak"])
    return opened


def open_metric_alert(rule: AlertRule, step: int, value: float) -> Alert | None:
    """Open the rule's alert unless it is open already. Returns the new alert."""
    if rule.alerts.filter(resolved_at__isnull=True).exists():
        return None
    run = rule.run
    held = f" for {rule.consecutive} reported steps in a row" if rule.consecutive > 1 else ""
    crossing = f"{rule.metric} {rule.comparison} {rule.threshold:g}{held}"
    message = f"run #{run.pk} {run.name}: {crossing} ({value:.4g} at step {step})"
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                run=run, kind=AlertKind.METRIC, rule=rule, message=message, email_to=recipients(run, rule)
            )
    except IntegrityError:
        return None
    publish_on_commit([alert])
    return alert


# --- delivery ----------------------------------------------------------------------------------


def deliver_pending(now: datetime | None = None) -> int:
    """Send every undelivered alert opened within ROLLYARD_ALERT_DELIVERY_WINDOW_S, resolved
    ones too (a run failed for a lost worker closes its dead alert in the same sweep, and
    the notice still matters), to the webhook and by email. Returns how many deliveries
    succeeded (one per alert and channel).

    An older undelivered alert is no longer sent: a webhook or mail server configured (or
    mended) days later must not receive a backlog of stale notices at once; the alert stays
    on the run page."""
    now = now or timezone.now()
    pending = Alert.objects.filter(opened_at__gte=now - timedelta(seconds=settings.ROLLYARD_ALERT_DELIVERY_WINDOW_S))
    delivered = 0
    if settings.ROLLYARD_ALERT_WEBHOOK_URL:
        delivered += deliver(pending.filter(webhook_delivered_at__isnull=True), "webhook", post_to_webhook,
                             failed=httpx.HTTPError, unreachable=httpx.TransportError)
    if settings.EMAIL_HOST:
        # Refused, unreachable, timed out; ValueError: an address Django cannot encode.
        delivered += deliver(pending.filter(email_delivered_at__isnull=True).exclude(email_to=[]), "email", mail,
                             failed=(smtplib.SMTPException, OSError, ValueError), unreachable=(ConnectionError, TimeoutError))
    return delivered


def deliver(pending, channel: str, send, failed, unreachable) -> int:
    """Send each of `pending`, oldest first, through `send(alert)`; a failure (`failed`) is
    stored on the row (`<channel>_error`) and retried by a later sweep. When the endpoint
    itself is `unreachable` the rest of this sweep's alerts are left for the next one: each
    would wait out the same timeout, and the sweep also reconciles runs."""
    delivered = 0
    for alert in pending.select_related("run").order_by("id"):
        try:
            send(alert)
        except failed as exc:
            logger.warning("alert %s not delivered by %s: %s", alert.pk, channel, exc)
            Alert.objects.filter(pk=alert.pk).update(**{f"{channel}_error": f"{type(exc).__name__}: {exc}"[:2000]})
            if isinstance(exc, unreachable):
                break
            continue
        Alert.objects.filter(pk=alert.pk).update(**{f"{channel}_delivered_at": timezone.now(), f"{channel}_error": ""})
        delivered += 1
    return delivered


def post_to_webhook(alert: Alert) -> None:
    response = httpx.post(settings.ROLLYARD_ALERT_WEBHOOK_URL, json=alert_json(alert), timeout=WEBHOOK_TIMEOUT_S)
    response.raise_for_status()


def mail(alert: Alert) -> None:
    # One line: a header may not hold a line break, and a run's name may.
    subject = " ".join(f"[Rollyard] {alert.get_kind_display()}: run #{alert.run_id} {alert.run.name}".split())
    body = f"{alert.message}\n\nOpened at {alert.opened_at:%Y-%m-%d %H:%M} UTC.\nThe run: {run_url(alert.run_id)}\n"
    send_mail(subject, body, None, alert.email_to)


def run_url(run_id: int) -> str:
    """The run page's address: absolute when settings.ROLLYARD_PUBLIC_URL is set."""
    return settings.ROLLYARD_PUBLIC_URL + reverse("runs:detail", args=[run_id])


def alert_json(alert: Alert) -> dict:
    """The webhook's body."""
    return {
        **alert_fields(alert),
        "run": {
            "id": alert.run_id,
            "name": alert.run.name,
            "status": alert.run.status,
            "url": run_url(alert.run_id),
        },
    }
