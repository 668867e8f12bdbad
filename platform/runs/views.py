"""Server-rendered pages: the runs list, the launch form and the live run page.

Like the API, they only parse input and call selectors and services; the run page's
charts load their data from the REST API and the run's websocket.
"""

import json
import re
from datetime import timedelta
from typing import Any

import yaml
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models.fields.json import KT
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from accounts.models import Role, Team
from accounts.permissions import find_team, teams_of
from catalog import selectors as catalog_selectors
from engine.spec import SpecError
from quotas import selectors as quota_selectors
from quotas.models import DEFAULT_POOL
from quotas.services import RequestRefused
from rollyard.pagination import BadCursor, KeysetPage, keyset_page
from rollyard.params import whole_number
from rollyard.spec_text import load_spec_text
from runs import alerts, launch, lifecycle, selectors, twins
from runs.api.lifecycle import compare_url
from runs.api.serializers import RunDetailSerializer
from runs.api.dashboards import TECHNIQUES, RunListFilter
from runs.models import AlertKind, Run, RunStatus
from runs.spec_diff import spec_differences

# What the run page charts, by tab then chart id: the title, the unit of the y axis and the
# metric names of its lines (docs/metrics.md). A chart has one y axis, so its lines share
# that unit: a ratio of 4-13× beside fractions of 0-0.1 flattens them, a token count
# beside a group count likewise; a metric of another unit gets a chart of its own. A name ending in "*" stands for every metric
# of the run with that prefix (pass@k for each k, a technique's own metrics). An optional
# chart shows only once one of its metrics exists; a tab of optional charts says so when
# none does (off-policy and technique metrics exist only in runs that use them).
LINE_CHARTS: dict[str, dict[str, dict[str, Any]]] = {
    "learning": {
        "chart-reward": {"title": "Reward and accuracy", "unit": "mean reward (1 = a correct answer)",
                         "names": ["reward/mean", "acc/mean", "val/acc/mean@1"]},
        "chart-passk": {"title": "Held-out pass@k", "unit": "pass@k (fraction)", "names": ["val/pass@*"]},
        "chart-loss": {"title": "Policy loss", "unit": "loss (nats per token)", "names": ["actor/pg_loss"]},
        "chart-entropy": {"title": "Entropy", "unit": "nats per token", "names": ["actor/entropy"]},
        "chart-kl": {"title": "KL to the reference / old policy", "unit": "nats per token",
                     "names": ["actor/ppo_kl", "kl"]},
        "chart-clip": {"title": "Clip ratios", "unit": "fraction of tokens",
                       "names": ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                                 "clip_ratio/dual_mean"]},
        "chart-grad-norm": {"title": "Gradient norm", "unit": "L2 norm (before clipping)", "names": ["actor/grad_norm"]},
    },
    "rollout": {
        "chart-length": {"title": "Response length (tokens)", "unit": "response length (tokens)",
                         "names": ["rollout/response_length/p50", "rollout/response_length/p90",
                                   "rollout/response_length/p99", "rollout/response_length/max"]},
        "chart-ratios": {"title": "Clipped, aborted and partial rollouts", "unit": "fraction of rollouts",
                         "names": ["rollout/clip_ratio", "rollout/aborted_ratio", "rollout/partial_ratio"]},
        "chart-tail-ratio": {"title": "Tail ratio: longest response over the median",
                             "unit": "× the median length", "names": ["rollout/tail_ratio"]},
    },
    "accelerators": {
        "chart-idle": {"title": "Idle ratio per step", "unit": "fraction of the step's wall time",
                       "names": ["trainer/idle_ratio", "rollout/idle_ratio"]},
        "chart-step-time": {"title": "Step time by stage", "unit": "seconds",
                            "names": ["timing_s/step", "timing_s/gen", "timing_s/update_actor", "timing_s/sync",
                                      "timing_s/wait", "timing_s/eval"]},
        # NVML, on nodes with NVIDIA GPUs only (engine.telemetry.NvmlSampler).
        "chart-gpu-util": {"title": "GPU utilisation (NVML)", "unit": "percent busy", "optional": True,
                           "names": ["gpu/*/utilization"]},
        "chart-gpu-memory": {"title": "GPU memory used (NVML)", "unit": "MiB", "optional": True,
                             "names": ["gpu/*/memory_used_mb", "gpu/*/memory_total_mb"]},
    },
    "difficulty": {
        "chart-difficulty-mix": {"title": "Groups all correct, all wrong, mixed", "unit": "fraction of groups",
                                 "names": ["difficulty/frac_all_correct", "difficulty/frac_all_wrong",
                                           "difficulty/frac_mixed"]},
    },
    "off-policy": {
        "chart-staleness": {"title": "Staleness (policy versions behind)", "unit": "versions", "optional": True,
                            "names": ["off_policy/staleness/mean", "off_policy/staleness/max", "off_policy/group_lag/max"]},
        "chart-versions": {"title": "Policy versions per sample", "unit": "versions", "optional": True,
                           "names": ["off_policy/versions_per_sample"]},
        "chart-buffer": {"title": "Buffer size", "unit": "groups", "optional": True,
                         "names": ["buffer/size", "april/buffer_groups"]},
        "chart-dropped": {"title": "Samples dropped as too stale", "unit": "samples", "optional": True,
                          "names": ["off_policy/dropped"]},
        "chart-behaviour": {"title": "Behaviour policy: mean importance weight", "unit": "importance weight",
                            "optional": True, "names": ["off_policy/behav_weight_mean"]},
        "chart-off-policy-shares": {"title": "Capped weights and off-policy samples", "unit": "fraction",
                                    "optional": True,
                                    "names": ["off_policy/behav_capped_ratio", "off_policy/token_ratio"]},
        "chart-behaviour-kl": {"title": "KL to the behaviour policy", "unit": "nats per token", "optional": True,
                               "names": ["off_policy/behav_kl"]},
    },
    "techniques": {
        "chart-april": {"title": "APRIL: groups submitted, resumed and buffered", "unit": "groups",
                        "optional": True,
                        "names": ["april/submitted_groups", "april/resumed_groups", "april/buffer_groups"]},
        "chart-april-aborted": {"title": "APRIL: samples aborted", "unit": "samples", "optional": True,
                                "names": ["april/aborted_samples"]},
        "chart-april-tokens": {"title": "APRIL: tokens generated", "unit": "tokens", "optional": True,
                               "names": ["april/generated_tokens"]},
        "chart-cures": {"title": "CurES rollouts per prompt", "unit": "rollouts", "optional": True,
                        "names": ["cures/rollouts_per_prompt/*"]},
        "chart-cures-shares": {"title": "CurES pruned share, posterior mean and spread", "unit": "fraction",
                               "optional": True,
                               "names": ["cures/pruned_share", "cures/posterior_mean", "cures/spread_mean"]},
        "chart-cures-entropy": {"title": "CurES sampling-weight entropy", "unit": "nats", "optional": True,
                                "names": ["cures/weight_entropy"]},
        "chart-cures-grad-norm": {"title": "CurES embedding gradient norm", "unit": "L2 norm", "optional": True,
                                  "names": ["cures/embedding_grad_norm"]},
        "chart-cures-tokens": {"title": "CurES pre-rollout tokens", "unit": "tokens", "optional": True,
                               "names": ["cures/pre_rollout_tokens"]},
        "chart-dars": {"title": "DARS extra rollouts and correct ones gained", "unit": "rollouts",
                       "optional": True, "names": ["dars/extra_rollouts*", "dars/positive_gained"]},
        "chart-dars-shares": {"title": "DARS saved and filtered share", "unit": "fraction", "optional": True,
                              "names": ["dars/saved_share", "dars/filtered_share"]},
        "chart-brorl": {"title": "BroRL filtered share against n", "unit": "fraction", "optional": True,
                        "names": ["brorl/*"]},
        "chart-curriculum": {"title": "Curriculum", "unit": "fraction", "optional": True,
                             "names": ["curriculum/*"]},
        "chart-dapo": {"title": "DAPO dynamic sampling: groups kept", "unit": "fraction of groups", "optional": True,
                       "names": ["dapo/keep_rate"]},
        "chart-dapo-rounds": {"title": "DAPO generation rounds per step", "unit": "rounds", "optional": True,
                              "names": ["dapo/gen_rounds"]},
    },
}
# Event-backed charts: the event kinds they draw and how many recent events they load.
EVENT_CHARTS: dict[str, tuple[list[str], int]] = {
    "chart-histogram": (["length_histogram"], 200),
    "chart-heatmap": (["length_histogram"], 200),
    "chart-prompts": (["prompt_results"], 20),
    "chart-timeline": (["span"], 1000),
    "run-log": (["log", "status"], 200),
}
TABS = [("overview", "Overview"), ("learning", "Learning"), ("rollout", "Rollout tail"),
        ("accelerators", "Accelerators"), ("difficulty", "Difficulty"), ("off-policy", "Off-policy"),
        ("techniques", "Techniques")]
RUNS_PER_PAGE = 50
METRICS_MAX_POINTS = 1000
COMPARE_MAX = 10


def _visible_run_or_404(request: HttpRequest, run_id: int) -> Run:
    try:
        return selectors.get_visible_run(request.user, run_id)
    except Run.DoesNotExist:
        raise Http404("no such run") from None


def _to_yaml(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False)


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    """The runs of the user's teams, newest first, filtered (status, team, owner, algorithm,
    technique, search: the list API's filters and a few more), 50 a page with "newer" /
    "older" links keyed by (created_at, id) (rollyard.pagination); pick 2 to 10 to compare."""
    filters = RunListFilter(request.GET, queryset=selectors.visible_runs(request.user), request=request)
    errors = dict(filters.errors)
    before, after = request.GET.get("before"), request.GET.get("after")  # empty: the first page
    page = KeysetPage([], None, None)
    if not errors:
        # The list shows a run's algorithm, not its spec: the spec (kilobytes of JSON a run)
        # stays in the database.
        rows = (
            filters.qs.select_related("owner").defer("spec", "retention").annotate(algorithm=KT("spec__algorithm__name"))
        )
        try:
            page = keyset_page(rows, RUNS_PER_PAGE, before=before, after=after)
        except BadCursor as exc:
            errors[exc.field] = [exc.reason]
    # The filters without the cursor: what the newer / older links carry on.
    query = request.GET.copy()
    for cursor in ("before", "after"):
        query.pop(cursor, None)
    context = {
        "page": page,
        "errors": errors,
        "filters": filters,
        "query": query.urlencode(),
        "at_cursor": bool(before or after),
        "statuses": RunStatus.choices,
        "teams": teams_of(request.user),
        "algorithms": [choice["name"] for choice in selectors.spec_choices()["algorithm"]],
        "techniques": list(TECHNIQUES),
        "compare_max": COMPARE_MAX,
    }
    return render(request, "runs/list.html", context, status=400 if errors else 200)


@login_required
def run_new(request: HttpRequest) -> HttpResponse:
    """Launch form: a YAML/JSON spec prefilled with the engine's defaults (or with an
    earlier run's spec: ?from=<id>). On error nothing is created and every problem is
    listed by field."""
    problems: list[tuple[str, str]] = []
    if request.method == "POST":
        text = request.POST.get("spec", "")
        # The form's alert-rules section, as JSON (launch.js); absent without JavaScript.
        rules_text = request.POST.get("alert_rules", "").strip() or "[]"
        try:
            rules = json.loads(rules_text)
        except json.JSONDecodeError as exc:
            problems.append(("alert_rules", f"not valid JSON: {exc}"))
        try:
            data = load_spec_text(text, "spec")
        except SpecError as exc:
            problems += exc.problems
        if not problems:
            try:
                run = launch.create_run(
                    request.user,
                    data,
                    team=_chosen_team(request),
                    parent=_clone_source(request, request.POST),
                    pool=request.POST.get("pool") or DEFAULT_POOL,
                    alert_rules=rules,
                )
            except (SpecError, RequestRefused) as exc:
                problems = exc.problems
            except lifecycle.RunPermissionDenied as exc:
                problems = [("team", str(exc))]
            else:
                return redirect("runs:detail", run_id=run.pk)
    elif source := request.GET.get("from", "").strip():
        # 0: no run has that id, so anything but a number is a 404 like a missing run.
        source_run = _visible_run_or_404(request, whole_number(source, default=0))
        text = _to_yaml(source_run.spec)
        # A clone carries its source's rules, as the API's clone/ does.
        rules_text = json.dumps([alerts.rule_fields(rule) for rule in source_run.alert_rules.all()])
    else:
        text = _to_yaml(selectors.spec_defaults())
        rules_text = "[]"
    context = {
        "spec_text": text,
        "problems": problems,
        # The form is built in the browser from the engine's schema and registries.
        "form_config": {
            "schema": selectors.spec_schema(),
            "choices": selectors.spec_choices(),
            "catalog_datasets": [dataset.reference for dataset in catalog_selectors.visible_datasets(request.user)],
            "validate_url": reverse("api:spec-validate"),
            # Nothing set yet: the form starts from the defaults, not from their YAML.
            "fresh": request.method == "GET" and not request.GET.get("from"),
            "documented_metrics": alerts.documented_metrics(),
            # A refused launch's (field, reason) pairs about its rules, shown at each rule's field.
            "rule_problems": [problem for problem in problems if problem[0].startswith("alert_rules")],
        },
        "alert_rules_text": rules_text,
        "quota_left": quota_left(request.user),
        "choices": selectors.spec_choices(),
        # Pools with what they hold, and the quotas that bind the user, before launching.
        "pools": [row | {"free": max(0, row["pool"].capacity - row["in_use"])} for row in quota_selectors.pool_occupancy()],
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


def quota_left(user) -> list[dict[str, Any]]:
    """Each GPU-hour quota that binds the user, with the hours used in its window so far
    (teams' and the user's own rows of quotas.selectors.usage) and what is left."""
    now = timezone.now()
    rows = []
    for quota in quota_selectors.visible_quotas(user).select_related("pool", "team", "user"):
        if quota.gpu_hours_per_period is None:
            continue
        usage = quota_selectors.usage(user, since=now - timedelta(days=quota.period_days), until=now, pool_name=quota.pool.name)
        if quota.team_id is not None:
            used = sum(row.gpu_hours for row in usage["teams"] if row.team == quota.team.name)
        else:
            used = sum(row.gpu_hours for row in usage["users"] if row.user == quota.user.get_username())
        rows.append({"quota": quota, "used": used, "left": max(0.0, quota.gpu_hours_per_period - used)})
    return rows


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


def resolve_names(patterns: list[str], present: list[str]) -> list[str]:
    """A chart's metric names: exact ones as given, a pattern with "*" (any text: "cures/*",
    "gpu/*/utilization") as every present name it matches (sorted)."""
    names: list[str] = []
    for pattern in patterns:
        if "*" in pattern:
            wildcard = re.compile(".*".join(map(re.escape, pattern.split("*"))))
            names += sorted(name for name in present if wildcard.fullmatch(name))
        else:
            names.append(pattern)
    return names


@login_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _visible_run_or_404(request, run_id)
    metrics_url = reverse("api:run-metrics", args=[run.pk])
    events_url = reverse("api:run-events", args=[run.pk])
    present = selectors.metric_names(run)
    charts = {
        chart_id: {**chart, "tab": tab, "resolved": resolve_names(chart["names"], present)}
        for tab, tab_charts in LINE_CHARTS.items()
        for chart_id, chart in tab_charts.items()
    }
    # Keys with underscores: templates cannot look up "chart-reward".
    raw_links = {
        chart_id.replace("-", "_"): f"{metrics_url}?{urlencode({'name': chart['resolved'], 'max_points': METRICS_MAX_POINTS}, doseq=True)}"
        for chart_id, chart in charts.items()
    } | {
        chart.replace("-", "_"): f"{events_url}?{urlencode({'kind': kinds, 'latest': count}, doseq=True)}"
        for chart, (kinds, count) in EVENT_CHARTS.items()
    }
    config = {
        "run": RunDetailSerializer(run).data,
        "ws_path": f"/ws/runs/{run.pk}/",
        "metrics_url": metrics_url,
        "events_url": events_url,
        "prompts_url": reverse("api:run-prompts", args=[run.pk]),
        "heatmap_url": reverse("api:run-prompts-heatmap", args=[run.pk]),
        "samples_url": reverse("api:run-samples", args=[run.pk]),
        "savings_url": reverse("api:run-savings", args=[run.pk]),
        "queue_url": reverse("quotas-api:queue") + "?" + urlencode({"pool": quota_selectors.pool_name_of(run)}),
        "line_charts": {chart_id: {k: chart[k] for k in ("names", "title", "unit", "tab")} | {
            "optional": chart.get("optional", False)} for chart_id, chart in charts.items()},
        "metric_names": present,
        "event_charts": {chart: {"kinds": kinds, "latest": count} for chart, (kinds, count) in EVENT_CHARTS.items()},
        "max_points": METRICS_MAX_POINTS,
        # The alert card (alerts.js): its endpoints, the metric names its form offers, the
        # kinds' labels, and whether this user may add and delete rules (the API decides too).
        "alert_rules_url": reverse("api:run-alert-rules", args=[run.pk]),
        "alerts_url": reverse("api:run-alerts", args=[run.pk]),
        "documented_metrics": alerts.documented_metrics(),
        "alert_kinds": dict(AlertKind.choices),
        "may_change_rules": alerts.may_change_rules(request.user, run),
    }
    inputs = getattr(run, "inputs", None)
    context = {
        "run": run,
        "spec_yaml": _to_yaml(run.spec),
        "config": config,
        "raw": raw_links,
        "tabs": TABS,
        # Template-friendly: per tab, its charts with what the template needs.
        "tab_charts": {
            tab: [{"id": chart_id, "title": chart["title"], "optional": chart.get("optional", False),
                   "shown": (shown := not chart.get("optional")
                             or any(name in present for name in charts[chart_id]["resolved"])),
                   "hidden": not shown,
                   "raw": raw_links[chart_id.replace("-", "_")]}
                  for chart_id, chart in tab_charts.items()]
            for tab, tab_charts in LINE_CHARTS.items()
        },
        # Hyphenated tab keys cannot be looked up in a template.
        "off_policy_charts": [],
        "technique_charts": [],
        "status_history": run.status_changes.order_by("at", "id"),
        "queue_entry": next((entry for entry in quota_selectors.queue(request.user) if entry.run_id == run.pk), None)
        if run.status == "queued" else None,
        "dataset_used": inputs.dataset if inputs else None,
        "dataset_label": (run.spec.get("dataset") or {}).get("path") or (run.spec.get("dataset") or {}).get("name") or "—",
        "model_label": (run.spec.get("model") or {}).get("path") or "—",
        "presets_used": list(inputs.presets.all()) if inputs else [],
        "attempts": run.attempts.order_by("number"),
        "checkpoints": run.checkpoints.order_by("-step"),
        "checkpoint_bytes": sum(run.checkpoints.filter(deleted_at__isnull=True).values_list("size_bytes", flat=True)),
        "retention": launch.resolve_retention(run.retention),
        "children": selectors.visible_runs(request.user).filter(parent=run).order_by("id"),
        "twins": selectors.visible_runs(request.user).filter(twin_of=run).order_by("id"),
        "twin_techniques": [twins.TECHNIQUE_LABELS[name] for name in twins.techniques_of_run(run)],
        "open_alerts": run.alerts.filter(resolved_at__isnull=True),
        "may_change_rules": config["may_change_rules"],
    }
    for tab, key in (("off-policy", "off_policy_charts"), ("techniques", "technique_charts")):
        context[key] = [chart | {"hidden": not chart["shown"]} for chart in context["tab_charts"][tab]]
    return render(request, "runs/detail.html", context)


@login_required
@require_POST
def run_fork(request: HttpRequest, run_id: int) -> HttpResponse:
    """Fork from a checkpoint step with optional YAML overrides; the new run's page next."""
    parent = _visible_run_or_404(request, run_id)
    step = request.POST.get("step", "")
    try:
        overrides = load_spec_text(request.POST.get("overrides", ""), "overrides")
        if not isinstance(overrides, dict):
            raise SpecError([("overrides", "must be a mapping of spec settings")])
        child = launch.fork_run(request.user, parent, whole_number(step, default=-1), overrides)
    except (SpecError, RequestRefused) as exc:  # a bad spec; a pool or quota that can never admit it
        messages.error(request, "not forked: " + "; ".join(f"{field}: {reason}" for field, reason in exc.problems))
    except lifecycle.RunError as exc:
        messages.error(request, str(exc))
    else:
        return redirect("runs:detail", run_id=child.pk)
    return redirect("runs:detail", run_id=parent.pk)


@login_required
@require_POST
def run_twin(request: HttpRequest, run_id: int) -> HttpResponse:
    """Launch the run's GRPO twin (runs.twins) and open the compare page of the two; the
    run's page again, saying why, when it has no twin or the launch is refused."""
    run = _visible_run_or_404(request, run_id)
    try:
        twin = twins.launch_twin(request.user, run)
    except (SpecError, RequestRefused) as exc:
        messages.error(request, "no GRPO twin: " + "; ".join(f"{field}: {reason}" for field, reason in exc.problems))
    except lifecycle.RunError as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, f"launched #{twin.pk} {twin.name}")
        return redirect(compare_url(run, twin))
    return redirect("runs:detail", run_id=run.pk)


@login_required
def run_diff(request: HttpRequest) -> HttpResponse:
    """Config diff of two runs (?a=&b=): every leaf where their resolved specs differ."""
    ids = [request.GET.get(side, "").strip() for side in ("a", "b")]
    if None in (numbers := [whole_number(value) for value in ids]):
        return render(request, "runs/diff.html", {"error": "give two run ids: ?a=<id>&b=<id>"}, status=400)
    a, b = (_visible_run_or_404(request, number) for number in numbers)
    return render(request, "runs/diff.html", {"a": a, "b": b, "differences": spec_differences(a.spec, b.spec)})


@login_required
@require_GET
def run_compare(request: HttpRequest) -> HttpResponse:
    """2 to 10 runs (?run=&run=): any metric's curves overlaid, by step or wall-clock time,
    and the config keys whose values are not the same in all of them."""
    numbers = [whole_number(value.strip()) for value in request.GET.getlist("run")]
    if None in numbers or not 2 <= len(numbers) <= COMPARE_MAX:
        return render(request, "runs/compare.html", {"error": f"pick 2 to {COMPARE_MAX} runs: ?run=<id>&run=<id>"}, status=400)
    runs = [_visible_run_or_404(request, number) for number in numbers]
    names = sorted(set().union(*(selectors.metric_names(run) for run in runs)))
    config = {
        "runs": [{"id": run.pk, "name": run.name, "status": run.status,
                  "metrics_url": reverse("api:run-metrics", args=[run.pk])} for run in runs],
        "names": names,
        "default": next((name for name in ("reward/mean", "acc/mean") if name in names), names[0] if names else None),
        "max_points": METRICS_MAX_POINTS,
    }
    return render(request, "runs/compare.html", {"runs": runs, "differences": config_differences(runs), "config": config})


def config_differences(runs: list[Run]) -> list[dict[str, Any]]:
    """The spec keys whose values differ between any of the runs, each with every run's
    value, in path order: the pairwise differences against the first run cover every key
    where some run differs from some other."""
    paths = sorted({difference["path"] for run in runs[1:] for difference in spec_differences(runs[0].spec, run.spec)})
    return [{"path": path, "values": [_leaf(run.spec, path) for run in runs]} for path in paths]


def _leaf(spec: dict[str, Any], path: str) -> Any:
    value: Any = spec
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


@login_required
@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _visible_run_or_404(request, run_id)
    try:
        run = lifecycle.request_cancel(request.user, run)
    except lifecycle.RunError as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, "cancelled" if run.is_terminal else "cancel requested; the run stops after its current step")
    return redirect("runs:detail", run_id=run.pk)
