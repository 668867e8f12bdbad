"""Alert rules in a real browser (Debian's chromium, headless, driven by Playwright): a rule
set in the launch form arrives with the run; on a run's page its owner adds a rule (a bad
one is named at its field), sees the alert it opens arrive over the websocket, then
deletes the rule and sees the alert resolved, all without a reload."""

import tempfile
import threading

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect, sync_playwright

from accounts.services import default_team
from runs.lifecycle import request_cancel
from runs.models import AlertRule, Run, RunAttempt, RunStatus
from tests.browser.test_live_run_page import CHROMIUM_ARGS, wait_until_terminal  # `python -m pytest` runs from the root

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(600)]


def report_and_sweep(run_id: int, attempt_id: int, step: int, reward: float) -> None:
    """The driver reports reward/mean at `step`, then the housekeeper's sweep evaluates the
    rules. In a thread of its own: publishing goes through async_to_sync, which
    Playwright's loop in this thread forbids."""

    def work() -> None:
        from django.db import connection

        from engine.events import Metrics
        from runs.alerts import check_metric_rules
        from runs.telemetry import record_events

        record_events(run_id, attempt_id, [Metrics(step=step, values={"reward/mean": reward})])
        check_metric_rules()
        connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


def fill_rule(fields, metric: str, comparison: str, threshold: str, consecutive: str = "1") -> None:
    fields.locator("input[data-field=metric]").fill(metric)
    fields.locator("select[data-field=comparison]").select_option(comparison)
    fields.locator("input[data-field=threshold]").fill(threshold)
    fields.locator("input[data-field=consecutive]").fill(consecutive)


def test_rules_from_the_launch_form_and_the_run_page_with_alerts_live(live_stack, chromium_path, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls between its
    # steps are plain blocking reads, which Django would otherwise refuse there.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    user = get_user_model().objects.create_user("erin", password="correct horse")
    # Running without a worker: its metrics come from this test.
    watched = Run.objects.create(owner=user, team=default_team(user), name="watched", spec={"name": "watched"},
                                 status=RunStatus.RUNNING, total_steps=3)  # fmt: skip
    attempt = RunAttempt.objects.create(run=watched, number=1, worker_host="test", worker_pid=1)

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.goto(f"{live_stack.base_url}/runs/new/")
        page.fill("input[name=username]", "erin")
        page.fill("input[name=password]", "correct horse")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_url("**/runs/new/", timeout=30_000)

        # The launch form: a small run with one rule.
        page.fill("#field-name", "launched with a rule")
        page.fill("#field-training-steps", "2")
        page.click("#launch-rule-add")
        fill_rule(page.locator("#launch-rule-list .rule-row").first, "val/acc/mean@1", "below", "0.6", "2")
        page.click("#launch-button")
        page.wait_for_url("**/runs/*/", timeout=30_000)
        launched = Run.objects.get(name="launched with a rule")
        request_cancel(user, launched)  # leave the shared worker idle
        assert [(r.metric, r.comparison, r.threshold, r.consecutive) for r in launched.alert_rules.all()] == [
            ("val/acc/mean@1", "below", 0.6, 2)]

        page.goto(f"{live_stack.base_url}/runs/{watched.pk}/")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=30_000)
        form = page.locator("#alert-rule-form")
        # No threshold: the API's 400 is shown at that field, nothing added.
        fill_rule(form, "reward/mean", "below", "")
        page.click("#alert-rule-add")
        expect(form.locator("label[data-field=threshold] .field-error")).to_contain_text("a number", timeout=10_000)
        assert AlertRule.objects.filter(run=watched).count() == 0

        form.locator("input[data-field=threshold]").fill("0.5")
        page.click("#alert-rule-add")
        rows = page.locator("#run-alert-rule-table tbody tr[data-rule]")
        expect(rows).to_have_count(1, timeout=10_000)
        rule = AlertRule.objects.get(run=watched)
        row = page.locator(f"#run-alert-rule-table tr[data-rule='{rule.pk}']")
        expect(row).to_contain_text("below 0.5")
        expect(form.locator("label[data-field=threshold] .field-error")).to_be_hidden()

        # A reward of 0.25 < 0.5: the sweep opens the alert; it arrives over the socket.
        report_and_sweep(watched.pk, attempt.pk, 1, 0.25)
        expect(row).to_have_attribute("data-state", "alerting", timeout=30_000)
        expect(page.locator("#run-alerts")).to_contain_text("reward/mean below 0.5 (0.25 at step 1)")
        expect(page.locator("#run-alert-history tbody tr[data-alert]")).to_have_count(1)

        # Deleting the rule resolves its alert; the alert stays in the history.
        page.click(f"[data-delete-rule='{rule.pk}']")
        expect(page.locator("#run-alert-rule-table tbody")).to_contain_text("No alert rules", timeout=10_000)
        expect(page.locator("#run-alerts")).to_be_hidden()
        history = page.locator("#run-alert-history tbody tr[data-alert] td").last
        expect(history).not_to_have_text("open")
        browser.close()

    wait_until_terminal(launched.pk)
