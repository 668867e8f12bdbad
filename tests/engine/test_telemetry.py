"""What a step reports for drill-down and for the busy/idle chart: sample records (bounded
per prompt, one right and one wrong where both exist, text capped, statuses and
versions carried) and spans (workers trainer and rollout-0, phases of the contract,
idle filling each worker's step so its spans add up to the step)."""

import time
from typing import get_args

import pytest

from engine.events import Phase, Span, monotonic_now
from engine.problems import Problem
from engine.recipes.sync import SyncRecipe
from engine.rollout.types import Rollout
from engine.spec import parse_spec
from engine.telemetry import MERGE_GAP_S, SAMPLE_TEXT_CHARS, Timeline, sample_records, sampled_prompts

PHASES = set(get_args(Phase))  # generate, verify, train, sync, wait, eval, idle


def problem(prompt_id: str) -> Problem:
    return Problem(id=prompt_id, prompt=f"{prompt_id}?", answer="1", difficulty=1.0, solution="")


def rollout(prompt_id: str, reward: float, text: str = "", status: str = "completed", versions=(0,)) -> Rollout:
    tokens = len(versions)
    return Rollout(
        group=0,
        problem=problem(prompt_id),
        prompt_ids=[1],
        token_ids=[5] * tokens,
        logprobs=[-0.5] * tokens,
        versions=list(versions),
        status=status,
        text=text or f"{prompt_id} says {reward}",
        reward=reward,
    )


# ----------------------------------------------------------------- sample records
def test_sample_records_keep_at_most_the_bound_per_prompt_with_a_right_and_a_wrong_one():
    # "mixed": wrong ×4, right (index 4), wrong. Bound 4: the first right (4) and the first
    # wrong (0), then the others in order (1, 2), reported in sample order: 0, 1, 2, 4.
    mixed = [rollout("mixed", 0.0, text=f"m{i}") for i in range(4)] + [rollout("mixed", 1.0, text="m4")]
    mixed.append(rollout("mixed", 0.0, text="m5"))
    # "late": six wrong, then one right. Bound 2: exactly the first wrong and the right one.
    late = [rollout("late", 0.0, text=f"l{i}") for i in range(6)] + [rollout("late", 1.0, text="l6")]
    # "solved": all right. Bound 2: the first two (there is no wrong one to include).
    solved = [rollout("solved", 1.0, text=f"s{i}") for i in range(3)]
    interleaved = [mixed[0], late[0], solved[0], *mixed[1:], *late[1:], *solved[1:]]

    four = sample_records(interleaved, per_prompt=4)
    two = sample_records(interleaved, per_prompt=2)

    # Prompts in the order first seen; each prompt's records in sample order.
    assert [(r.prompt_id, r.response) for r in four] == [
        ("mixed", "m0"), ("mixed", "m1"), ("mixed", "m2"), ("mixed", "m4"),
        ("late", "l0"), ("late", "l1"), ("late", "l2"), ("late", "l6"),
        ("solved", "s0"), ("solved", "s1"), ("solved", "s2"),
    ]  # fmt: skip
    assert [(r.prompt_id, r.response, r.reward) for r in two] == [
        ("mixed", "m0", 0.0), ("mixed", "m4", 1.0),
        ("late", "l0", 0.0), ("late", "l6", 1.0),
        ("solved", "s0", 1.0), ("solved", "s1", 1.0),
    ]  # fmt: skip


def test_sampled_prompts_name_each_prompt_once_with_its_text_and_answer_capped():
    # Two prompts, eight rollouts of "a" and one of "b": two prompt texts, not nine.
    rollouts = [rollout("a", 0.0)] * 4 + [rollout("b", 1.0)] + [rollout("a", 1.0)] * 4
    long_prompt = Problem(id="c", prompt="9 +9 " * 1000, answer="7" * 5000, difficulty=1.0, solution="")  # 5000 each
    rollouts.append(Rollout(**{**rollouts[0].__dict__, "problem": long_prompt}))

    prompts = sampled_prompts(rollouts)

    assert [(p.prompt_id, p.prompt, p.answer) for p in prompts[:2]] == [("a", "a?", "1"), ("b", "b?", "1")]
    assert prompts[2].prompt == long_prompt.prompt[:4096] and prompts[2].answer == "7" * 4096
    assert {p.prompt_id for p in prompts} == {r.prompt_id for r in sample_records(rollouts, per_prompt=2)}


def test_sample_records_cap_the_text_and_carry_reward_length_status_and_versions():
    long_text = "7 +1 = 8\n" * 600  # 5400 characters
    shaped = rollout("p", 0.0, text=long_text, status="truncated", versions=(2, 2, 3))
    shaped.shaping = -1.0  # overlong shaping moves the advantage, never the recorded verdict
    aborted = rollout("p", 1.0, text="12", status="aborted", versions=(4,))
    unstarted = rollout("q", 0.0, text="-", status="aborted", versions=())  # aborted before its first token

    truncated, stopped, empty = sample_records([shaped, aborted, unstarted], per_prompt=4)

    assert len(long_text) == 5400 and truncated.response == long_text[:SAMPLE_TEXT_CHARS]
    assert len(truncated.response) == 4096
    assert (truncated.reward, truncated.length, truncated.status) == (0.0, 3, "truncated")
    assert (truncated.first_version, truncated.last_version) == (2, 3)  # the versions it spans
    assert (stopped.reward, stopped.length, stopped.status, stopped.first_version, stopped.last_version) == (
        1.0, 1, "aborted", 4, 4,
    )  # fmt: skip
    assert (empty.length, empty.first_version, empty.last_version) == (0, -1, -1)


@pytest.fixture(scope="module")
def dapo_steps():
    """Two DAPO steps (dynamic sampling: several generate/verify rounds on rollout-0)
    keeping 2 sample records a prompt."""
    recipe = SyncRecipe(
        parse_spec(
            {
                "dataset": {"eval_size": 4},
                "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 48},
                "training": {"steps": 2, "lr": 1e-4},
                "algorithm": {"name": "dapo"},
                "telemetry": {"samples_per_prompt": 2},
                "resources": {"executor": "inprocess", "cpus": 1},
                "seed": 1,
            }
        )
    )
    return [recipe.step(), recipe.step()]


def test_a_steps_sample_records_are_bounded_and_hold_a_right_and_a_wrong_answer(dapo_steps):
    for events in dapo_steps:
        [results] = [event for event in events if event.kind == "prompt_results"]
        [records] = [event for event in events if event.kind == "samples"]
        by_prompt: dict[str, list] = {}
        for record in records.samples:
            by_prompt.setdefault(record.prompt_id, []).append(record)

        assert records.split == "train" and set(by_prompt) == {result.prompt_id for result in results.results}
        for result in results.results:
            kept = by_prompt[result.prompt_id]
            assert len(kept) == min(2, result.attempts)
            if 0 < result.successes < result.attempts:
                assert sorted(record.reward for record in kept) == [0.0, 1.0]


# ----------------------------------------------------------------- spans
def busy_for(seconds: float) -> None:
    """Spin (a sleep this short oversleeps by more than itself)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def assert_spans_fill_the_step(spans, step_seconds: float, workers: set[str]):
    assert {span.worker for span in spans} == workers and {span.phase for span in spans} <= PHASES
    start, end = min(span.start for span in spans), max(span.end for span in spans)
    assert end - start == pytest.approx(step_seconds, abs=1e-3)
    for worker in workers:
        own = sorted((span for span in spans if span.worker == worker), key=lambda span: span.start)
        # From the step's start to its end, one span after the other, no overlap, no hole
        # longer than the merge gap, durations adding up to the step.
        assert own[0].start == pytest.approx(start, abs=MERGE_GAP_S) and own[-1].end == pytest.approx(end, abs=MERGE_GAP_S)
        assert all(0 <= b.start - a.end <= MERGE_GAP_S for a, b in zip(own, own[1:])), worker
        assert all(span.start <= span.end for span in own)
        assert sum(span.end - span.start for span in own) == pytest.approx(step_seconds, abs=1e-3), worker


def test_every_workers_spans_add_up_to_the_step(dapo_steps):
    for events in dapo_steps:
        metrics = events[0]
        spans = [event for event in events if event.kind == "span"]
        assert {span.step for span in spans} == {metrics.step}
        assert_spans_fill_the_step(spans, metrics.values["timing_s/step"], {"trainer", "rollout-0"})
        trainer = {span.phase for span in spans if span.worker == "trainer"}
        rollout_worker = {span.phase for span in spans if span.worker == "rollout-0"}
        assert {"train", "sync"} <= trainer <= {"train", "sync", "idle"}
        assert {"generate", "verify"} <= rollout_worker <= {"generate", "verify", "idle"}
        # Synchronous: the trainer idles while the rollout worker generates, and back.
        assert "idle" in trainer and "idle" in rollout_worker


def test_the_timeline_fills_gaps_with_idle_and_merges_back_to_back_spans():
    timeline = Timeline(step=3)
    busy_for(0.02)
    with timeline.phase("trainer", "train", "old_log_prob"):
        busy_for(0.01)
    with timeline.phase("trainer", "train", "update_actor"):
        busy_for(0.01)
    with timeline.phase("trainer", "sync"):
        busy_for(0.005)
    busy_for(0.02)

    spans = timeline.close(["rollout-0", "trainer"])

    trainer = [(span.phase, span.end - span.start) for span in spans if span.worker == "trainer"]
    # ≈ 20 ms idle, 20 ms train (two labels, one span), 5 ms sync, ≈ 20 ms idle.
    assert [phase for phase, _ in trainer] == ["idle", "train", "sync", "idle"]
    assert trainer[0][1] >= 0.02 and trainer[1][1] >= 0.02 and trainer[2][1] >= 0.005 and trainer[3][1] >= 0.02
    assert [span.phase for span in spans if span.worker == "rollout-0"] == ["idle"]  # idle all step
    assert timeline.seconds["old_log_prob"] >= 0.01 and timeline.seconds["update_actor"] >= 0.01
    assert_spans_fill_the_step(spans, timeline.seconds["step"], {"trainer", "rollout-0"})


def test_gaps_under_the_merge_gap_are_not_idle_but_still_count_toward_the_step():
    # Spans placed at exact times (a busy machine stretches real ones): four 10 ms
    # stretches, each 0.6 ms after the last. No such gap is idle (each under 1 ms), yet
    # together they are 4 × 0.6 = 2.4 ms of the step, which the worker's spans must cover.
    timeline = Timeline(step=1)
    timeline.start = monotonic_now() - 0.05
    begin = timeline.start
    for phase in ("generate", "verify", "generate", "verify"):
        begin += 0.0006
        timeline.spans.append(Span(step=1, worker="rollout-0", phase=phase, start=begin, end=begin + 0.01))
        begin += 0.01

    spans = timeline.close(["rollout-0"])  # ≥ 50 ms after the start: the last 7.6 ms are idle

    assert [span.phase for span in spans] == ["generate", "verify", "generate", "verify", "idle"]
    assert_spans_fill_the_step(spans, timeline.seconds["step"], {"rollout-0"})
