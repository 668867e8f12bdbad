"""In a real browser (Debian's chromium, headless, Playwright), against the live stack:
the runs list follows a run's progress and status over /ws/runs/ without a reload, a run
a teammate launches shows as "1 new run: show" rather than moving the rows, and cancel
on the run page asks first (no: nothing happens; yes: cancelled)."""

import tempfile

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect, sync_playwright

from accounts.models import Role
from accounts.services import add_member, default_team
from engine.events import Metrics
from quotas.models import Accelerator, Allocation, Pool
from runs import lifecycle, live, telemetry
from runs.launch import create_run
from runs.models import Run, RunAttempt, RunStatus
from tests.browser.test_twin_queue_quotas import TINY, in_thread, orm_beside_playwright, signed_in  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture(autouse=True)
def fresh_progress_throttle(monkeypatch):
    """Run ids restart with every test database: an earlier test's run of the same id
    must not hold back this one's first progress frame."""
    monkeypatch.setattr(live, "_progress_sent_at", {})


def test_the_runs_list_follows_its_runs_and_cancel_asks_first(live_stack, chromium_path):
    lena = get_user_model().objects.create_user("lena", password="correct horse")
    mo = get_user_model().objects.create_user("mo", password="correct horse")
    team = default_team(lena)
    add_member(team, mo, Role.MEMBER)
    # Runs stored directly: one holding its pool's one slot for the whole test, so the
    # teammate's launch waits in that pool's queue and the worker trains nothing; the
    # followed one, which holds no slot (its finish frees nothing).
    pool = Pool.objects.create(name="one-slot", accelerator=Accelerator.CPU, capacity=1)
    holder = Run.objects.create(owner=lena, team=team, name="holder", status=RunStatus.RUNNING, total_steps=10, spec={})
    now = timezone.now()
    Allocation.objects.create(run=holder, pool=pool, team=team, user=lena, gpus=0, slots=1, requested_at=now, admitted_at=now)
    running = Run.objects.create(owner=lena, team=team, name="followed", status=RunStatus.RUNNING, total_steps=10, spec={})
    attempt = RunAttempt.objects.create(run=running, number=1, worker_host="test", worker_pid=1)

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser, page = signed_in(playwright, profile, chromium_path, live_stack.base_url, "/runs/", "lena")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=30_000)
        row = page.locator(f"tr[data-run-id='{running.pk}']")

        in_thread(telemetry.record_events, running.pk, attempt.pk, [Metrics(step=3, values={"reward/mean": 0.25})])
        expect(row.locator("[data-cell=progress] span")).to_have_text("3 / 10", timeout=10_000)
        expect(row.locator("[data-metric='reward/mean']")).to_have_text("0.250")
        expect(row.locator("[data-metric='acc/mean']")).to_have_text("—")

        launches: list[Run] = []
        in_thread(lambda: launches.append(create_run(mo, {**TINY, "name": "teammates"}, team=team, pool="one-slot")))
        launched = launches[0]
        expect(page.locator("#runs-new")).to_have_text("1 new run: show", timeout=10_000)
        assert page.locator("#runs-table tbody tr").count() == 2  # the rows did not move

        in_thread(lifecycle.transition, running.pk, RunStatus.SUCCEEDED, "done")
        expect(row.locator("[data-cell=status] .badge")).to_have_text("succeeded", timeout=10_000)
        page.click("#runs-new")
        expect(page.locator("#runs-table tbody tr").first).to_have_attribute("data-run-id", str(launched.pk))

        page.goto(f"{live_stack.base_url}/runs/{launched.pk}/")
        questions = []
        page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
        page.click("#run-cancel-button")
        expect(page.locator("#run-cancel-button")).to_have_text("Cancel run")
        assert questions == [f"Cancel run #{launched.pk} (teammates)? A running run stops after its current step."]
        assert Run.objects.get(pk=launched.pk).status == RunStatus.QUEUED
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#run-cancel-button")
        expect(page.locator("#run-status")).to_have_text("cancelled", timeout=10_000)
        browser.close()
    assert Run.objects.get(pk=launched.pk).status == RunStatus.CANCELLED
