"""Launching runs: a new run from a spec (`create_run`) or from a parent's checkpoint
(`fork_run`), checked in full before anything is stored, then put in its pool's queue;
admission (runs.admission) enqueues its driver when it fits.
"""

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from accounts.models import Role, Team
from accounts.permissions import PermissionDenied, require_role
from accounts.services import default_team
from catalog import services as catalog
from engine.spec import RunSpec, SpecError
from engine.training import MULTI_DEVICE_BACKENDS
from quotas import selectors as quota_selectors
from quotas import services as quotas
from quotas.models import DEFAULT_POOL, DEFAULT_PRIORITY
from rollyard.params import NUL_REASON, nul_fields
from runs import alerts, live, rollups
from runs.lifecycle import RunPermissionDenied, User
from runs.models import Checkpoint, MetricPoint, Run, RunStatus, RunStatusChange
from runs.spec_paths import check_spec_paths, parse_server_spec


def check_can_launch(user: User, team: Team) -> None:
    """Launching needs the member role in the run's team (viewers only read)."""
    try:
        require_role(user, team, Role.MEMBER, "launch runs")
    except PermissionDenied as denied:
        raise RunPermissionDenied(str(denied)) from None


def create_run(
    user: AbstractBaseUser,
    spec_data: Mapping[str, Any],
    name: str = "",
    team: Team | None = None,
    retention: Mapping[str, Any] | None = None,
    parent: Run | None = None,
    forked_from: Checkpoint | None = None,
    pool: str = DEFAULT_POOL,
    priority: int = DEFAULT_PRIORITY,
    alert_rules: Sequence[Mapping[str, Any]] | None = None,
) -> Run:
    """Validate a spec, store the queued run with its fully resolved spec, and put it in
    `pool`'s queue at `priority`; admission (quotas) enqueues its driver when it fits.

    Raises engine.spec.SpecError (with .problems, one (field, reason) per problem) and
    creates nothing when the spec cannot run, or when a `retention` override is bad
    (fields `retention.<key>`, keys of settings.ROLLYARD_RETENTION). `name`, when given,
    overrides the spec's. `team` defaults to accounts.services.default_team(user).
    `parent` records where a clone came from; fork_run also passes `forked_from`.
    Raises quotas.services.RequestRefused, creating nothing, for a run the pool or the
    quotas can never admit. `alert_rules` are the run's metric-threshold rules
    (runs.alerts.check_rules; a bad one raises InvalidRule, a SpecError, on
    `alert_rules.<i>.<field>`).
    """
    team = team or default_team(user)
    check_can_launch(user, team)
    check_no_nul_characters(spec_data, retention)
    data = dict(spec_data) if isinstance(spec_data, Mapping) else spec_data
    if name and isinstance(data, dict):
        data["name"] = name
    data, catalog_inputs = catalog.resolve_references(user, team, data)  # dataset and preset references
    check_spec_paths(user, data)
    spec = parse_server_spec(data)
    check_launch_resources(spec)
    if not spec.name:
        spec = spec.model_copy(update={"name": f"{spec.algorithm.name} on {spec.dataset.name}"})
    policy = resolve_retention(retention)
    rules = alerts.check_rules(alert_rules or [])
    pool_row = quotas.check_request_fits(user, team, pool, spec.resources.gpus, priority)

    with transaction.atomic():
        now = timezone.now()
        run = Run.objects.create(
            owner=user,
            team=team,
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            status=RunStatus.QUEUED,
            status_reason=f"launched by {user}",
            total_steps=spec.training.steps,
            retention=policy,
            parent=parent,
            forked_from=forked_from,
            forked_from_step=forked_from.step if forked_from else None,
            created_at=now,
            status_changed_at=now,
            enqueued_at=now,
        )
        RunStatusChange.objects.create(run=run, from_status="", to_status=RunStatus.QUEUED, reason=run.status_reason)
        catalog.record_run_inputs(run, catalog_inputs)
        alerts.create_rules(run, rules, user)
        quotas.queue(run.pk, team, user, pool_row, spec.resources.gpus, priority, requested_at=now)
        # The team's runs lists show "N new runs" (runs.live); robust: the run is stored.
        transaction.on_commit(lambda: live.publish_created(run), robust=True)
    return run


def check_no_nul_characters(spec_data: Any, retention: Any) -> None:
    """Raise SpecError naming each spec or retention field whose text holds a NUL (JSON's
    \u0000, YAML's \0): the database cannot store one, and the catalog lookups that come
    first would fail on it as server errors."""
    problems = [(field or "spec", NUL_REASON) for field in nul_fields(spec_data)]
    problems += [(f"retention.{field}" if field else "retention", NUL_REASON) for field in nul_fields(retention)]
    if problems:
        raise SpecError(problems)


def check_launch_resources(spec: RunSpec) -> None:
    """Raise SpecError (field resources.gpus) for more GPUs than the run's training backend
    can use: the torch backend trains on one device, so a second GPU would be reserved in
    Ray and counted against quotas, idle; deepspeed runs one rank per GPU."""
    most = settings.ROLLYARD_MAX_GPUS_PER_RUN
    backend = spec.backends.training
    if spec.resources.gpus > most and backend not in MULTI_DEVICE_BACKENDS:
        reason = f"the {backend} training backend uses one device; ask for at most {most} GPU"
        reason += f" (this run asks for {spec.resources.gpus}), or set backends.training: deepspeed (one rank per GPU)"
        raise SpecError([("resources.gpus", reason)])


def resolve_retention(override: Mapping[str, Any] | None) -> dict[str, Any]:
    """settings.ROLLYARD_RETENTION with a launch's overrides applied, checked.

    keep_last ≥ 1 (the newest checkpoint is what a requeued run resumes from), keep_best ≥ 0,
    metric a metric name, mode "max" or "min". Raises SpecError naming each bad key
    (as `retention.<key>`).
    """
    policy = dict(settings.ROLLYARD_RETENTION)
    problems: list[tuple[str, str]] = []
    if override is not None and not isinstance(override, Mapping):
        raise SpecError([("retention", f"expected a mapping, got {type(override).__name__}")])
    for key, value in (override or {}).items():
        if key not in policy:
            problems.append((f"retention.{key}", f"unknown setting; known: {', '.join(policy)}"))
        else:
            policy[key] = value
    for key, least in (("keep_last", 1), ("keep_best", 0)):
        value = policy[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append((f"retention.{key}", f"must be a whole number ≥ {least}, got {value!r}"))
    if not isinstance(policy["metric"], str) or not policy["metric"]:
        problems.append(("retention.metric", f"must be a metric name, got {policy['metric']!r}"))
    if policy["mode"] not in ("max", "min"):
        problems.append(("retention.mode", f"must be 'max' or 'min', got {policy['mode']!r}"))
    if problems:
        raise SpecError(problems)
    return policy


def fork_run(
    user: AbstractBaseUser,
    parent: Run,
    step: int,
    overrides: Mapping[str, Any] | None = None,
    name: str = "",
    retention: Mapping[str, Any] | None = None,
) -> Run:
    """A new run that starts from `parent`'s checkpoint at `step`, with the parent's spec
    and `overrides` merged over it (nested mappings merge, other values replace). The
    parent's metrics up to `step` are copied, so the child's curves show where it branched.
    The fork's name is `name`, else the overrides' `name`, else "<parent> (fork @<step>)".

    Raises SpecError (fields `step` or spec paths) when the parent has no checkpoint at
    that step still on disk, when the merged spec is invalid, or when it ends at or before
    `step`; RunPermissionDenied unless the user may launch runs in the parent's team (the
    fork lives there; forking leaves the parent untouched, so owning it is not needed).
    """
    # The parent's name is not the fork's: the fork is named by `name`, else by a `name`
    # among the overrides, else after its parent and step.
    unnamed_parent = {key: value for key, value in parent.spec.items() if key != "name"}
    spec = merge_spec(unnamed_parent, overrides or {})
    with transaction.atomic():
        checkpoint = parent.checkpoints.select_for_update().filter(step=step, deleted_at__isnull=True).first()
        if checkpoint is None:
            kept = list(parent.checkpoints.filter(deleted_at__isnull=True).values_list("step", flat=True))
            raise SpecError([("step", f"run #{parent.pk} has no checkpoint at step {step}; it has: {kept or 'none'}")])
        steps = spec.get("training", {}).get("steps", 0) if isinstance(spec.get("training"), dict) else 0
        if isinstance(steps, int) and steps <= step:
            raise SpecError([("training.steps", f"must be above the fork step {step} to train at all, got {steps}")])
        child = create_run(
            user,
            spec,
            name=name or spec.get("name") or f"{parent.name} (fork @{step})",
            team=parent.team,
            retention=retention if retention is not None else parent.retention,
            parent=parent,
            forked_from=checkpoint,
            pool=quota_selectors.pool_name_of(parent),
        )
        copied = (
            MetricPoint(run=child, name=p.name, step=p.step, wall_time=p.wall_time, value=p.value)
            for p in parent.metric_points.filter(step__lte=step).iterator(chunk_size=5000)
        )
        MetricPoint.objects.bulk_create(copied, batch_size=5000)
        for metric in child.metric_points.values_list("name", flat=True).distinct().order_by():
            rollups.rebuild(child, metric)  # its charts' buckets (runs.rollups)
        child.current_step = step
        child.save(update_fields=["current_step"])
    return child


def merge_spec(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_spec(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
