"""A person in a real browser (Debian's chromium, headless, driven by Playwright) logs in,
opens a running run and watches its reward chart grow as the worker trains."""

import tempfile
import time

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect, sync_playwright

from runs.models import Run
from runs.launch import create_run
from runs.lifecycle import request_cancel

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(600)]

# The flags machine-notes.md found necessary on these offline machines.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]


def points_drawn(page) -> int:
    return int(page.locator("#chart-reward").get_attribute("data-points") or 0)


def test_the_run_page_chart_updates_live(live_stack, chromium_path):
    user = get_user_model().objects.create_user("bob", password="correct horse")
    run = create_run(user, {
        "name": "browser",
        "training": {"steps": 40, "eval_every": 0},
        "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 64},
        "dataset": {"eval_size": 16},
    })

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.goto(f"{live_stack.base_url}/runs/{run.id}/")
        # Not logged in: the run page sends us to the login form first.
        page.fill("input[name=username]", "bob")
        page.fill("input[name=password]", "correct horse")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_url(f"**/runs/{run.id}/", timeout=30_000)

        expect(page.locator("#run-status")).to_have_text("running", ignore_case=True, timeout=180_000)
        page.wait_for_function(
            "() => Number(document.querySelector('#chart-reward').dataset.points || 0) > 0", timeout=180_000
        )
        seen = points_drawn(page)
        # No reload: the new points can only have come over the websocket.
        page.wait_for_function(
            f"() => Number(document.querySelector('#chart-reward').dataset.points || 0) > {seen}", timeout=120_000
        )
        assert points_drawn(page) > seen
        browser.close()

    # Leave the shared worker idle for the next test.
    request_cancel(user, run)
    wait_until_terminal(run.id)


def wait_until_terminal(run_id: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while Run.objects.get(pk=run_id).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the run did not stop after cancel"
        time.sleep(0.5)
