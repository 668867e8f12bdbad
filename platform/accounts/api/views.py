"""REST endpoints of accounts: who am I, my teams and their members, my API tokens.

Teams the user is not in answer 404, like missing ones; changing a team's members needs
its admin role (or staff), and the 403 says so."""

from django.db.models import OuterRef, QuerySet, Subquery
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.exceptions import PermissionDenied as ApiPermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.api.serializers import (
    ApiTokenSerializer,
    MemberAddSerializer,
    MemberRoleSerializer,
    MembershipSerializer,
    MeSerializer,
    NewApiTokenSerializer,
    TeamSerializer,
)
from accounts.models import ApiToken, Membership, Role, Team
from accounts.permissions import require_role, teams_of


def teams_with_my_role(user) -> QuerySet[Team]:
    """The user's teams (every team for staff), each annotated with `my_role`."""
    my_role = Membership.objects.filter(team=OuterRef("pk"), user=user).values("role")[:1]
    return teams_of(user).annotate(my_role=Subquery(my_role)).order_by("name", "id")


def visible_team_or_404(user, team_id: int) -> Team:
    team = teams_of(user).filter(pk=team_id).first()
    if team is None:
        raise NotFound("no such team")
    return team


class MeView(APIView):
    @extend_schema(responses={200: MeSerializer})
    def get(self, request: Request) -> Response:
        """The signed-in user and their teams with their role in each."""
        user = request.user
        teams = teams_with_my_role(user).filter(memberships__user=user)
        body = {"id": user.pk, "username": user.get_username(), "email": user.email, "is_staff": user.is_staff}
        return Response(MeSerializer({**body, "teams": teams}).data)


class TeamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Your teams with your role in each (staff see every team). Creating teams is for staff."""

    serializer_class = TeamSerializer
    queryset = Team.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self) -> QuerySet[Team]:
        return teams_with_my_role(self.request.user)

    def perform_create(self, serializer: TeamSerializer) -> None:
        if not self.request.user.is_staff:
            raise ApiPermissionDenied("only site staff create teams")
        serializer.save()


class TeamMembersView(generics.ListAPIView):
    """GET: the team's members (any member may read). POST {user, role}: add a member or
    change their role (team admins and staff)."""

    serializer_class = MembershipSerializer
    queryset = Membership.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self) -> QuerySet[Membership]:
        team = visible_team_or_404(self.request.user, self.kwargs["team_id"])
        return team.memberships.select_related("user").order_by("user__username", "id")

    @extend_schema(request=MemberAddSerializer, responses={201: MembershipSerializer})
    def post(self, request: Request, team_id: int) -> Response:
        team = visible_team_or_404(request.user, team_id)
        require_role(request.user, team, Role.ADMIN, "manage members")
        body = MemberAddSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = services.add_member(team, body.validated_data["user"], Role(body.validated_data["role"]))
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


class TeamMemberView(APIView):
    """One member of a team: read (any member), change role or remove (team admins, staff).
    A team always keeps one admin: removing or demoting the last one answers 409."""

    def _membership(self, request: Request, team_id: int, user_id: int) -> Membership:
        team = visible_team_or_404(request.user, team_id)
        membership = team.memberships.select_related("user", "team").filter(user_id=user_id).first()
        if membership is None:
            raise NotFound("no such member of this team")
        return membership

    @extend_schema(responses={200: MembershipSerializer})
    def get(self, request: Request, team_id: int, user_id: int) -> Response:
        return Response(MembershipSerializer(self._membership(request, team_id, user_id)).data)

    @extend_schema(request=MemberRoleSerializer, responses={200: MembershipSerializer})
    def patch(self, request: Request, team_id: int, user_id: int) -> Response:
        membership = self._membership(request, team_id, user_id)
        require_role(request.user, membership.team, Role.ADMIN, "manage members")
        body = MemberRoleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = services.change_role(membership, Role(body.validated_data["role"]))
        return Response(MembershipSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, team_id: int, user_id: int) -> Response:
        membership = self._membership(request, team_id, user_id)
        require_role(request.user, membership.team, Role.ADMIN, "manage members")
        services.remove_member(membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Your API tokens, newest first. The secret is shown once, in the answer to POST;
    DELETE revokes (the token stays listed, inactive). Another user's token answers 404."""

    serializer_class = ApiTokenSerializer
    queryset = ApiToken.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self) -> QuerySet[ApiToken]:
        return ApiToken.objects.filter(user=self.request.user).order_by("-created_at", "-id")

    @extend_schema(request=ApiTokenSerializer, responses={201: NewApiTokenSerializer})
    def create(self, request: Request) -> Response:
        body = ApiTokenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        token, secret = services.create_token(request.user, body.validated_data["name"])
        token.secret = secret
        return Response(NewApiTokenSerializer(token).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        services.revoke_token(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
