"""Query filters of the runs list: ?team=&status=&owner=&name=&created_after=&created_before=."""

from datetime import UTC

import django_filters
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from accounts.permissions import find_team
from runs.models import Run, RunStatus


class UtcIsoDateTimeField(django_filters.fields.IsoDateTimeField):
    """ISO 8601 with any offset Python accepts (up to ±23:59), compared in UTC: PostgreSQL
    refuses offsets past ±15:59 with a DataError (a 500), and a date at the calendar's edge
    may have no UTC equivalent (a 400 naming the field)."""

    def clean(self, value):
        moment = super().clean(value)
        try:
            return moment.astimezone(UTC) if moment is not None else None
        except OverflowError:
            raise ValidationError("out of range once converted to UTC", code="invalid") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class RunFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(method="filter_team", help_text="the team's id or name")
    # distinct=False: a column of the run itself can't repeat rows, and SELECT DISTINCT over
    # every column (a count of it too) costs more than the rest of the page.
    status = django_filters.MultipleChoiceFilter(choices=RunStatus.choices, distinct=False, help_text="repeat for several")
    owner = django_filters.CharFilter(field_name="owner__username", help_text="the owner's username")
    name = django_filters.CharFilter(field_name="name", lookup_expr="icontains", help_text="part of the run's name")
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Run
        fields = ["team", "status", "owner", "name", "created_after", "created_before"]

    def filter_team(self, runs: QuerySet[Run], name: str, value: str) -> QuerySet[Run]:
        team = find_team(self.request.user, value)
        return runs.filter(team=team) if team is not None else runs.none()
