"""REST endpoints of pools, quotas, the queue and usage: parse, call a selector or a
service, shape the answer. Anyone signed in reads; only site admins write (403 naming
why, from quotas.services.check_can_manage_quotas)."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from quotas import selectors, services
from quotas.api.serializers import (
    PoolSerializer,
    QueueEntrySerializer,
    QueueQuerySerializer,
    QuotaSerializer,
    UsageQuerySerializer,
    UsageRowSerializer,
)
from quotas.models import Pool, Quota


class StaffWritesOnly(permissions.BasePermission):
    """Reads for every signed-in user; writes refused (403 with the reason) unless staff.
    Checked before the body is validated, so a non-admin learns the rule, not a field error."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method not in permissions.SAFE_METHODS:
            services.check_can_manage_quotas(request.user)
        return True


class LimitsViewSet(viewsets.ModelViewSet):
    """Writes of pools and quotas go through quotas.services (validation, admission sweep)."""

    permission_classes = [permissions.IsAuthenticated, StaffWritesOnly]

    def perform_create(self, serializer: serializers.ModelSerializer) -> None:
        serializer.instance = self._save(serializer.Meta.model(**serializer.validated_data))

    def perform_update(self, serializer: serializers.ModelSerializer) -> None:
        for field, value in serializer.validated_data.items():
            setattr(serializer.instance, field, value)
        self._save(serializer.instance)

    def perform_destroy(self, instance: Pool | Quota) -> None:
        services.delete_pool_or_quota(self.request.user, instance)  # PoolInUse: a 409 (rollyard.errors)

    def _save(self, limits: Pool | Quota) -> Pool | Quota:
        try:
            return services.save_pool_or_quota(self.request.user, limits)
        except DjangoValidationError as invalid:
            raise serializers.ValidationError(invalid.message_dict) from None


class PoolViewSet(LimitsViewSet):
    """Accelerator pools. Deleting a pool with runs on record answers 409: deactivate it."""

    serializer_class = PoolSerializer

    def get_queryset(self) -> QuerySet[Pool]:
        return selectors.pools()


class QuotaViewSet(LimitsViewSet):
    """Quotas of the user's teams and of the user; every quota for staff."""

    serializer_class = QuotaSerializer

    def get_queryset(self) -> QuerySet[Quota]:
        return selectors.visible_quotas(self.request.user)


class QueueView(APIView):
    @extend_schema(parameters=[QueueQuerySerializer], responses={200: QueueEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        """Queued runs of the user's teams, each with its place in its pool's queue and
        the reason it waits (the same rules admission applies)."""
        query = QueueQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        entries = selectors.queue(request.user, query.validated_data.get("pool"))
        return Response({"queue": QueueEntrySerializer(entries, many=True).data})


class UsageView(APIView):
    @extend_schema(parameters=[UsageQuerySerializer], responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        """GPU-hours per team and per user over [since, until], for the user's teams (all
        teams for staff): {"since", "until", "teams": [...], "users": [...]}."""
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        rows = selectors.usage(request.user, params["since"], params["until"], params.get("pool"))
        return Response(
            {
                "since": params["since"],
                "until": params["until"],
                "teams": UsageRowSerializer(rows["teams"], many=True).data,
                "users": UsageRowSerializer(rows["users"], many=True).data,
            }
        )
