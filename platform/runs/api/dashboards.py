"""What the dashboards need beyond the run endpoints: live validation of a spec for the
launch form (POST /api/spec/validate/), the runs list's extra filters (algorithm,
technique, search) used by the list page, and a synchronous run's savings estimate
(GET /api/runs/<id>/savings/, runs.savings)."""

from typing import Any

import django_filters
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.services import default_team
from catalog import services as catalog
from engine.spec import SpecError
from quotas import services as quotas
from quotas.models import DEFAULT_POOL, DEFAULT_PRIORITY
from quotas.services import RequestRefused
from rollyard.spec_text import load_spec_text
from runs import launch, savings, selectors
from runs.api.filters import RunFilter
from runs.api.views import launch_team, validated_query
from runs.models import MetricPoint, Run, RunEvent
from runs.spec_paths import check_spec_paths, parse_server_spec

# --- the launch form's live validation ------------------------------------------------------


class ValidateSerializer(serializers.Serializer):
    spec = serializers.JSONField(required=False, help_text="a run spec as JSON")
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, max_length=200_000,
                                 help_text="or the same as YAML (the form's advanced editor)")
    team = serializers.CharField(required=False, allow_null=True, max_length=150)
    pool = serializers.CharField(max_length=50, default=DEFAULT_POOL)


class ValidationAnswerSerializer(serializers.Serializer):
    valid = serializers.BooleanField(help_text="true when a launch of this spec would be accepted")
    problems = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text='reasons by field ("rollout.n", "pool", ...); "text" (or "spec") when the submission holds no '
        'spec: YAML that does not parse, as "line L, column C: <problem>", or not a mapping',
    )
    spec = serializers.JSONField(allow_null=True, help_text="the submitted spec as data; null when it holds none")
    resolved = serializers.JSONField(allow_null=True, help_text="the spec with every default; null when not valid")


def submitted_spec(body: dict[str, Any]) -> dict[str, Any]:
    """The spec a validate request carries: `text` read as YAML, else `spec`, else {}.
    Raises SpecError on the key that holds it when it is not YAML or not a mapping."""
    field = "text" if "text" in body else "spec"
    spec = load_spec_text(body["text"], field) if field == "text" else body.get("spec", {})
    if not isinstance(spec, dict):
        raise SpecError([(field, f"must be a mapping of spec settings, got {type(spec).__name__}")])
    return spec


def check_launch(user, spec_data: dict[str, Any], team, pool: str) -> dict[str, Any]:
    """The checks a launch passes before anything is stored, in launch.create_run's order
    (NUL characters, catalog references, server paths, the engine's schema, resources,
    the pool and quotas), without storing anything. Returns the resolved spec; raises
    SpecError or RequestRefused with (field, reason) problems.

    Kept in step with create_run by hand until runs.launch grows one check_launch that
    both call (runs.launch belongs to another engineer today)."""
    team = team or default_team(user)
    launch.check_can_launch(user, team)
    launch.check_no_nul_characters(spec_data, None)
    data, _ = catalog.resolve_references(user, team, dict(spec_data))
    check_spec_paths(user, data)
    spec = parse_server_spec(data)
    launch.check_launch_resources(spec)
    quotas.check_request_fits(user, team, pool, spec.resources.gpus, DEFAULT_PRIORITY)
    return spec.model_dump(mode="json")


class SpecValidateView(APIView):
    @extend_schema(
        request=ValidateSerializer,
        responses={200: ValidationAnswerSerializer},
        description="Every problem of what was submitted is a 200 with valid false, the answer being the "
        "validation: a bad field, a pool or quota that refuses it, and text that is not YAML or not a mapping. "
        "A 400 is a malformed request only (a text over 200,000 characters, a pool name over 50).",
    )
    def post(self, request: Request) -> Response:
        """Validate a spec as a launch would, storing nothing (the launch form, live)."""
        body = ValidateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        problems: dict[str, list[str]] = {}
        spec = resolved = None
        try:
            spec = submitted_spec(body.validated_data)
            resolved = check_launch(request.user, spec, launch_team(request.user, body.validated_data.get("team")),
                                    body.validated_data["pool"])
        except (SpecError, RequestRefused) as exc:
            for field, reason in exc.problems:
                problems.setdefault(field, []).append(reason)
        return Response({"valid": not problems, "problems": problems, "spec": spec, "resolved": resolved})


# --- the runs list's filters ----------------------------------------------------------------

# A technique, as the spec names it: the part that turns it on.
TECHNIQUES: dict[str, Q] = {
    "cures": Q(spec__curriculum__strategy="cures"),
    "dars": Q(spec__curriculum__strategy="dars") | Q(spec__rollout__strategy="dars"),
    "easy_to_hard": Q(spec__curriculum__strategy="easy_to_hard"),
    "april": Q(spec__rollout__strategy="april"),
    "dynamic_sampling": Q(spec__rollout__strategy="dynamic_sampling"),
    "areal": Q(spec__orchestration__mode="async"),
    # BroRL: many rollouts per prompt at a fixed budget (rollout.samples_per_step set).
    "brorl": Q(spec__rollout__samples_per_step__isnull=False) & ~Q(spec__rollout__samples_per_step=None),
}


class RunListFilter(RunFilter):
    algorithm = django_filters.CharFilter(field_name="spec__algorithm__name", help_text="algorithm.name")
    technique = django_filters.ChoiceFilter(choices=[(t, t) for t in TECHNIQUES], method="filter_technique")
    q = django_filters.CharFilter(method="search", help_text="part of the name, or a run id")

    class Meta(RunFilter.Meta):
        fields = [*RunFilter.Meta.fields, "algorithm", "technique", "q"]

    def filter_technique(self, runs: QuerySet[Run], name: str, value: str) -> QuerySet[Run]:
        return runs.filter(TECHNIQUES[value])

    def search(self, runs: QuerySet[Run], name: str, value: str) -> QuerySet[Run]:
        text = value.strip().lstrip("#")
        # The owner is looked up first, so every alternative is a column of the run with
        # an index (on PostgreSQL the name's is a trigram index, migration 0010) and the
        # database ORs the index scans; a join to the users in the OR scans every run.
        owners = list(get_user_model().objects.filter(username__iexact=text).values_list("pk", flat=True))
        match = Q(name__icontains=text) | Q(owner_id__in=owners)
        return runs.filter(match | Q(pk=int(text)) if text.isascii() and text.isdigit() and len(text) < 10 else match)


# --- a synchronous run's savings estimate ---------------------------------------------------

SAVINGS_STEPS = 500  # the newest steps the estimate reads: bounded work on a long run


class SavingsQuerySerializer(serializers.Serializer):
    share = serializers.ChoiceField(
        choices=list(savings.SHARE_METRICS), default=savings.DEFAULT_SHARE,
        help_text="APRIL: the share of responses a step waits for (0.5, 0.9 or 0.99: the length percentiles reported)",
    )


class SavingsView(APIView):
    @extend_schema(
        parameters=[SavingsQuerySerializer],
        responses={200: OpenApiTypes.OBJECT},
        description='{"applies": bool, "reason": why not (null when it applies), "steps", "share", "measured": '
        '{"step_s", "gen_s", "train_s"}, "april": {"step_s", "saved_s", "saved_fraction", "speedup", ...} or null '
        '(the run uses APRIL already), "async": {... "phase_speedup"}, "assumptions": [text]} (runs.savings). '
        '"steps": 0 is the empty state: no step has reported spans and length percentiles yet.',
    )
    def get(self, request: Request, run_id: int) -> Response:
        """What APRIL (cutting the rollout tail) and async training (overlapping generation
        and training) would save this synchronous run, from its own newest steps."""
        try:
            run = selectors.get_visible_run(request.user, run_id)
        except Run.DoesNotExist:
            raise NotFound(f"no run #{run_id}") from None
        share = validated_query(SavingsQuerySerializer, request)["share"]
        spec = run.spec if isinstance(run.spec, dict) else {}
        mode = (spec.get("orchestration") or {}).get("mode", "sync")
        if mode != "sync":
            return Response({"applies": False, "reason": f"orchestration {mode}: the estimate is for synchronous runs, "
                                                         "whose generation and training take turns", "steps": 0})
        since = run.current_step - SAVINGS_STEPS
        spans = RunEvent.objects.filter(run=run, kind="span", step__gt=since).values_list("payload", flat=True)
        names = [savings.SHARE_METRICS[share], savings.MAX_METRIC]
        lengths: dict[int, dict[str, float]] = {}
        for step, name, value in MetricPoint.objects.filter(run=run, name__in=names, step__gt=since).values_list(
            "step", "name", "value"
        ):
            if value is not None:
                lengths.setdefault(step, {})[name] = value
        estimate = savings.estimate_savings(savings.step_times(spans.iterator(chunk_size=2000)), lengths, share)
        if (spec.get("rollout") or {}).get("strategy") == "april":
            estimate["april"] = None  # its tail is cut already
        return Response({"applies": True, "reason": None, **estimate})
