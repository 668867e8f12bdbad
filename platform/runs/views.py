"""Server-rendered pages: the runs list, the launch form and the live run page.

Like the API, they only parse input and call selectors and services; the run page's
charts load their data from the REST API and the run's websocket.
"""

from typing import Any

import yaml
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from accounts.models import Role, Team
from accounts.permissions import find_team, teams_of
from engine.spec import SpecError
from quotas import selectors as quota_selectors
from quotas.models import DEFAULT_POOL
from quotas.services import RequestRefused
from rollyard.params import whole_number
from runs import selectors, services
from runs.api.serializers import RunDetailSerializer
from runs.models import Run
from runs.spec_diff import spec_differences

# What the run page charts, by chart id: the metric names of its lines (docs/metrics.md).
LINE_CHARTS: dict[str, list[str]] = {
    "chart-reward": ["reward/mean", "acc/mean", "val/acc/mean@1"],
    "chart-length": ["rollout/response_length/p50", "rollout/response_length/p90", "rollout/response_length/max"],
}
# Event-backed charts: the event kinds they draw and how many recent events they load.
EVENT_CHARTS: dict[str, tuple[list[str], int]] = {
    "chart-histogram": (["length_histogram"], 200),
    "chart-heatmap": (["length_histogram"], 200),
    "chart-prompts": (["prompt_results"], 20),
    "chart-timeline": (["span"], 1000),
    "run-log": (["log", "status"], 200),
}
METRICS_MAX_POINTS = 1000


def _visible_run_or_404(request: HttpRequest, run_id: int) -> Run:
    try:
        return selectors.get_visible_run(request.user, run_id)
    except Run.DoesNotExist:
        raise Http404("no such run") from None


def _to_yaml(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False)


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.visible_runs(request.user).order_by("-created_at", "-id"), 50).get_page(
        request.GET.get("page")
    )
    return render(request, "runs/list.html", {"page": page})


@login_required
def run_new(request: HttpRequest) -> HttpResponse:
    """Launch form: a YAML/JSON spec prefilled with the engine's defaults (or with an
    earlier run's spec: ?from=<id>). On error nothing is created and every problem is
    listed by field."""
    problems: list[tuple[str, str]] = []
    if request.method == "POST":
        text = request.POST.get("spec", "")
        try:
            data = yaml.safe_load(text) or {}  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            problems = [("spec", f"not valid YAML or JSON: {exc}")]
        else:
            try:
                run = services.create_run(
                    request.user,
                    data,
                    team=_chosen_team(request),
                    parent=_clone_source(request, request.POST),
                    pool=request.POST.get("pool") or DEFAULT_POOL,
                )
            except (SpecError, RequestRefused) as exc:
                problems = exc.problems
            except services.RunPermissionDenied as exc:
                problems = [("team", str(exc))]
            else:
                return redirect("runs:detail", run_id=run.pk)
    elif source := request.GET.get("from", "").strip():
        # 0: no run has that id, so anything but a number is a 404 like a missing run.
        text = _to_yaml(_visible_run_or_404(request, whole_number(source, default=0)).spec)
    else:
        text = _to_yaml(selectors.spec_defaults())
    context = {
        "spec_text": text,
        "problems": problems,
        "choices": selectors.spec_choices(),
        # Pools with what they hold, and the quotas that bind the user, before launching.
        "pools": quota_selectors.pool_occupancy(),
        "quotas": quota_selectors.visible_quotas(request.user),
        # A launch from ?from=<id> records that run as its parent (clone, edit, launch).
        "clone_of": _clone_source(request, request.POST if request.method == "POST" else request.GET),
        # Teams the user may launch in; the first is the default.
        "teams": teams_of(request.user, Role.MEMBER),
        "team": request.POST.get("team", ""),
    }
    # A clone goes to its source's pool unless the form chose another.
    context["pool"] = request.POST.get("pool") or quota_selectors.pool_name_of(context["clone_of"])
    return render(request, "runs/new.html", context, status=400 if problems else 200)


def _chosen_team(request: HttpRequest) -> Team | None:
    """The form's team (None: the user's default team). One that is not the user's is a
    404, like any object of another team."""
    chosen = request.POST.get("team", "").strip()
    if not chosen:
        return None
    team = find_team(request.user, chosen)
    if team is None:
        raise Http404("no such team")
    return team


def _clone_source(request: HttpRequest, params) -> Run | None:
    source = params.get("from", "").strip()
    return _visible_run_or_404(request, whole_number(source, default=0)) if source else None


@login_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _visible_run_or_404(request, run_id)
    metrics_url = reverse("api:run-metrics", args=[run.pk])
    events_url = reverse("api:run-events", args=[run.pk])
    # Keys with underscores: templates cannot look up "chart-reward".
    raw_links = {
        chart.replace("-", "_"): f"{metrics_url}?{urlencode({'name': names, 'max_points': METRICS_MAX_POINTS}, doseq=True)}"
        for chart, names in LINE_CHARTS.items()
    } | {
        chart.replace("-", "_"): f"{events_url}?{urlencode({'kind': kinds, 'latest': count}, doseq=True)}"
        for chart, (kinds, count) in EVENT_CHARTS.items()
    }
    config = {
        "run": RunDetailSerializer(run).data,
        "ws_path": f"/ws/runs/{run.pk}/",
        "metrics_url": metrics_url,
        "events_url": events_url,
        "line_charts": LINE_CHARTS,
        "event_charts": {chart: {"kinds": kinds, "latest": count} for chart, (kinds, count) in EVENT_CHARTS.items()},
        "max_points": METRICS_MAX_POINTS,
    }
    context = {
        "run": run,
        "spec_yaml": _to_yaml(run.spec),
        "config": config,
        "raw": raw_links,
        "attempts": run.attempts.order_by("number"),
        "checkpoints": run.checkpoints.order_by("-step"),
        "checkpoint_bytes": sum(run.checkpoints.filter(deleted_at__isnull=True).values_list("size_bytes", flat=True)),
        "retention": services.resolve_retention(run.retention),
        "children": selectors.visible_runs(request.user).filter(parent=run).order_by("id"),
        "open_alerts": run.alerts.filter(resolved_at__isnull=True),
    }
    return render(request, "runs/detail.html", context)


@login_required
@require_POST
def run_fork(request: HttpRequest, run_id: int) -> HttpResponse:
    """Fork from a checkpoint step with optional YAML overrides; the new run's page next."""
    parent = _visible_run_or_404(request, run_id)
    step = request.POST.get("step", "")
    try:
        overrides = yaml.safe_load(request.POST.get("overrides", "")) or {}
        if not isinstance(overrides, dict):
            raise SpecError([("overrides", "must be a mapping of spec settings")])
        child = services.fork_run(request.user, parent, whole_number(step, default=-1), overrides)
    except yaml.YAMLError as exc:
        messages.error(request, f"overrides are not valid YAML: {exc}")
    except (SpecError, RequestRefused) as exc:  # a bad spec; a pool or quota that can never admit it
        messages.error(request, "not forked: " + "; ".join(f"{field}: {reason}" for field, reason in exc.problems))
    except services.RunError as exc:
        messages.error(request, str(exc))
    else:
        return redirect("runs:detail", run_id=child.pk)
    return redirect("runs:detail", run_id=parent.pk)


@login_required
def run_diff(request: HttpRequest) -> HttpResponse:
    """Config diff of two runs (?a=&b=): every leaf where their resolved specs differ."""
    ids = [request.GET.get(side, "").strip() for side in ("a", "b")]
    if None in (numbers := [whole_number(value) for value in ids]):
        return render(request, "runs/diff.html", {"error": "give two run ids: ?a=<id>&b=<id>"}, status=400)
    a, b = (_visible_run_or_404(request, number) for number in numbers)
    return render(request, "runs/diff.html", {"a": a, "b": b, "differences": spec_differences(a.spec, b.spec)})


@login_required
@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _visible_run_or_404(request, run_id)
    try:
        run = services.request_cancel(request.user, run)
    except services.RunError as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, "cancelled" if run.is_terminal else "cancel requested; the run stops after its current step")
    return redirect("runs:detail", run_id=run.pk)
