"""Server-rendered pages: login, the runs list, the launch form, the run page, the admin."""

import re

import pytest
from django.test import Client

from runs import launch
from runs.models import MetricPoint, Run, RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_alice(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.mark.parametrize("url", ["/runs/", "/runs/new/", "/runs/1/"])
def test_pages_need_a_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_the_root_leads_to_the_runs_list(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/runs/"


def test_the_login_form_logs_in_and_returns_to_the_page_asked_for(client, alice):
    form = client.get("/accounts/login/?next=/runs/").content.decode()
    assert 'name="username"' in form and 'name="password"' in form and 'type="submit"' in form

    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-pw", "next": "/runs/"})

    assert response.status_code == 302 and response["Location"] == "/runs/"
    assert client.get("/runs/").status_code == 200


def test_the_list_shows_own_runs_with_status_progress_and_latest_metrics(browser_alice, alice, bob, make_run):
    mine = make_run(alice, "mine", status=RunStatus.RUNNING, total_steps=30, current_step=12,
                    summary={"reward/mean": 0.4567, "acc/mean": 0.25})
    make_run(bob, "not-mine")

    page = browser_alice.get("/runs/").content.decode()

    assert f'href="/runs/{mine.id}/"' in page and "not-mine" not in page
    assert "12 / 30" in page
    assert "0.457" in page and "0.250" in page
    assert 'data-status="running"' in page


def test_the_launch_form_is_prefilled_with_the_engine_defaults(browser_alice):
    page = browser_alice.get("/runs/new/").content.decode()
    assert "prompts_per_step: 16" in page
    assert "clip_eps_low: 0.2" in page
    assert "grpo" in page  # the registry's choices


def test_launching_from_the_form_creates_the_run_and_opens_its_page(browser_alice, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_alice.post("/runs/new/", {"spec": "name: from the form\ntraining:\n  steps: 3\n"})

    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.id}/"
    assert (run.name, run.total_steps) == ("from the form", 3)
    assert enqueued == [run.id]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("rollout:\n  n: 0\n", "rollout.n"),
        ('{"rollout": {"n": 4, "typo": 1}}', "rollout.typo"),
        ("dataset:\n  name: no-such-task\n", "dataset.name"),
        ("rollout: [unclosed\n", "spec"),
    ],
)
def test_a_bad_spec_shows_each_problem_by_field_and_launches_nothing(browser_alice, text, field):
    response = browser_alice.post("/runs/new/", {"spec": text})

    assert response.status_code == 400
    page = response.content.decode()
    assert f'data-field="{field}"' in page
    assert 'id="spec-errors"' in page
    assert Run.objects.count() == 0
    # What the user typed is kept for correcting.
    assert "unclosed" in page if "unclosed" in text else True


def test_clone_prefills_the_form_with_an_earlier_runs_spec(browser_alice, alice):
    run = launch.create_run(alice, {"name": "original", "rollout": {"n": 5}})
    page = browser_alice.get(f"/runs/new/?from={run.id}").content.decode()
    assert "n: 5" in page and "name: original" in page


def test_the_run_page_has_live_charts_and_plotly_served_by_the_app(browser_alice, alice):
    run = launch.create_run(alice, {"name": "watched"})
    page = browser_alice.get(f"/runs/{run.id}/").content.decode()

    for element in ("run-status", "run-progress", "run-eta", "run-cancel", "run-spec", "run-log", "chart-reward",
                    "chart-length", "chart-histogram", "chart-heatmap", "chart-prompts", "chart-timeline"):
        assert f'id="{element}"' in page, element
    assert 'id="chart-reward" data-points="0"' in page
    assert 'id="run-config"' in page  # the page's JSON configuration
    # Every chart links to its raw numbers.
    assert "/api/runs/%d/metrics/?name=reward%%2Fmean" % run.id in page

    script = re.search(r'<script src="([^"]*plotly[^"]*)"', page)
    assert script, "no plotly script tag"
    assert not script.group(1).startswith(("http:", "https:", "//")), "plotly must come from the app, not a CDN"
    served = browser_alice.get(script.group(1))
    assert served.status_code == 200
    assert b"plotly" in b"".join(served.streaming_content)[:2000].lower()
    assert browser_alice.get(re.search(r'<script src="([^"]*run\.js)"', page).group(1)).status_code == 200


def test_another_users_run_page_is_not_found(browser_alice, bob, make_run):
    assert browser_alice.get(f"/runs/{make_run(bob).id}/").status_code == 404


def test_the_cancel_button_cancels_a_queued_run(browser_alice, alice):
    run = launch.create_run(alice, {})
    response = browser_alice.post(f"/runs/{run.id}/cancel/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "cancelled"
    # Again: refused with a message, not an error page.
    follow = browser_alice.post(f"/runs/{run.id}/cancel/", follow=True)
    assert follow.status_code == 200 and "nothing to cancel" in follow.content.decode()


def test_the_admin_lists_runs_and_keeps_telemetry_read_only(staff, alice):
    run = launch.create_run(alice, {"name": "admin-visible"})
    MetricPoint.objects.create(run=run, name="reward/mean", step=1, wall_time=0.0, value=1.0)
    client = Client()
    client.force_login(staff)

    assert "admin-visible" in client.get("/admin/runs/run/?status__exact=queued&q=alice").content.decode()
    detail = client.get(f"/admin/runs/run/{run.id}/change/").content.decode()
    assert "resolved spec" in detail.lower() and "clip_eps_low" in detail
    assert client.get("/admin/runs/metricpoint/").status_code == 200
    assert client.get("/admin/runs/metricpoint/add/").status_code == 403
    point = MetricPoint.objects.get()
    assert client.post(f"/admin/runs/metricpoint/{point.id}/change/", {"value": 2}).status_code == 403

    client.post("/admin/runs/run/", {"action": "cancel_runs", "_selected_action": [run.id]})
    assert Run.objects.get(pk=run.id).status == "cancelled"
