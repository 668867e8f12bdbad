"""REST endpoints of a run's per-prompt telemetry (runs.prompts): the difficulty table,
and the samples kept for drill-down from a step or a prompt. Anyone who may see the run
(any role in its team) reads them; another team's run answers 404."""

import django_filters
from django import forms
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from rollyard.params import NUL, NUL_REASON
from runs import selectors
from runs.api.serializers import HeatmapQuerySerializer, PromptDifficultySerializer, SampleSerializer
from runs.models import Run, RunPromptDifficulty, RunSample


class IntegerFilter(django_filters.NumberFilter):
    # NumberFilter takes decimals; a step is a whole number ("1.5" is a 400, not step 1).
    field_class = forms.IntegerField


class StableOrderingFilter(django_filters.OrderingFilter):
    """Orders by the asked fields, then by prompt id, so that rows with equal values keep
    one order across pages."""

    def filter(self, rows: QuerySet, value: list[str] | None) -> QuerySet:
        ordered = super().filter(rows, value)
        return ordered.order_by(*ordered.query.order_by, "prompt_id") if value else ordered


class PromptDifficultyFilter(django_filters.FilterSet):
    mean_min = django_filters.NumberFilter(field_name="mean", lookup_expr="gte", help_text="posterior mean at least")
    mean_max = django_filters.NumberFilter(field_name="mean", lookup_expr="lte", help_text="posterior mean at most")
    # The credible interval: low_min=0.9 finds prompts surely easy, high_max=0.1 surely hard.
    low_min = django_filters.NumberFilter(field_name="low", lookup_expr="gte", help_text="interval's low end at least")
    high_max = django_filters.NumberFilter(field_name="high", lookup_expr="lte", help_text="interval's high end at most")
    ordering = StableOrderingFilter(
        fields=("mean", "attempts", "last_step", "allocated", "prompt_id"),
        help_text="a field, '-' first for descending, comma-separated for several; ties by prompt id",
    )

    class Meta:
        model = RunPromptDifficulty
        fields = ["mean_min", "mean_max", "low_min", "high_max"]


class SampleFilter(django_filters.FilterSet):
    step = IntegerFilter(field_name="step", help_text="one step's samples")
    split = django_filters.ChoiceFilter(choices=[("train", "train"), ("test", "test")], help_text="train or test")

    class Meta:
        model = RunSample
        fields = ["step", "split"]


class RunSampleFilter(SampleFilter):
    prompt_id = django_filters.CharFilter(field_name="prompt_id", help_text="one prompt's samples")

    class Meta(SampleFilter.Meta):
        fields = [*SampleFilter.Meta.fields, "prompt_id"]


class RunScoped:
    """A list under /api/runs/<run_id>/: the run must be one the user may see."""

    kwargs: dict

    def visible_run(self) -> Run:
        try:
            return selectors.get_visible_run(self.request.user, self.kwargs["run_id"])
        except Run.DoesNotExist:
            raise NotFound("no such run") from None


class PromptDifficultyList(RunScoped, generics.ListAPIView):
    """The run's difficulty store, one row per prompt: attempts, successes, the Beta
    posterior of its pass rate (mean and credible interval), the last step that rolled it
    out and the rollouts allocated to it there. Sortable with `?ordering=`, filtered by
    mean and interval."""

    serializer_class = PromptDifficultySerializer
    filterset_class = PromptDifficultyFilter
    queryset = RunPromptDifficulty.objects.none()  # for the schema only; requests use get_queryset

    def get_queryset(self) -> QuerySet[RunPromptDifficulty]:
        return selectors.prompt_difficulties(self.visible_run())


class RunSampleList(RunScoped, generics.ListAPIView):
    """The run's kept samples, newest step first (`?step=` one step, `?prompt_id=` one
    prompt, `?split=`): response text, reward, length, status and the policy versions
    that sampled it. Only the newest ROLLYARD_SAMPLE_STEPS_KEPT steps are kept."""

    serializer_class = SampleSerializer
    filterset_class = RunSampleFilter
    queryset = RunSample.objects.none()

    def get_queryset(self) -> QuerySet[RunSample]:
        return selectors.run_samples(self.visible_run())


class PromptSampleList(RunScoped, generics.ListAPIView):
    """One prompt's kept samples in the run, newest step first (`?step=` one step)."""

    serializer_class = SampleSerializer
    filterset_class = SampleFilter
    queryset = RunSample.objects.none()

    def get_queryset(self) -> QuerySet[RunSample]:
        prompt_id = self.kwargs["prompt_id"]
        if NUL in prompt_id:  # the middleware checks query strings, not paths
            raise ValidationError({"prompt_id": [NUL_REASON]})
        return selectors.run_samples(self.visible_run(), prompt_id=prompt_id)


class PassRateHeatmap(RunScoped, APIView):
    @extend_schema(
        parameters=[HeatmapQuerySerializer],
        responses={200: OpenApiTypes.OBJECT},
        description='{"by", "edges": [buckets + 1], "steps": [first step of each column], '
        '"attempts", "successes", "pass_rate": [bucket][column] (null: no attempts)}',
    )
    def get(self, request: Request, run_id: int) -> Response:
        """Pass rate by difficulty bucket over steps, from the run's per-step prompt results."""
        query = HeatmapQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(selectors.pass_rate_heatmap(self.visible_run(), **query.validated_data))
