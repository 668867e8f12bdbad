"""Who may do what with runs, through the API with real tokens: teams decide what a user
sees (another team's run is 404, never 403), roles decide what they may do (403 naming
the role needed)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.services import add_member
from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db

SMALL_SPEC = {"training": {"steps": 5}, "rollout": {"n": 4}}


# --- seeing ------------------------------------------------------------------------------------


def test_every_role_sees_the_teams_runs_and_nothing_of_other_teams(teams, make_run):
    ours = make_run(teams.member, "ours", team=teams.team)
    make_run(teams.outsider, "theirs", team=teams.other_team)

    for user in (teams.viewer, teams.member, teams.admin):
        body = teams.client(user).get("/api/runs/").json()
        assert [run["name"] for run in body["results"]] == ["ours"], user
        assert body["results"][0]["team"] == "ml"
        assert teams.client(user).get(f"/api/runs/{ours.id}/").status_code == 200


def test_another_teams_run_is_404_on_every_endpoint_like_a_missing_one(teams, make_run, error_of):
    theirs = make_run(teams.outsider, team=teams.other_team)
    client = teams.client(teams.admin)
    missing = theirs.id + 1000

    for run_id in (theirs.id, missing):
        for url in (f"/api/runs/{run_id}/", f"/api/runs/{run_id}/metrics/", f"/api/runs/{run_id}/events/"):
            response = client.get(url)
            assert response.status_code == 404, url
            assert error_of(response) == {"code": "not_found", "message": "No Run matches the given query.", "fields": {}}
        assert client.post(f"/api/runs/{run_id}/cancel/").status_code == 404
    assert Run.objects.get(pk=theirs.id).status == RunStatus.QUEUED


def test_leaving_a_team_hides_its_runs(teams, make_run):
    run = make_run(teams.member, team=teams.team)
    client = teams.client(teams.viewer)
    assert client.get(f"/api/runs/{run.id}/").status_code == 200
    teams.team.memberships.filter(user=teams.viewer).delete()
    assert client.get(f"/api/runs/{run.id}/").status_code == 404


def test_staff_see_every_teams_runs(teams, make_user, make_run):
    make_run(teams.member, "ours", team=teams.team)
    make_run(teams.outsider, "theirs", team=teams.other_team)
    staff = make_user("root", is_staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    names = {run["name"] for run in client.get("/api/runs/").json()["results"]}
    assert names == {"ours", "theirs"}


# --- launching --------------------------------------------------------------------------------------


def test_a_member_launches_into_a_team_named_by_name_or_id(teams):
    client = teams.client(teams.member)
    by_name = client.post("/api/runs/", {"spec": SMALL_SPEC, "team": "ml"}, format="json")
    by_id = client.post("/api/runs/", {"spec": SMALL_SPEC, "team": str(teams.team.pk)}, format="json")

    assert by_name.status_code == 201, by_name.content
    assert by_id.status_code == 201, by_id.content
    assert {by_name.json()["team"], by_id.json()["team"]} == {"ml"}
    assert Run.objects.filter(team=teams.team, owner=teams.member).count() == 2


def test_a_viewer_launching_is_refused_with_403_naming_the_role(teams, error_of):
    response = teams.client(teams.viewer).post("/api/runs/", {"spec": SMALL_SPEC, "team": "ml"}, format="json")

    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "permission_denied"
    assert "member role" in error["message"] and "'ml'" in error["message"] and "viewer" in error["message"]
    assert Run.objects.count() == 0


def test_a_viewer_launching_into_their_default_team_is_refused_too(teams):
    # The viewer's only team is "ml": no personal team appears for them.
    response = teams.client(teams.viewer).post("/api/runs/", {"spec": SMALL_SPEC}, format="json")
    assert response.status_code == 403
    assert Run.objects.count() == 0


def test_launching_into_another_or_unknown_team_names_the_field_without_leaking_it(teams, error_of):
    client = teams.client(teams.member)
    for team in ("other", str(teams.other_team.pk), "no-such-team", "9" * 30):
        response = client.post("/api/runs/", {"spec": SMALL_SPEC, "team": team}, format="json")
        assert response.status_code == 400, team
        assert error_of(response)["fields"] == {"team": [f"no team '{team}' among yours"]}
    assert Run.objects.count() == 0


# --- cancelling ----------------------------------------------------------------------------------------


def test_a_member_cancels_their_own_run_but_not_a_teammates(teams, make_run, error_of):
    own = make_run(teams.member, team=teams.team)
    teammates = make_run(teams.admin, team=teams.team)
    client = teams.client(teams.member)

    assert client.post(f"/api/runs/{own.id}/cancel/").json()["status"] == "cancelled"
    response = client.post(f"/api/runs/{teammates.id}/cancel/")
    assert response.status_code == 403
    assert "admin of team 'ml'" in error_of(response)["message"]
    assert Run.objects.get(pk=teammates.id).status == RunStatus.QUEUED


def test_a_team_admin_cancels_any_run_of_the_team(teams, make_run):
    run = make_run(teams.member, team=teams.team)
    response = teams.client(teams.admin).post(f"/api/runs/{run.id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


def test_a_viewer_cannot_cancel_even_a_run_they_once_launched(teams, make_run, error_of):
    # Demoted after launching: the role decides now, not ownership.
    run = make_run(teams.viewer, team=teams.team)
    response = teams.client(teams.viewer).post(f"/api/runs/{run.id}/cancel/")
    assert response.status_code == 403
    assert "member role" in error_of(response)["message"]


# --- the list's filters and pagination -----------------------------------------------------------------------


def test_the_list_filters_by_team_status_owner_name_and_creation_time(teams, make_run):
    add_member(teams.other_team, teams.member, Role.VIEWER)
    now = timezone.now()
    old = make_run(teams.member, "old sweep", team=teams.team, created_at=now - timedelta(days=3))
    running = make_run(teams.admin, "grpo running", team=teams.team, status=RunStatus.RUNNING)
    theirs = make_run(teams.outsider, "their sweep", team=teams.other_team, status=RunStatus.SUCCEEDED)
    client = teams.client(teams.member)

    def ids(**query) -> set[int]:
        response = client.get("/api/runs/", query)
        assert response.status_code == 200, response.content
        return {run["id"] for run in response.json()["results"]}

    assert ids() == {old.id, running.id, theirs.id}
    assert ids(team="other") == {theirs.id}
    assert ids(team=teams.team.pk) == {old.id, running.id}
    assert ids(status="running") == {running.id}
    assert ids(status=["running", "succeeded"]) == {running.id, theirs.id}
    assert ids(owner="ada") == {running.id}
    assert ids(name="SWEEP") == {old.id, theirs.id}
    assert ids(created_after=(now - timedelta(days=1)).isoformat()) == {running.id, theirs.id}
    assert ids(created_before=(now - timedelta(days=1)).isoformat()) == {old.id}
    assert ids(team="no-such-team") == set()


def test_a_bad_filter_value_is_a_400_naming_it(teams, error_of):
    response = teams.client(teams.member).get("/api/runs/", {"status": "sleeping"})
    assert response.status_code == 400
    assert "status" in error_of(response)["fields"]


def test_lists_page_with_limit_and_offset(teams, make_run):
    runs = [make_run(teams.member, f"run {index}", team=teams.team) for index in range(5)]
    client = teams.client(teams.member)

    first = client.get("/api/runs/", {"limit": 2}).json()
    assert first["count"] == 5
    assert [run["id"] for run in first["results"]] == [runs[4].id, runs[3].id]
    assert first["previous"] is None and "offset=2" in first["next"]
    last = client.get("/api/runs/", {"limit": 2, "offset": 4}).json()
    assert [run["id"] for run in last["results"]] == [runs[0].id]
    assert last["next"] is None


# --- the launch page follows the same rules ------------------------------------------------------------


def test_the_launch_page_offers_the_teams_a_user_may_launch_in(teams, client):
    add_member(teams.other_team, teams.member, Role.MEMBER)
    client.force_login(teams.member)

    form = client.get("/runs/new/").content.decode()
    assert '<option value="ml"' in form and '<option value="other"' in form

    response = client.post("/runs/new/", {"spec": "training: {steps: 2}", "team": "other"})
    assert response.status_code == 302
    assert Run.objects.get().team == teams.other_team


def test_a_viewer_launching_from_the_page_sees_the_role_needed_and_nothing_runs(teams, client):
    client.force_login(teams.viewer)
    response = client.post("/runs/new/", {"spec": "training: {steps: 2}"})
    assert response.status_code == 400
    assert "member role" in response.content.decode()
    assert Run.objects.count() == 0


def test_the_launch_page_refuses_another_teams_name_as_not_found(teams, client):
    client.force_login(teams.member)
    response = client.post("/runs/new/", {"spec": "training: {steps: 2}", "team": "other"})
    assert response.status_code == 404
    assert Run.objects.count() == 0
