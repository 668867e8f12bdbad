"""The dashboards in a real browser (Debian's chromium, headless, driven by Playwright):
a run launched through the form (no YAML typed), its charts growing live, a drill-down to
its samples; a second run cancelled from its page; the two compared. With
ROLLYARD_SCREENSHOTS=1 the tests write screenshots of each main view to docs/screenshots/
(shown in the README); without it they write none, so a test run leaves the tree as it was."""

import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from playwright.sync_api import expect, sync_playwright

from runs.models import Run
from runs.launch import create_run
from tests.browser.test_live_run_page import CHROMIUM_ARGS, wait_until_terminal  # `python -m pytest` runs from the root

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(900)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Small enough for a 2-core machine: 5 steps of 2 prompts × 2 samples, 32 tokens at most.
FORM_FIELDS = {
    "field-name": "form-launched",
    "field-training-steps": "5",
    "field-rollout-prompts_per_step": "2",
    "field-rollout-n": "2",
    "field-rollout-max_new_tokens": "32",
    "field-training-eval_every": "0",
}


def points(page, chart: str) -> int:
    return int(page.locator(f"#{chart}").get_attribute("data-points") or 0)


def wait_until_started(run_id: int, timeout_s: float = 300) -> Run:
    deadline = time.monotonic() + timeout_s
    while (run := Run.objects.get(pk=run_id)).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.5)
    return run


def shoot(page, name: str) -> None:
    """docs/screenshots/<name>.png of the whole page, only when ROLLYARD_SCREENSHOTS=1."""
    if os.environ.get("ROLLYARD_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_launch_through_the_form_watch_drill_down_cancel_and_compare(live_stack, chromium_path, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls between its
    # steps are plain blocking reads, which Django would otherwise refuse there.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    user = get_user_model().objects.create_user("carol", password="correct horse")

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        page = browser.new_page()
        page.goto(f"{live_stack.base_url}/runs/new/")
        page.fill("input[name=username]", "carol")
        page.fill("input[name=password]", "correct horse")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_url("**/runs/new/", timeout=30_000)

        # The form, built from the schema: a bad value is named at its field, live. First
        # the verdict of the page's own first check (the state starts "idle", so "not
        # pending" is no verdict).
        expect(page.locator("#validation-state")).to_have_attribute("data-state", re.compile("^(valid|invalid)$"), timeout=30_000)
        assert page.locator("#validation-state").get_attribute("data-state") == "valid", page.inner_text("#live-errors")
        page.fill("#field-rollout-n", "1")
        expect(page.locator("#field-rollout-n-error")).to_contain_text("greater than or equal to 2", timeout=15_000)
        # Launching anyway reaches the server (not a browser bubble), which lists the problem.
        page.click("#launch-button")
        expect(page.locator("#spec-errors li[data-field='rollout.n']")).to_be_visible(timeout=30_000)
        assert not Run.objects.exists()
        for field, value in FORM_FIELDS.items():
            page.fill(f"#{field}", value)
        page.select_option("#field-algorithm-name", "dr_grpo")
        expect(page.locator("#validation-state")).to_have_attribute("data-state", "valid", timeout=15_000)
        # The YAML editor followed the form.
        assert "max_new_tokens: 32" in page.input_value("#spec") and "name: dr_grpo" in page.input_value("#spec")
        shoot(page, "launch-form")
        page.click("#launch-button")
        page.wait_for_url("**/runs/*/", timeout=30_000)
        run = Run.objects.get(name="form-launched")
        assert run.spec["rollout"]["max_new_tokens"] == 32 and run.spec["algorithm"]["name"] == "dr_grpo"
        assert run.total_steps == 5

        # The worker picks it up; a run that fails says why here rather than as a chart timeout.
        started = wait_until_started(run.id)
        assert started.status != "failed", f"the run failed: {started.status_reason}"

        # Live: the learning charts grow over the websocket, no reload.
        page.click("#tab-learning")
        page.wait_for_function("() => Number(document.querySelector('#chart-reward').dataset.points) > 0", timeout=300_000)
        seen = points(page, "chart-reward")
        page.wait_for_function(
            f"() => Number(document.querySelector('#chart-reward').dataset.points) > {seen}", timeout=180_000
        )
        shoot(page, "run-learning")
        page.click("#tab-rollout")
        page.wait_for_function("() => Number(document.querySelector('#chart-length').dataset.points) > 0", timeout=60_000)
        shoot(page, "run-rollout-tail")
        page.click("#tab-accelerators")
        page.wait_for_function("() => Number(document.querySelector('#chart-timeline').dataset.points) > 0", timeout=60_000)
        shoot(page, "run-accelerators")

        # Drill down: a prompt of the difficulty table → its latest samples.
        page.click("#tab-difficulty")
        first = page.locator("#prompt-table tbody tr").first
        expect(first).to_be_visible(timeout=60_000)
        prompt_id = first.get_attribute("data-prompt-id")
        first.click()
        expect(page.locator("#samples li").first).to_be_visible(timeout=30_000)
        meta = page.locator("#samples .sample-meta").first.inner_text()
        assert prompt_id in meta and "reward" in meta and "tokens" in meta
        assert page.locator("#samples .sample-text").first.inner_text().strip()
        page.wait_for_function("() => Number(document.querySelector('#chart-pass-heatmap').dataset.points) > 0", timeout=30_000)
        shoot(page, "run-difficulty")
        page.click("#tab-overview")
        shoot(page, "run-overview")
        wait_until_terminal(run.id, timeout_s=300)
        # The overview follows without a reload: the end in its status history, the final
        # checkpoint, and the fork form, which only a run with a checkpoint has.
        expect(page.locator("#run-status-history tbody")).to_contain_text("succeeded", timeout=30_000)
        expect(page.locator("#run-checkpoints tr[data-step='5']")).to_be_visible(timeout=30_000)
        expect(page.locator("#run-fork option[value='5']")).to_be_attached()

        # A second run, cancelled from its page once it has a step to compare. Long enough
        # that it cannot finish first: 5 such steps took under the time the chart needs to
        # show a point and the click to land, on a quiet machine.
        second = create_run(user, {"name": "to-cancel", "training": {"steps": 500, "eval_every": 0}, "seed": 1,
                                   "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 32}})
        page.goto(f"{live_stack.base_url}/runs/{second.id}/#learning")
        page.wait_for_function("() => Number(document.querySelector('#chart-reward').dataset.points) > 0", timeout=300_000)
        page.once("dialog", lambda dialog: dialog.accept())  # "Cancel run #N (to-cancel)?"
        page.click("#run-cancel-button")
        expect(page.locator("#run-status")).to_have_text("cancelled", ignore_case=True, timeout=120_000)
        assert Run.objects.get(pk=second.id).status == "cancelled"

        # Compare the two from the runs list.
        page.goto(f"{live_stack.base_url}/runs/")
        page.check(f"input[name=run][value='{run.id}']")
        page.check(f"input[name=run][value='{second.id}']")
        page.click("#compare-button")
        page.wait_for_url("**/runs/compare/**", timeout=30_000)
        page.wait_for_function("() => Number(document.querySelector('#chart-compare').dataset.traces) === 2", timeout=30_000)
        differing = page.locator("#compare-diff tbody tr").evaluate_all("rows => rows.map(r => r.dataset.path)")
        # Launched with different names, algorithms and seeds; the same rollout settings.
        assert {"name", "algorithm.name", "seed"} <= set(differing)
        assert "rollout.max_new_tokens" not in differing
        shoot(page, "compare")
        page.select_option("#compare-x", "wall")
        expect(page.locator("#chart-compare .xtitle")).to_contain_text("seconds", timeout=10_000)
        browser.close()
    wait_until_terminal(second.id)


# One GPU's NVML metrics as engine.telemetry.NvmlSampler reports them (an H200's memory).
GPU_METRICS = {"gpu/0/utilization": 63.0, "gpu/0/memory_used_mb": 20_480.0, "gpu/0/memory_total_mb": 143_771.0}


def record_step(run_id: int, attempt_id: int, step: int, extra: dict[str, float] | None = None) -> None:
    """One step's telemetry as the engine reports it (engine.events), recorded by the sink's
    own service: stored, then published to the run's websocket group. In a thread of its
    own: publishing goes through async_to_sync, which Playwright's loop in this thread
    forbids."""
    thread = threading.Thread(target=_record_step, args=(run_id, attempt_id, step, extra))
    thread.start()
    thread.join()


def _record_step(run_id: int, attempt_id: int, step: int, extra: dict[str, float] | None) -> None:
    from django.db import connection

    from engine.events import (
        DifficultyUpdates, LengthHistogram, Metrics, PromptDifficulty, PromptResult, PromptResults, PromptText,
        SampleRecord, SampleRecords, Span,
    )
    from runs.telemetry import record_events

    t0 = 1_700_000_000.0 + 10 * step
    prompts = [("p-easy", 1.0, 4), ("p-mid", 3.0, 2), ("p-hard", 6.0, 0)]  # id, difficulty, successes of 4
    record_events(run_id, attempt_id, [
        Metrics(step=step, values={
            "reward/mean": 0.4 + 0.1 * step, "acc/mean": 0.3 + 0.1 * step, "timing_s/step": 2.0,
            "rollout/response_length/p50": 20, "rollout/response_length/p90": 40,
            "rollout/response_length/p99": 60, "rollout/response_length/max": 64,
            "rollout/clip_ratio": 0.1, "trainer/idle_ratio": 0.25, "actor/pg_loss": 0.05 / step,
            "actor/entropy": 1.2 - 0.1 * step, "actor/ppo_kl": 0.001 * step, "actor/grad_norm": 0.8,
            "clip_ratio/high_mean": 0.02, **(extra or {}),
        }),
        LengthHistogram(step=step, bin_edges=[0, 16, 32, 48, 64], counts=[3, 5, 3, 1]),
        Span(step=step, worker="rollout-0", phase="generate", start=t0, end=t0 + 1.2),
        Span(step=step, worker="trainer", phase="idle", start=t0, end=t0 + 1.2),
        Span(step=step, worker="trainer", phase="train", start=t0 + 1.2, end=t0 + 2.0),
        PromptResults(step=step, results=[
            PromptResult(prompt_id=p, difficulty=d, attempts=4, successes=s, mean_length=30.0) for p, d, s in prompts
        ]),
        DifficultyUpdates(step=step, prompts=[
            # Beta(1 + successes, 1 + failures) over `step` steps of 4 attempts each.
            PromptDifficulty(prompt_id=p, attempts=4 * step, successes=s * step, alpha=1 + s * step,
                             beta=1 + (4 - s) * step, mean=(1 + s * step) / (2 + 4 * step), low=0.0, high=1.0,
                             last_step=step, allocated=4)
            for p, d, s in prompts
        ]),
        SampleRecords(step=step, samples=[
            SampleRecord(prompt_id="p-hard", response=f"7 +5 = 12\n#### 12 (step {step})", reward=0.0, length=9,
                         status="completed", first_version=step - 1, last_version=step - 1),
        ], prompts=[PromptText(prompt_id="p-hard", prompt=". . 7 +5 -3", answer="9")]),
    ])
    connection.close()


def test_the_run_page_tabs_live_from_recorded_events(live_stack, chromium_path, monkeypatch):
    """The run page's tabs fed over the websocket by events recorded while it is open (no
    engine: the events are built here), drill-down from the difficulty table to a sample,
    a technique panel appearing when its metric does, cancel, and the comparison with
    another run."""
    from runs.models import RunAttempt, RunStatus

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    user = get_user_model().objects.create_user("dave", password="correct horse")
    # Running without a worker: the events come from this test. One transaction: a
    # launch's admission sweep goes to the live stack's worker only at commit, and by then
    # both runs are running with their attempt, so the sweep admits neither (running →
    # admitted is no move of the state machine) and no driver claims one. Launched one by
    # one, a warm worker (after another test) claimed a run before it was marked running,
    # and its attempt 1 collided with this test's.
    with transaction.atomic():
        run = create_run(user, {"name": "recorded", "training": {"steps": 3}})
        other = create_run(user, {"name": "baseline", "training": {"steps": 3}, "seed": 1})
        Run.objects.filter(pk__in=[run.pk, other.pk]).update(status=RunStatus.RUNNING)
        attempt = RunAttempt.objects.create(run=run, number=1, worker_host="test", worker_pid=1)
        other_attempt = RunAttempt.objects.create(run=other, number=1, worker_host="test", worker_pid=1)
    record_step(other.id, other_attempt.id, 1)

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        page = browser.new_page()
        page.goto(f"{live_stack.base_url}/runs/{run.id}/#learning")
        page.fill("input[name=username]", "dave")
        page.fill("input[name=password]", "correct horse")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_url(f"**/runs/{run.id}/**", timeout=30_000)
        expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=30_000)
        page.click("#tab-learning")  # the sign-in's redirect dropped the #learning
        assert points(page, "chart-reward") == 0
        expect(page.locator("#chart-reward-empty")).to_be_visible()

        # Step 1 then step 2, pushed live: reward/mean and acc/mean, 2 points a step.
        record_step(run.id, attempt.id, 1)
        page.wait_for_function("() => Number(document.querySelector('#chart-reward').dataset.points) === 2", timeout=30_000)
        record_step(run.id, attempt.id, 2, extra={"cures/rollouts_per_prompt/mean": 3.0, **GPU_METRICS})
        page.wait_for_function("() => Number(document.querySelector('#chart-reward').dataset.points) === 4", timeout=30_000)
        # 2.0 s a step (timing_s/step) × 1 step left of 3.
        expect(page.locator("#run-eta")).to_contain_text("ETA 2.0s", timeout=10_000)
        shoot(page, "run-learning")

        page.click("#tab-rollout")
        # p50, p90, p99 and max over 2 steps; the heatmap: 2 steps × 4 bins.
        page.wait_for_function("() => Number(document.querySelector('#chart-length').dataset.points) === 8", timeout=10_000)
        page.wait_for_function("() => Number(document.querySelector('#chart-heatmap').dataset.points) === 8", timeout=10_000)
        shoot(page, "run-rollout-tail")
        page.click("#tab-accelerators")
        page.wait_for_function("() => Number(document.querySelector('#chart-timeline').dataset.points) === 6", timeout=10_000)
        # NVML's metrics of step 2, one GPU: its charts replace "no GPU on this run's nodes".
        expect(page.locator("#chart-gpu-util-card")).to_be_visible(timeout=10_000)
        expect(page.locator("#gpu-empty")).to_be_hidden()
        # The savings estimate over 2 steps of 1.2 s generating and 0.8 s training (2.0 s each):
        # APRIL at p90 40 of max 64 tokens saves 1.2 × (1 − 40/64) = 0.45 s a step, 22.5%;
        # async overlap min(1.2, 0.8) = 0.8 s a step, 40.0%.
        expect(page.locator("#savings")).to_have_attribute("data-state", "ready", timeout=10_000)
        expect(page.locator("#savings-table tr[data-estimate^='APRIL']")).to_contain_text("0.9 s (22.5%)")
        expect(page.locator("#savings-table tr[data-estimate^='async']")).to_contain_text("1.6 s (40.0%)")
        expect(page.locator("#savings-assumptions li").first).to_contain_text("90% of its responses")
        shoot(page, "run-accelerators")

        page.click("#tab-techniques")
        expect(page.locator("#chart-cures-card")).to_be_visible(timeout=10_000)
        expect(page.locator("#techniques-empty")).to_be_hidden()
        page.click("#tab-off-policy")
        expect(page.locator("#off-policy-empty")).to_be_visible()

        page.click("#tab-difficulty")
        expect(page.locator("#prompt-table tbody tr")).to_have_count(3, timeout=15_000)
        # Posterior means after 2 steps of 4 attempts: easy (1+8)/(2+8) = 0.9, mid 5/10, hard 1/10.
        page.click("#prompt-table th[data-order='mean']")  # descending first
        expect(page.locator("#prompt-table tbody tr").first).to_have_attribute("data-prompt-id", "p-easy", timeout=10_000)
        expect(page.locator("#prompt-table tbody tr").first.locator("td").nth(1)).to_have_text("0.900")
        page.locator("#prompt-table tbody tr[data-prompt-id='p-hard']").click()
        expect(page.locator("#samples .sample-meta").first).to_contain_text("p-hard · step 2", timeout=10_000)
        # The prompt as the model saw it and its reference answer, above its samples' verdicts.
        expect(page.locator("#samples .prompt-meta").first).to_contain_text("reference answer: 9")
        expect(page.locator("#samples .prompt-text").first).to_have_text(". . 7 +5 -3")
        expect(page.locator("#samples .sample-meta").first).to_contain_text("✗ wrong, reward 0")
        expect(page.locator("#samples .sample-text").first).to_contain_text("#### 12 (step 2)")
        page.wait_for_function("() => Number(document.querySelector('#chart-pass-heatmap').dataset.points) > 0", timeout=10_000)
        shoot(page, "run-difficulty")

        page.click("#tab-overview")
        shoot(page, "run-overview")
        page.once("dialog", lambda dialog: dialog.accept())  # the cancel's confirm()
        page.click("#run-cancel-button")
        expect(page.locator("#run-cancel-button")).to_have_text("Cancelling…", timeout=10_000)
        assert Run.objects.get(pk=run.id).cancel_requested

        page.goto(f"{live_stack.base_url}/runs/compare/?run={run.id}&run={other.id}")
        page.wait_for_function("() => Number(document.querySelector('#chart-compare').dataset.traces) === 2", timeout=15_000)
        # reward/mean: 2 points of this run, 1 of the other.
        assert points(page, "chart-compare") == 3
        differing = page.locator("#compare-diff tbody tr").evaluate_all("rows => rows.map(r => r.dataset.path)")
        assert set(differing) == {"name", "seed"}
        shoot(page, "compare")
        browser.close()
