"""REST endpoints of a run's alerts and metric-threshold rules, mixed into RunViewSet.
Seeing them needs only seeing the run; adding or deleting a rule needs the right to
change it (runs.alerts: its owner or a team admin, 403 otherwise)."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from runs import alerts
from runs.api.serializers import AlertRuleSerializer, AlertSerializer
from runs.models import AlertRule


class RunAlertActions:
    @extend_schema(responses={200: AlertSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=None)
    def alerts(self, request: Request, pk: str) -> Response:
        """The run's alerts, newest first, open and resolved: dead, stuck, idle and metric
        (`rule` names the rule of a metric alert)."""
        return Response(AlertSerializer(self.get_object().alerts.order_by("-opened_at", "-id"), many=True).data)

    @extend_schema(methods=["get"], responses={200: AlertRuleSerializer(many=True)})
    @extend_schema(
        methods=["post"],
        request=AlertRuleSerializer,
        responses={201: AlertRuleSerializer},
        description="Add a rule: `metric` (a name of docs/metrics.md), `comparison` (above | below), a finite "
        "`threshold`, `consecutive` reported steps that must cross (default 1), `emails` to mail besides the "
        "run's owner. 400 names each bad field; 403 for a user who may not change the run.",
    )
    @action(detail=True, methods=["get", "post"], url_path="alert-rules", pagination_class=None)
    def alert_rules(self, request: Request, pk: str) -> Response:
        """The run's metric-threshold rules, each with its open alert."""
        run = self.get_object()
        if request.method == "POST":
            rule = alerts.add_rule(request.user, run, request.data)
            return Response(AlertRuleSerializer(rule).data, status=status.HTTP_201_CREATED)
        return Response(AlertRuleSerializer(run.alert_rules.select_related("created_by"), many=True).data)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"alert-rules/(?P<rule_id>\d+)", url_name="alert-rule")
    def delete_alert_rule(self, request: Request, pk: str, rule_id: str) -> Response:
        """Delete a rule: its open alert is resolved; its alerts stay in the run's list."""
        run = self.get_object()
        try:
            rule = run.alert_rules.get(pk=int(rule_id))
        except AlertRule.DoesNotExist:
            raise NotFound(f"run #{run.pk} has no alert rule #{rule_id}") from None
        alerts.delete_rule(request.user, rule)
        return Response(status=status.HTTP_204_NO_CONTENT)
