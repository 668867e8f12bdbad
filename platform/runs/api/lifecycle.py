"""REST endpoints of a run's lifecycle, mixed into RunViewSet: attempts, checkpoints,
clone (the spec to edit and launch again), fork from a checkpoint, the GRPO twin (runs.twins),
config diff."""

from django.urls import reverse
from django.utils.http import urlencode
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from runs import alerts, launch, selectors, twins
from runs.api.serializers import (
    CheckpointSerializer,
    DiffQuerySerializer,
    ForkSerializer,
    RunAttemptSerializer,
    RunDetailSerializer,
)
from runs.models import Run
from runs.spec_diff import spec_differences


class RunLifecycleActions:
    """Actions on one run (detail) and across two (diff). Visibility comes from the
    viewset's get_object: another team's run answers 404."""

    @extend_schema(responses={200: RunAttemptSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=None)
    def attempts(self, request: Request, pk: str) -> Response:
        """Every worker's go at the run, first to last: who, when, how it ended, and the
        checkpoint step it resumed from."""
        return Response(RunAttemptSerializer(self.get_object().attempts.order_by("number"), many=True).data)

    @extend_schema(responses={200: CheckpointSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=None)
    def checkpoints(self, request: Request, pk: str) -> Response:
        """The run's checkpoints by step, those deleted by retention included (deleted=true)."""
        return Response(CheckpointSerializer(self.get_object().checkpoints.order_by("step"), many=True).data)

    @extend_schema(
        responses={200: OpenApiTypes.OBJECT},
        description='{"name": ..., "spec": {...}, "retention": {...}, "alert_rules": [{...}]}',
    )
    @action(detail=True, methods=["get"])
    def clone(self, request: Request, pk: str) -> Response:
        """What to edit and POST to /api/runs/ to launch the run again."""
        run = self.get_object()
        spec = {key: value for key, value in run.spec.items() if key != "name"}
        rules = [alerts.rule_fields(rule) for rule in run.alert_rules.all()]
        return Response({"name": f"{run.name} (clone)", "spec": spec, "retention": run.retention, "alert_rules": rules})

    @extend_schema(request=ForkSerializer, responses={201: RunDetailSerializer})
    @action(detail=True, methods=["post"])
    def fork(self, request: Request, pk: str) -> Response:
        """A new run starting from this run's checkpoint at `step`, with `overrides` laid
        over its spec. 400 names the problem (no checkpoint at that step, a bad spec)."""
        body = ForkSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        child = launch.fork_run(
            request.user,
            self.get_object(),
            body.validated_data["step"],
            overrides=body.validated_data["overrides"],
            name=body.validated_data["name"],
            retention=body.validated_data.get("retention"),
        )
        return Response(RunDetailSerializer(child).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={201: RunDetailSerializer},
        description="The new run, with `techniques` (what its twin turns off) and `compare_url` (the compare "
        "page of the two). 400 on `spec` for a run that uses no technique.",
    )
    @action(detail=True, methods=["post"])
    def twin(self, request: Request, pk: str) -> Response:
        """Launch the run's GRPO twin: same seed, model, data and budget, with its CurES, DARS,
        BroRL, APRIL or AReaL turned off (runs.twins), as any launch (quotas, admission)."""
        run = self.get_object()
        twin = twins.launch_twin(request.user, run)
        body = RunDetailSerializer(twin).data | {
            "techniques": twins.techniques_of_run(run),
            "compare_url": compare_url(run, twin),
        }
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[DiffQuerySerializer],
        responses={200: OpenApiTypes.OBJECT},
        description='{"a": run, "b": run, "differences": [{"path": "training.lr", "a": 0.0003, "b": 0.001}]}; '
        "null stands for a setting one spec lacks.",
    )
    @action(detail=False, methods=["get"])
    def diff(self, request: Request) -> Response:
        """Where two runs' resolved specs differ, leaf by leaf."""
        query = DiffQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        a, b = (visible_run_or_404(request, query.validated_data[side]) for side in ("a", "b"))
        return Response(
            {
                "a": {"id": a.pk, "name": a.name},
                "b": {"id": b.pk, "name": b.name},
                "differences": spec_differences(a.spec, b.spec),
            }
        )


def visible_run_or_404(request: Request, run_id: int) -> Run:
    try:
        return selectors.get_visible_run(request.user, run_id)
    except Run.DoesNotExist:
        raise NotFound(f"no run #{run_id}") from None


def compare_url(*runs: Run) -> str:
    """The compare page of these runs."""
    return reverse("runs:compare") + "?" + urlencode({"run": [run.pk for run in runs]}, doseq=True)
