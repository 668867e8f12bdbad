"""Checkpoint retention: which of a run's checkpoints to keep, and deleting the others.

A run's policy (Run.retention, resolved at launch by services.resolve_retention) keeps its
last `keep_last` checkpoints and its best `keep_best` by `metric` (`mode` max or min).
Whatever the policy, the newest checkpoint stays (a requeued run resumes from it) and so
does every checkpoint a fork starts from. A periodic task applies the policies; folders are
deleted only inside the run's own folder under settings.ROLLYARD_RUNS_DIR.
"""

import logging
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.models import Checkpoint, Run
from runs.attempts import run_dir
from runs.launch import resolve_retention

logger = logging.getLogger(__name__)


def checkpoints_to_keep(checkpoints: Iterable[Checkpoint], policy: Mapping[str, Any]) -> set[int]:
    """Ids of the checkpoints the policy keeps among a run's live ones: the newest, the last
    `keep_last` and the best `keep_best` by `metric`. A checkpoint whose metrics lack the
    metric (or hold null) never counts as best."""
    by_step = sorted(checkpoints, key=lambda checkpoint: checkpoint.step, reverse=True)
    keep = {checkpoint.pk for checkpoint in by_step[: max(1, policy["keep_last"])]}
    metric, sign = policy["metric"], 1 if policy["mode"] == "max" else -1
    scored = [c for c in by_step if isinstance(c.metrics.get(metric), int | float) and math.isfinite(c.metrics[metric])]
    # Ties go to the later checkpoint: sorted() is stable over the newest-first order.
    best = sorted(scored, key=lambda checkpoint: sign * checkpoint.metrics[metric], reverse=True)
    keep |= {checkpoint.pk for checkpoint in best[: policy["keep_best"]]}
    return keep


def inside(path: Path, folder: Path) -> bool:
    """Is `path`, with every symlink resolved, inside `folder` (and not `folder` itself)?"""
    resolved, root = path.resolve(), folder.resolve()
    return resolved != root and resolved.is_relative_to(root)


def apply_retention(run: Run) -> list[int]:
    """Delete the checkpoints of `run` its policy does not keep. Returns the steps deleted.

    Each deletion locks its row and checks again that no fork references it (a fork made
    meanwhile wins), stamps deleted_at, then removes the folder. A path outside the run's
    folder is refused with a warning and its row left as it is: retention never deletes
    anything it did not make.
    """
    live = list(run.checkpoints.filter(deleted_at__isnull=True))
    # Resolved again: a run stored before a policy key existed gets today's default for it.
    keep = checkpoints_to_keep(live, resolve_retention(run.retention))
    folder = run_dir(run.pk)
    deleted: list[int] = []
    for checkpoint in live:
        if checkpoint.pk in keep:
            continue
        path = Path(checkpoint.path)
        if not inside(path, folder):
            logger.warning("run %s: checkpoint of step %s at %s is outside %s; not deleting it",
                           run.pk, checkpoint.step, path, folder)
            continue
        with transaction.atomic():
            locked = Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk, deleted_at__isnull=True).first()
            if locked is None or locked.forks.exists():
                continue
            locked.deleted_at = timezone.now()
            locked.save(update_fields=["deleted_at"])
        # After the commit: a crash here leaves a folder behind, never a row pointing at nothing.
        shutil.rmtree(path.resolve(), ignore_errors=True)
        deleted.append(checkpoint.step)
    return deleted


def apply_retention_everywhere() -> dict[int, list[int]]:
    """Apply every run's policy to the runs with checkpoints on disk. Returns {run id: steps deleted} for the runs that lost any."""
    deleted: dict[int, list[int]] = {}
    run_ids = Checkpoint.objects.filter(deleted_at__isnull=True).values_list("run_id", flat=True).distinct()
    for run in Run.objects.filter(pk__in=list(run_ids)):
        if steps := apply_retention(run):
            deleted[run.pk] = steps
    return deleted
