"""Teams through the API: who I am and my teams with my role, reading a team's members,
and managing them (team admins and staff only; a team always keeps an admin)."""

import pytest
from rest_framework.test import APIClient

from accounts.models import Membership, Role, Team
from accounts.permissions import PermissionDenied, find_team, require_role, role_in, teams_of, visible_to

pytestmark = pytest.mark.django_db


def members_of(team: Team) -> dict[str, str]:
    return dict(team.memberships.values_list("user__username", "role"))


def staff_client(make_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(make_user("root", is_staff=True))
    return client


# --- reading ---------------------------------------------------------------------------------------


def test_me_lists_my_teams_with_my_role(teams):
    body = teams.client(teams.viewer).get("/api/me/").json()
    assert body["username"] == "vic" and body["is_staff"] is False
    assert [(team["name"], team["role"]) for team in body["teams"]] == [("ml", "viewer")]


def test_teams_lists_only_mine_and_another_team_is_404(teams):
    client = teams.client(teams.member)
    body = client.get("/api/teams/").json()
    assert body["count"] == 1
    assert [(team["name"], team["role"]) for team in body["results"]] == [("ml", "member")]
    assert client.get(f"/api/teams/{teams.team.pk}/").status_code == 200
    assert client.get(f"/api/teams/{teams.other_team.pk}/").status_code == 404
    assert client.get(f"/api/teams/{teams.other_team.pk}/members/").status_code == 404


def test_any_member_reads_the_member_list(teams):
    body = teams.client(teams.viewer).get(f"/api/teams/{teams.team.pk}/members/").json()
    assert [(row["username"], row["role"]) for row in body["results"]] == [
        ("ada", "admin"), ("max", "member"), ("vic", "viewer"),
    ]  # fmt: skip
    one = teams.client(teams.viewer).get(f"/api/teams/{teams.team.pk}/members/{teams.admin.pk}/")
    assert one.json()["role"] == "admin"


# --- managing members ---------------------------------------------------------------------------------


def test_a_team_admin_adds_promotes_and_removes_members(teams, make_user):
    newcomer = make_user("nia")
    client = teams.client(teams.admin)
    url = f"/api/teams/{teams.team.pk}/members/"

    added = client.post(url, {"user": "nia", "role": "viewer"}, format="json")
    assert added.status_code == 201, added.content
    assert added.json()["username"] == "nia"
    promoted = client.patch(f"{url}{newcomer.pk}/", {"role": "member"}, format="json")
    assert promoted.json()["role"] == "member"
    assert client.delete(f"{url}{newcomer.pk}/").status_code == 204
    assert "nia" not in members_of(teams.team)


def test_members_and_viewers_cannot_manage_members(teams, error_of):
    url = f"/api/teams/{teams.team.pk}/members/"
    for user in (teams.member, teams.viewer):
        client = teams.client(user)
        responses = [
            client.post(url, {"user": "olga", "role": "admin"}, format="json"),
            client.patch(f"{url}{user.pk}/", {"role": "admin"}, format="json"),
            client.delete(f"{url}{teams.admin.pk}/"),
        ]
        for response in responses:
            assert response.status_code == 403
            assert "admin role" in error_of(response)["message"] and "'ml'" in error_of(response)["message"]
    assert members_of(teams.team) == {"ada": "admin", "max": "member", "vic": "viewer"}


def test_another_teams_admin_gets_404_not_403(teams):
    client = teams.client(teams.outsider)
    url = f"/api/teams/{teams.team.pk}/members/"
    assert client.post(url, {"user": "olga", "role": "admin"}, format="json").status_code == 404
    assert client.delete(f"{url}{teams.member.pk}/").status_code == 404
    assert "olga" not in members_of(teams.team)


def test_the_last_admin_cannot_leave_or_be_demoted(teams, error_of):
    client = teams.client(teams.admin)
    url = f"/api/teams/{teams.team.pk}/members/{teams.admin.pk}/"

    demote = client.patch(url, {"role": "member"}, format="json")
    assert demote.status_code == 409
    assert "last admin" in error_of(demote)["message"]
    assert client.delete(url).status_code == 409
    assert members_of(teams.team)["ada"] == "admin"

    client.post(f"/api/teams/{teams.team.pk}/members/", {"user": "max", "role": "admin"}, format="json")
    assert client.delete(url).status_code == 204


def test_adding_an_unknown_user_or_role_names_the_field(teams, error_of):
    client = teams.client(teams.admin)
    url = f"/api/teams/{teams.team.pk}/members/"
    unknown = client.post(url, {"user": "nobody", "role": "member"}, format="json")
    assert unknown.status_code == 400
    assert error_of(unknown)["fields"] == {"user": ["no active user 'nobody'"]}
    bad_role = client.post(url, {"user": "olga", "role": "owner"}, format="json")
    assert bad_role.status_code == 400 and "role" in error_of(bad_role)["fields"]


def test_only_staff_create_teams_and_staff_manage_any_team(teams, make_user, error_of):
    refused = teams.client(teams.admin).post("/api/teams/", {"name": "new"}, format="json")
    assert refused.status_code == 403
    assert not Team.objects.filter(name="new").exists()

    staff = staff_client(make_user)
    assert staff.post("/api/teams/", {"name": "new"}, format="json").status_code == 201
    duplicate = staff.post("/api/teams/", {"name": "new"}, format="json")
    assert duplicate.status_code == 400 and "name" in error_of(duplicate)["fields"]
    added = staff.post(f"/api/teams/{teams.other_team.pk}/members/", {"user": "max"}, format="json")
    assert added.status_code == 201 and added.json()["role"] == "member"


# --- the rules themselves (accounts.permissions) ----------------------------------------------------------------


def test_roles_are_ordered_and_staff_may_do_everything(teams, make_user):
    assert list(teams_of(teams.viewer)) == [teams.team]
    assert list(teams_of(teams.viewer, Role.MEMBER)) == []
    assert role_in(teams.member, teams.team) == Role.MEMBER
    assert role_in(teams.outsider, teams.team) is None
    require_role(teams.admin, teams.team, Role.MEMBER)
    with pytest.raises(PermissionDenied, match="you are not a member"):
        require_role(teams.outsider, teams.team, Role.VIEWER, "read runs")
    staff = make_user("root", is_staff=True)
    require_role(staff, teams.team, Role.ADMIN)
    assert set(teams_of(staff)) == {teams.team, teams.other_team}
    assert set(visible_to(teams.member, Membership.objects.all())) == set(teams.team.memberships.all())
    assert find_team(teams.member, "other") is None
    assert find_team(staff, str(teams.other_team.pk)) == teams.other_team
