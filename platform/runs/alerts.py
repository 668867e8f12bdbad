"""Alerts on runs: dead (heartbeat lost), stuck (heartbeats but no step progress), idle
(the trainer idle above a threshold). At most one open Alert per (run, kind): opening one
that is already open does nothing, so a problem that lasts many sweeps notifies once.

Each new alert is POSTed as JSON to settings.ROLLYARD_ALERT_WEBHOOK_URL after it is
stored; a delivery that fails is recorded on the row and retried by the next sweep, and
never breaks the sweep.
"""

import logging
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from runs.models import Alert, AlertKind, MetricPoint, Run, RunStatus

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0


def open_alert(run: Run, kind: AlertKind, message: str) -> Alert | None:
    """Open an alert unless one of this kind is open for the run. Returns the new alert."""
    if Alert.objects.filter(run=run, kind=kind, resolved_at__isnull=True).exists():
        return None
    try:
        with transaction.atomic():
            return Alert.objects.create(run=run, kind=kind, message=message)
    except IntegrityError:  # another sweep opened it between our check and our insert
        return None


def resolve_alerts(run: Run, kinds: list[AlertKind] | None = None) -> int:
    """Close the run's open alerts (of `kinds`, or all). Returns how many closed."""
    alerts = Alert.objects.filter(run=run, resolved_at__isnull=True)
    if kinds is not None:
        alerts = alerts.filter(kind__in=kinds)
    return alerts.update(resolved_at=timezone.now())


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
                f"{settings.ROLLYARD_IDLE_WINDOW_STEPS} steps (threshold {settings.ROLLYARD_IDLE_THRESHOLD:.2f})"
            )
            opened.append(open_alert(run, AlertKind.IDLE, message))
        else:
            resolve_alerts(run, [AlertKind.IDLE])
    return [alert for alert in opened if alert is not None]


def resolve_alerts_of_finished_runs() -> int:
    """A finished run has no live problem left: close its alerts."""
    return Alert.objects.filter(
        resolved_at__isnull=True, run__status__in=list(RunStatus.TERMINAL)
    ).update(resolved_at=timezone.now())


def deliver_pending() -> int:
    """POST every undelivered alert to the webhook, resolved ones too (a run failed for a
    lost worker closes its dead alert in the same sweep, and the notice still matters).
    Returns how many were delivered. Failures are stored on the row (delivery_error) and
    retried next time."""
    url = settings.ROLLYARD_ALERT_WEBHOOK_URL
    if not url:
        return 0
    delivered = 0
    pending = Alert.objects.filter(delivered_at__isnull=True).select_related("run").order_by("id")
    for alert in pending:
        try:
            response = httpx.post(url, json=alert_json(alert), timeout=WEBHOOK_TIMEOUT_S)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            logger.warning("alert %s not delivered to %s: %s", alert.pk, url, exc)
            Alert.objects.filter(pk=alert.pk).update(delivery_error=f"{type(exc).__name__}: {exc}"[:2000])
            continue
        Alert.objects.filter(pk=alert.pk).update(delivered_at=timezone.now(), delivery_error="")
        delivered += 1
    return delivered


def alert_json(alert: Alert) -> dict:
    """The webhook's body (and the API's shape of an alert)."""
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "message": alert.message,
        "opened_at": alert.opened_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "run": {
            "id": alert.run_id,
            "name": alert.run.name,
            "status": alert.run.status,
            "url": reverse("runs:detail", args=[alert.run_id]),
        },
    }

