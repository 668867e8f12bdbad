"""In a real browser (Debian's chromium, headless, Playwright), against the live stack:
the one-click GRPO twin from a run's page landing on the comparison of the two; the
queue page showing why a run waits, and the reason changing as the pool does, pushed over
its websocket; the quota page following a run's finish over its own; both pages moving
waits and GPU-hours used on by their own clocks between pushes."""

import tempfile
import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect, sync_playwright

from accounts.services import default_team
from engine.spec import RunSpec
from quotas.models import Accelerator, Allocation, Pool, Quota
from quotas.services import save_pool_or_quota
from runs.launch import create_run
from runs.lifecycle import request_cancel
from runs.models import Run, RunStatus
from tests.browser.test_dashboards import shoot
from tests.browser.test_live_run_page import CHROMIUM_ARGS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(600)]

TINY = {"training": {"steps": 2, "eval_every": 0}, "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 16},
        "dataset": {"eval_size": 8}}


def in_thread(function, *args) -> None:
    """Call a service that publishes (async_to_sync) outside Playwright's event loop."""
    from django.db import connection

    def call():
        try:
            function(*args)
        finally:
            connection.close()

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()


def signed_in(playwright, profile: str, chromium_path: str, base_url: str, path: str, username: str):
    browser = playwright.chromium.launch_persistent_context(
        profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900},
    )
    page = browser.new_page()
    page.goto(f"{base_url}{path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "correct horse")
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(f"**{path}", timeout=30_000)
    return browser, page


@pytest.fixture(autouse=True)
def orm_beside_playwright(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM reads between its
    # steps are plain blocking calls, which Django would otherwise refuse there.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def test_the_grpo_twin_button_launches_it_and_lands_on_the_comparison(live_stack, chromium_path):
    user = get_user_model().objects.create_user("tess", password="correct horse")
    # A running APRIL run, stored directly, holding the one run slot of its pool: the twin
    # goes to the same pool and waits there, so the worker never has to train it.
    pool = Pool.objects.create(name="one-slot", accelerator=Accelerator.CPU, capacity=1)
    original = Run.objects.create(
        owner=user, team=default_team(user), name="april-run", status=RunStatus.RUNNING, total_steps=2,
        spec=RunSpec.model_validate({**TINY, "rollout": {**TINY["rollout"], "strategy": "april"}, "seed": 5}).model_dump(
            mode="json"),
    )
    now = timezone.now()
    Allocation.objects.create(run=original, pool=pool, team=original.team, user=user, gpus=0, slots=1,
                              requested_at=now, admitted_at=now)
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser, page = signed_in(playwright, profile, chromium_path, live_stack.base_url, f"/runs/{original.pk}/", "tess")
        expect(page.locator("#run-twin")).to_contain_text("APRIL off")
        page.click("#run-twin-button")
        page.wait_for_url("**/runs/compare/**", timeout=30_000)
        twin = Run.objects.get(twin_of=original)
        assert page.url.endswith(f"/runs/compare/?run={original.pk}&run={twin.pk}")
        assert twin.name == "april-run · GRPO twin" and twin.spec["seed"] == 5
        differing = page.locator("#compare-diff tbody tr").evaluate_all("rows => rows.map(r => r.dataset.path)")
        assert {"name", "rollout.strategy"} <= set(differing) and "seed" not in differing
        assert "rollout.max_new_tokens" not in differing and "training.steps" not in differing
        expect(page.locator(".messages")).to_contain_text(f"launched #{twin.pk}")
        browser.close()
    assert Run.objects.get(pk=twin.pk).status == RunStatus.QUEUED  # launched like any run: into the queue
    in_thread(request_cancel, user, twin)
    assert Run.objects.get(pk=twin.pk).status == RunStatus.CANCELLED


def test_the_queue_page_shows_why_a_run_waits_and_the_quota_page_follows_a_finish(live_stack, chromium_path):
    user = get_user_model().objects.create_user("quinn", password="correct horse")
    staff = get_user_model().objects.create_user("sam", password="correct horse", is_staff=True)
    team = default_team(user)
    pool = Pool.objects.create(name="h100", accelerator=Accelerator.GPU, gpu_type="H100", capacity=1)
    Quota.objects.create(pool=pool, team=team, max_concurrent_gpus=1, gpu_hours_per_period=10, period_days=7)
    # A running run holds the pool's one GPU (stored directly: no worker trains it).
    now = timezone.now()
    blocker = Run.objects.create(owner=user, team=team, name="holds-the-gpu", status=RunStatus.RUNNING, spec={},
                                 total_steps=2, started_at=now - timedelta(hours=1))
    Allocation.objects.create(run=blocker, pool=pool, team=team, user=user, gpus=1, slots=1,
                              requested_at=now - timedelta(hours=1), admitted_at=now - timedelta(hours=1))
    waiting = create_run(user, {**TINY, "name": "wants-a-gpu", "resources": {"gpus": 1}}, pool="h100")

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser, page = signed_in(playwright, profile, chromium_path, live_stack.base_url, "/queue/", "quinn")
        row = page.locator(f"#queue-table tr[data-run-id='{waiting.pk}']")
        # Behind the team's quota: one GPU at once, which the blocker holds.
        expect(row.locator(".reason")).to_contain_text("quota on h100: 1/1 GPU in use (this run needs 1)", timeout=15_000)
        expect(page.locator("#queue-live")).to_have_attribute("data-state", "live", timeout=15_000)
        shoot(page, "queue")
        # A site admin closes the pool: its socket pushes the page the new reason, without a
        # reload and with no polling (the page fetches nothing more after it loaded).
        fetched = []

        def note(request) -> None:
            if request.resource_type in ("fetch", "xhr", "document"):
                fetched.append(request.url)

        page.on("request", note)
        pool.active = False
        in_thread(save_pool_or_quota, staff, pool)
        expect(row.locator(".reason")).to_contain_text("pool h100 is inactive", timeout=5_000)
        expect(page.locator("#pools-table tr[data-pool='h100']")).to_contain_text("inactive")
        assert fetched == []

        page.goto(f"{live_stack.base_url}/queue/quotas/")
        expect(page.locator("#quotas-live")).to_have_attribute("data-state", "live", timeout=15_000)
        quota_row = page.locator("#quota-table tbody tr").first
        expect(quota_row.locator(".concurrent")).to_have_text("1 / 1 GPU")
        expect(quota_row.locator(".hours")).to_contain_text("/ 10 per 7 days")
        shoot(page, "quotas")
        # The blocker finishes: its GPU is released and the page hears of it over its socket.
        from runs.lifecycle import transition

        in_thread(transition, blocker.pk, RunStatus.SUCCEEDED, "done")
        expect(quota_row.locator(".concurrent")).to_have_text("0 / 1 GPU", timeout=15_000)
        expect(page.locator("#quota-pools tr[data-pool='h100'] .in-use")).to_have_text("0")
        browser.close()
    in_thread(request_cancel, user, Run.objects.get(pk=waiting.pk))
    assert Run.objects.get(pk=waiting.pk).status == RunStatus.CANCELLED


def test_between_pushes_the_pages_clocks_move_waits_and_gpu_hours_on(live_stack, chromium_path):
    user = get_user_model().objects.create_user("tim", password="correct horse")
    team = default_team(user)
    pool = Pool.objects.create(name="h200", accelerator=Accelerator.GPU, capacity=16)
    Quota.objects.create(pool=pool, team=team, gpu_hours_per_period=1000, period_days=7)
    now = timezone.now()
    # A running run holds all 16 GPUs since an hour ago (16 GPU-hours so far, 16 more an
    # hour: 0.022 every 5 s, the pages' clock); a run waits behind it, queued 30 s ago.
    # Both stored directly: no event, so no push, and no worker trains either.
    holder = Run.objects.create(owner=user, team=team, name="holds-all", status=RunStatus.RUNNING, spec={}, total_steps=2)
    Allocation.objects.create(run=holder, pool=pool, team=team, user=user, gpus=16, slots=16,
                              requested_at=now - timedelta(hours=1), admitted_at=now - timedelta(hours=1))
    waiting = Run.objects.create(owner=user, team=team, name="waits", status=RunStatus.QUEUED, spec={}, total_steps=2)
    Allocation.objects.create(run=waiting, pool=pool, team=team, user=user, gpus=1, slots=1,
                              requested_at=now - timedelta(seconds=30))

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser, page = signed_in(playwright, profile, chromium_path, live_stack.base_url, "/queue/?pool=h200", "tim")
        # The socket state reads "live: updated <time>" as of the last snapshot received:
        # unchanged below, nothing was pushed while the figures moved.
        queue_state = page.locator("#queue-live")
        expect(queue_state).to_have_attribute("data-state", "live", timeout=15_000)
        updated = queue_state.inner_text()
        waited = page.locator(f"#queue-table tr[data-run-id='{waiting.pk}'] td").nth(7)
        # Django's timesince words the wait; the page's clock moves it past the minute.
        expect(waited).to_have_text("0\u00a0minutes")
        expect(waited).to_have_text("1\u00a0minute", timeout=45_000)
        assert queue_state.inner_text() == updated

        page.goto(f"{live_stack.base_url}/queue/quotas/")
        quota_state = page.locator("#quotas-live")
        expect(quota_state).to_have_attribute("data-state", "live", timeout=15_000)
        updated = quota_state.inner_text()
        hours = page.locator("#quota-table tbody tr .hours")
        first = float(hours.inner_text().split(" / ")[0])
        assert 16.0 <= first < 16.2
        expect(hours).not_to_have_text(hours.inner_text(), timeout=12_000)
        assert float(hours.inner_text().split(" / ")[0]) > first
        assert quota_state.inner_text() == updated
        browser.close()
