"""The difficulty store: per prompt, attempts, successes and a Beta posterior over the pass
rate from a configurable prior, its mean and 90% interval, the last step and the
rollouts allocated; only changed prompts are reported, and the state survives a
checkpoint (a resumed run's difficulty events are compared in test_checkpoints). The
recipe reports it each step for exactly the prompts it rolled out."""

import json
import math

import pytest

from engine.recipes.sync import SyncRecipe
from engine.sampling.difficulty import DifficultyStore, PromptRecord
from engine.spec import parse_spec


def right_and_wrong(prompt_id: str, right: int, wrong: int) -> list[tuple[str, bool]]:
    return [(prompt_id, True)] * right + [(prompt_id, False)] * wrong


def test_the_posterior_counts_successes_and_failures_on_the_prior():
    store = DifficultyStore()  # α₀ = β₀ = 1: the uniform prior

    store.allocate(1, [("a", 4)])
    store.observe(1, right_and_wrong("a", right=3, wrong=1))

    # Beta(1 + 3, 1 + 1) = Beta(4, 2), mean 4 / 6 = 2/3.
    assert store.posterior("a") == (4.0, 2.0)
    assert store.mean("a") == pytest.approx(2 / 3)
    assert store.record("a") == PromptRecord(attempts=4, successes=3, last_step=1, allocated=4)
    # A prompt never seen is the prior itself: Beta(1, 1), mean 1/2, nothing counted.
    assert "b" not in store and store.posterior("b") == (1.0, 1.0) and store.mean("b") == 0.5
    assert store.record("b") == PromptRecord()


def test_a_custom_prior_shifts_the_posterior():
    store = DifficultyStore(prior_alpha=2.0, prior_beta=3.0)  # a prior mean of 2/5

    store.observe(1, right_and_wrong("a", right=1, wrong=4))

    # Beta(2 + 1, 3 + 4) = Beta(3, 7), mean 3/10.
    assert store.posterior("a") == (3.0, 7.0)
    assert store.mean("a") == pytest.approx(0.3)
    row = store.row("a")
    assert (row.alpha, row.beta, row.mean, row.attempts, row.successes) == (3.0, 7.0, pytest.approx(0.3), 5, 1)


def test_the_90_percent_interval_matches_the_closed_form_quantiles():
    store = DifficultyStore()
    store.observe(1, right_and_wrong("none", right=0, wrong=3))  # Beta(1, 4)
    store.observe(1, right_and_wrong("all", right=3, wrong=0))  # Beta(4, 1)

    # Beta(1, k): F(x) = 1 − (1 − x)^k, so the q-quantile is 1 − (1 − q)^(1/k). With k = 4,
    # the 5% and 95% quantiles are 1 − 0.95^(1/4) ≈ 0.012741 and 1 − 0.05^(1/4) ≈ 0.527129.
    low, high = store.credible_interval("none")
    assert low == pytest.approx(1 - 0.95 ** (1 / 4), rel=1e-9) and low == pytest.approx(0.012741, abs=1e-6)
    assert high == pytest.approx(1 - 0.05 ** (1 / 4), rel=1e-9) and high == pytest.approx(0.527129, abs=1e-6)
    # Beta(k, 1) is its mirror: F(x) = x^k, quantile q^(1/k): 0.05^(1/4) and 0.95^(1/4).
    assert store.credible_interval("all") == pytest.approx((0.05**0.25, 0.95**0.25), rel=1e-9)
    # The uniform prior's central 90%: (0.05, 0.95); a 50% store: the quartiles.
    assert store.credible_interval("unseen") == pytest.approx((0.05, 0.95))
    assert DifficultyStore(interval=0.5).credible_interval("unseen") == pytest.approx((0.25, 0.75))
    row = store.row("none")
    assert (row.low, row.high) == (low, high) and row.mean == pytest.approx(1 / 5)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"prior_alpha": 0.0}, "α₀, β₀ > 0"), ({"prior_beta": -1.0}, "α₀, β₀ > 0"), ({"interval": 1.0}, "(0, 1)")],
)
def test_an_impossible_prior_or_interval_is_refused(arguments, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DifficultyStore(**arguments)


def test_allocations_add_up_within_a_step_and_start_again_at_the_next():
    store = DifficultyStore()

    store.allocate(1, [("a", 4), ("a", 4), ("b", 4)])  # "a" planned twice in one step
    assert (store.record("a").allocated, store.record("b").allocated) == (8, 4)

    store.allocate(2, [("a", 2)])
    assert store.record("a") == PromptRecord(attempts=0, successes=0, last_step=2, allocated=2)
    assert store.record("b").last_step == 1 and store.record("b").allocated == 4


def test_changes_lists_only_the_prompts_changed_since_the_last_call_then_forgets_them():
    store = DifficultyStore()
    store.allocate(1, [("b", 2), ("a", 2)])
    store.observe(1, right_and_wrong("a", 1, 1) + right_and_wrong("b", 0, 2))

    first = store.changes()

    assert [(row.prompt_id, row.attempts, row.successes, row.last_step, row.allocated) for row in first] == [
        ("a", 2, 1, 1, 2),
        ("b", 2, 0, 1, 2),
    ]
    assert store.changes() == []  # nothing changed since
    store.allocate(2, [("b", 2)])
    store.observe(2, right_and_wrong("b", 2, 0))
    # Only "b", now Beta(1 + 2, 1 + 2) = Beta(3, 3) after 2 of 4: mean 1/2.
    [row] = store.changes()
    assert (row.prompt_id, row.attempts, row.successes, row.alpha, row.beta, row.mean) == ("b", 4, 2, 3.0, 3.0, 0.5)
    assert (row.last_step, row.allocated) == (2, 2)


def test_the_state_is_plain_data_and_a_fresh_store_continues_from_it():
    store = DifficultyStore(prior_alpha=2.0, prior_beta=2.0)
    store.allocate(1, [("a", 3), ("b", 3)])
    store.observe(1, right_and_wrong("a", 2, 1) + right_and_wrong("b", 0, 3))
    store.changes()
    store.observe(2, right_and_wrong("b", 1, 0))  # a change not reported yet

    state = json.loads(json.dumps(store.state_dict()))  # plain numbers and strings
    restored = DifficultyStore(prior_alpha=2.0, prior_beta=2.0)
    restored.load_state_dict(state)

    assert len(restored) == 2 and restored.record("a") == store.record("a") and restored.record("b") == store.record("b")
    # The pending change survives: the restored store reports what the original would.
    assert restored.changes() == store.changes()
    assert restored.posterior("b") == (3.0, 5.0)  # 2 + 1, 2 + 3


# ----------------------------------------------------------------- in a run
@pytest.mark.parametrize(
    "overrides",
    [
        {},  # grpo over the uniform sampler: one round of plan items a step
        # dynamic sampling asks the sampler for more; a prior of its own
        {"algorithm": {"name": "dapo"}, "curriculum": {"prior_alpha": 2.0, "prior_beta": 3.0}},
    ],
    ids=["grpo", "dapo-prior"],
)
def test_each_step_reports_the_difficulty_of_exactly_the_prompts_it_rolled_out(overrides):
    spec = parse_spec(
        {
            "dataset": {"eval_size": 4},
            "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 48},
            "training": {"steps": 3, "lr": 1e-4},
            "resources": {"executor": "inprocess", "cpus": 1},
            "seed": 1,
        }
        | overrides
    )
    prior_alpha, prior_beta = spec.curriculum.prior_alpha, spec.curriculum.prior_beta
    recipe = SyncRecipe(spec)
    attempts: dict[str, int] = {}
    successes: dict[str, int] = {}
    rolled_out: list[int] = []

    for step in (1, 2, 3):
        events = recipe.step()
        [results] = [event for event in events if event.kind == "prompt_results"]
        [updates] = [event for event in events if event.kind == "difficulty"]
        this_step = {result.prompt_id: result for result in results.results}
        rolled_out.append(len(this_step))
        for prompt_id, result in this_step.items():
            attempts[prompt_id] = attempts.get(prompt_id, 0) + result.attempts
            successes[prompt_id] = successes.get(prompt_id, 0) + result.successes

        assert updates.step == step
        assert [row.prompt_id for row in updates.prompts] == sorted(this_step)  # those rolled out, and only those
        for row in updates.prompts:
            # Counts over the run so far; allocated and last step are this step's.
            assert (row.attempts, row.successes) == (attempts[row.prompt_id], successes[row.prompt_id])
            assert (row.last_step, row.allocated) == (step, this_step[row.prompt_id].attempts)
            assert (row.alpha, row.beta) == (prior_alpha + row.successes, prior_beta + row.attempts - row.successes)
            assert row.mean == pytest.approx(row.alpha / (row.alpha + row.beta))
            assert row.low < row.mean < row.high and not math.isnan(row.low)
    assert len(recipe.difficulty) == len(attempts)
    if spec.algorithm.dynamic_sampling:  # some step refilled: more prompts than the 2 planned
        assert max(rolled_out) > 2
