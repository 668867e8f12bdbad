"""REST endpoints: parse the request, call a selector or a service, shape the answer.
Errors (bad spec, illegal transition) are mapped to HTTP in rollyard.errors."""

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Team
from accounts.permissions import find_team
from runs import launch, lifecycle, selectors
from runs.api.alerts import RunAlertActions
from runs.api.filters import RunFilter
from runs.api.lifecycle import RunLifecycleActions
from runs.api.serializers import (
    EventsQuerySerializer,
    MetricsQuerySerializer,
    RunCreateSerializer,
    RunDetailSerializer,
    RunSerializer,
    event_json,
)
from runs.models import Run


class RunViewSet(
    RunLifecycleActions, RunAlertActions, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Runs of the user's teams, newest first. Another team's run answers 404."""

    serializer_class = RunDetailSerializer
    filterset_class = RunFilter

    def get_queryset(self) -> QuerySet[Run]:
        runs = selectors.visible_runs(self.request.user).order_by("-created_at", "-id")
        # The list's rows have no spec: kilobytes of JSON a run, left in the database.
        return runs.defer("spec", "retention") if self.action == "list" else runs

    def get_serializer_class(self):
        return RunSerializer if self.action == "list" else RunDetailSerializer

    def filter_queryset(self, queryset: QuerySet[Run]) -> QuerySet[Run]:
        # The list's filters only: a run's own endpoints have query parameters of their
        # own (metrics' ?name=) that must not filter the run away.
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    @extend_schema(request=RunCreateSerializer, responses={201: RunDetailSerializer})
    def create(self, request: Request) -> Response:
        body = RunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        team = launch_team(request.user, body.validated_data.get("team"))
        run = launch.create_run(
            request.user,
            body.validated_data["spec"],
            name=body.validated_data["name"],
            team=team,
            pool=body.validated_data["pool"],
            priority=body.validated_data["priority"],
            retention=body.validated_data.get("retention"),
            alert_rules=body.validated_data.get("alert_rules"),
        )
        return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: RunDetailSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel: a queued run at once, a running one between two steps (409 if finished)."""
        run = lifecycle.request_cancel(request.user, self.get_object())
        return Response(RunDetailSerializer(run).data)

    @extend_schema(
        parameters=[MetricsQuerySerializer],
        responses={200: OpenApiTypes.OBJECT},
        description='{"series": {name: {"steps": [...], "values": [...], "wall_times": [...], "total": n}}}. '
        "No name: every metric of the run. Long series are downsampled keeping each bucket's "
        "first, last, min and max point.",
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request: Request, pk: str) -> Response:
        run = self.get_object()
        params = validated_query(MetricsQuerySerializer, request)
        names = params["name"] or selectors.metric_names(run)
        series = selectors.metric_series(
            run, names, params["max_points"], params.get("min_step"), params.get("max_step")
        )
        return Response({"series": series, "max_points": params["max_points"]})

    @extend_schema(
        parameters=[EventsQuerySerializer],
        responses={200: OpenApiTypes.OBJECT},
        description='{"events": [{"id": ..., "kind": ..., ...engine event...}], "last_id": ...}',
    )
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str) -> Response:
        run = self.get_object()
        params = validated_query(EventsQuerySerializer, request)
        if "latest" in params:
            events = selectors.latest_events(run, params["kind"], params["latest"])
        else:
            events = selectors.run_events(run, params["kind"], params.get("after"), params["limit"])
        last_id = events[-1].pk if events else params.get("after")
        return Response({"events": [event_json(event) for event in events], "last_id": last_id})


def launch_team(user, id_or_name: str | None) -> Team | None:
    """The team a launch asked for, among the user's teams (None: the default team).
    Whether the user may launch there is the service's check (403 naming the role)."""
    if id_or_name is None:
        return None
    team = find_team(user, id_or_name)
    if team is None:
        raise ValidationError({"team": [f"no team '{id_or_name}' among yours"]})
    return team


def validated_query(serializer_class: type, request: Request) -> dict:
    """The request's query parameters, validated (a 400 naming each bad one otherwise)."""
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


class SpecDefaultsView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        """A complete spec with the engine's defaults, and the registries' choices."""
        return Response({"spec": selectors.spec_defaults(), "choices": selectors.spec_choices()})


class SpecSchemaView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        """The run spec's JSON schema (from the engine), and the registries' choices."""
        return Response({"schema": selectors.spec_schema(), "choices": selectors.spec_choices()})
