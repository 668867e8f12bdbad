"""Query filters of the runs list: ?team=&status=&owner=&name=&created_after=&created_before=."""

import django_filters
from django.db.models import QuerySet

from accounts.permissions import find_team
from runs.models import Run, RunStatus


class RunFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(method="filter_team", help_text="the team's id or name")
    status = django_filters.MultipleChoiceFilter(choices=RunStatus.choices, help_text="repeat for several")
    owner = django_filters.CharFilter(field_name="owner__username", help_text="the owner's username")
    name = django_filters.CharFilter(field_name="name", lookup_expr="icontains", help_text="part of the run's name")
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Run
        fields = ["team", "status", "owner", "name", "created_after", "created_before"]

    def filter_team(self, runs: QuerySet[Run], name: str, value: str) -> QuerySet[Run]:
        team = find_team(self.request.user, value)
        return runs.filter(team=team) if team is not None else runs.none()
