from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts.api.views import ApiTokenViewSet, MeView, TeamMembersView, TeamMemberView, TeamViewSet

app_name = "accounts-api"

router = SimpleRouter()
router.register("tokens", ApiTokenViewSet, basename="token")
router.register("teams", TeamViewSet, basename="team")

urlpatterns = [
    path("me/", MeView.as_view(), name="me"),
    path("teams/<int:team_id>/members/", TeamMembersView.as_view(), name="team-members"),
    path("teams/<int:team_id>/members/<int:user_id>/", TeamMemberView.as_view(), name="team-member"),
    *router.urls,
]
