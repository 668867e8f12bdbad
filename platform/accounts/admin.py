"""Site admins manage teams, their members and users' API tokens here."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts import services
from accounts.models import ApiToken, Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.action(description="Revoke the selected tokens")
def revoke_tokens(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
    tokens = list(queryset.filter(revoked_at__isnull=True))
    for token in tokens:
        services.revoke_token(token)
    modeladmin.message_user(request, f"revoked {len(tokens)} token(s)", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their users (API, CLI), who alone see the secret; here they
    can only be inspected and revoked."""

    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["user", "name", "prefix", "digest", "created_at", "last_used_at", "revoked_at"]
    actions = [revoke_tokens]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
