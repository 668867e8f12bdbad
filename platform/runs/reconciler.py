"""The reconciler: a periodic sweep that trusts no worker to report its own death.

1. A running run whose last heartbeat is older than ROLLYARD_HEARTBEAT_TIMEOUT_S lost its
   worker: it gets a dead alert and is requeued (a new attempt resumes from its newest
   checkpoint) while it has attempts left, else failed; the reason says which.
2. A queued or admitted run whose driver message went out more than
   ROLLYARD_ENQUEUE_TIMEOUT_S ago and that no worker claimed is enqueued again (the broker
   was down at commit, or the message was lost). Duplicates are harmless: claim_run lets
   one driver through.
3. Alerts: stuck and idle runs, metric-threshold rules, alerts of finished runs closed,
   undelivered ones sent.

Every step re-checks its condition under the run's row lock, so a sweep racing a
heartbeat or a second sweep does nothing twice.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from runs import alerts, attempts
from runs.models import AlertKind, Run, RunStatus

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    enqueued_again: list[int] = field(default_factory=list)
    alerts_opened: list[str] = field(default_factory=list)  # "<run id>:<kind>"
    alerts_delivered: int = 0


def reconcile_runs(now: datetime | None = None) -> SweepReport:
    now = now or timezone.now()
    report = SweepReport()

    stale_before = now - timedelta(seconds=settings.ROLLYARD_HEARTBEAT_TIMEOUT_S)
    silent = Run.objects.filter(status=RunStatus.RUNNING).annotate(
        last_sign=Coalesce("last_heartbeat_at", "started_at")
    ).filter(last_sign__lt=stale_before)
    for run in silent:
        handled = attempts.requeue_or_fail_lost_run(run.pk, now)
        if handled is None:
            continue
        (report.requeued if handled.status == RunStatus.QUEUED else report.failed).append(run.pk)
        if alerts.open_alert(handled, AlertKind.DEAD, f"run #{run.pk}: {handled.status_reason}"):
            report.alerts_opened.append(f"{run.pk}:{AlertKind.DEAD}")
        logger.warning("run %s: %s", run.pk, handled.status_reason)

    sent_before = now - timedelta(seconds=settings.ROLLYARD_ENQUEUE_TIMEOUT_S)
    waiting = Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.ADMITTED], status_changed_at__lt=sent_before)
    waiting = waiting.filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=sent_before))
    for run in waiting:
        if attempts.enqueue_again_if_stale(run.pk, now) is not None:
            report.enqueued_again.append(run.pk)

    report.alerts_opened += [f"{alert.run_id}:{alert.kind}" for alert in alerts.check_running_runs(now)]
    report.alerts_opened += [f"{alert.run_id}:{alert.kind}" for alert in alerts.check_metric_rules()]
    alerts.resolve_alerts_of_finished_runs()
    report.alerts_delivered = alerts.deliver_pending()
    return report
