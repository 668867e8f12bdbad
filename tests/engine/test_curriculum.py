"""The sampler decides which train prompts a step draws and how many rollouts each gets:
`uniform` is the plain seeded pass every run had before curricula existed;
`easy_to_hard` admits only the easier prompts of the pool early and the whole pool once
its ramp is over. (A run resumed mid-ramp continuing bit for bit is one of the resume
cases of tests/engine/test_checkpoints.py.)"""

import math
import random
from collections import Counter

import pytest

from engine.data.sample import SAMPLE_PATH
from engine.problems import Problem
from engine.recipes.sync import TRAIN_POOL_SIZE, SyncRecipe
from engine.sampling import SAMPLERS
from engine.sampling.passes import EasyToHardSampler, pacing_quantile
from engine.spec import SpecError, parse_spec

SEED = 3
N = 4  # rollouts per prompt (rollout.n)
EASY_TO_HARD = {"strategy": "easy_to_hard", "start_quantile": 0.3, "ramp_steps": 10}


def recipe_with(curriculum: dict | None = None) -> SyncRecipe:
    data = {"rollout": {"n": N}, "resources": {"executor": "inprocess", "cpus": 1}, "seed": SEED}
    return SyncRecipe(parse_spec(data if curriculum is None else data | {"curriculum": curriculum}))


def drawn(recipe: SyncRecipe, step: int, count: int) -> list[Problem]:
    """The next `count` prompts the recipe's sampler plans at `step` (every one with n rollouts)."""
    plan = recipe.sampler.next(step, count)
    assert len(plan) == count and {item.n for item in plan} == {N}
    return [item.problem for item in plan]


def quantile_of(difficulties: list[float], q: float) -> float:
    """The smallest difficulty with at least a share q of the pool at or below it."""
    ranked = sorted(difficulties)
    return ranked[math.ceil(q * len(ranked)) - 1]


@pytest.fixture(scope="module")
def uniform_and_default():
    return recipe_with({"strategy": "uniform"}), recipe_with()


def test_uniform_draws_the_seeded_passes_every_run_drew_before(uniform_and_default):
    uniform, default = uniform_and_default
    count = TRAIN_POOL_SIZE + 50  # into the second pass

    problems = drawn(uniform, 1, count)

    # Before curricula: passes over the pool, each a fresh shuffle of one seeded
    # generator, drawn from the end.
    order_rng, expected = random.Random(SEED), []
    while len(expected) < count:
        order = list(range(TRAIN_POOL_SIZE))
        order_rng.shuffle(order)
        expected.extend(uniform.sampler.pool[index].id for index in reversed(order))
    assert [problem.id for problem in problems] == expected[:count]
    assert [problem.id for problem in drawn(default, 1, count)] == expected[:count]
    assert uniform.sampler.metrics(1) == {"curriculum/difficulty_quantile": 1.0, "curriculum/admission_rate": 1.0}


def test_easy_to_hard_admits_only_the_easy_quantile_first_and_the_whole_pool_after_the_ramp(uniform_and_default):
    uniform, _ = uniform_and_default
    pacing = recipe_with(EASY_TO_HARD)
    difficulties = [problem.difficulty for problem in pacing.sampler.pool]
    threshold = quantile_of(difficulties, 0.3)
    assert threshold < max(difficulties)  # arith's pool has harder chains to hold back
    # Without a curriculum the same step draws some of them.
    assert max(problem.difficulty for problem in drawn(uniform, 1, 64)) > threshold

    first = drawn(pacing, 1, 64)

    assert max(problem.difficulty for problem in first) <= threshold
    admitted = sum(d <= threshold for d in difficulties) / len(difficulties)
    assert pacing.sampler.metrics(1) == {
        "curriculum/difficulty_quantile": 0.3,
        "curriculum/admission_rate": pytest.approx(admitted),
    }
    assert 0.3 <= admitted < 1.0
    # Halfway up the ramp the bar is higher, at step ramp_steps + 1 it is gone.
    halfway = drawn(pacing, 6, 64)
    assert max(problem.difficulty for problem in halfway) <= quantile_of(difficulties, pacing_quantile(6, 0.3, 10))
    assert pacing.sampler.metrics(11) == {"curriculum/difficulty_quantile": 1.0, "curriculum/admission_rate": 1.0}
    # Passed-over prompts stayed in the pass: finishing it after the ramp draws every
    # prompt of the pool exactly once, the hardest included.
    rest = drawn(pacing, 11, len(pacing.sampler._order))
    assert Counter(problem.id for problem in first + halfway + rest) == Counter(p.id for p in pacing.sampler.pool)
    assert max(problem.difficulty for problem in rest) == max(difficulties)


def test_the_pacing_quantile_rises_linearly_over_the_ramp():
    # q(s) = 0.3 + 0.7 · min(1, (s − 1)/10): 0.3 at step 1, 0.65 at step 6, 1 from step 11.
    assert [pacing_quantile(step, 0.3, 10) for step in (0, 1, 6, 11, 50)] == pytest.approx([0.3, 0.3, 0.65, 1.0, 1.0])


def test_a_prompt_of_unknown_difficulty_counts_as_the_hardest():
    pool = [
        Problem(id=f"p{index}", prompt=f"{index}", answer="0", difficulty=difficulty, solution="")
        for index, difficulty in enumerate([1.0, 2.0, math.nan, math.nan])
    ]
    half_unknown = EasyToHardSampler(pool, n=4, seed=0, start_quantile=0.5, ramp_steps=2)

    # q(1) = 0.5: the 2nd of 4 ranked difficulties (NaN ranked last), 2.0.
    assert half_unknown.threshold(1) == 2.0
    assert half_unknown.metrics(1) == {"curriculum/difficulty_quantile": 0.5, "curriculum/admission_rate": 0.5}
    assert {item.problem.id for item in half_unknown.next(1, 2)} == {"p0", "p1"}
    # q(2) = 0.5 + 0.5 · 1/2 = 0.75 reaches into the unknown ones: every prompt is
    # admissible, and the two passed over are what is left of the pass.
    assert half_unknown.threshold(2) == math.inf
    assert half_unknown.metrics(2) == {"curriculum/difficulty_quantile": 0.75, "curriculum/admission_rate": 1.0}
    assert {item.problem.id for item in half_unknown.next(2, 2)} == {"p2", "p3"}


def test_a_sampler_continues_from_its_state_dict():
    pool = [Problem(id=f"p{index}", prompt=f"{index}", answer="0", difficulty=1.0, solution="") for index in range(5)]
    one, other = SAMPLERS.load("uniform")(pool, n=2, seed=7), SAMPLERS.load("uniform")(pool, n=2, seed=99)
    one.next(1, 3)  # 2 of the first pass left

    other.load_state_dict(one.state_dict())

    # The rest of the pass, then a fresh pass from the same generator: equal draws.
    assert [item.problem.id for item in other.next(2, 7)] == [item.problem.id for item in one.next(2, 7)]


@pytest.mark.parametrize(
    ("curriculum", "field", "reason"),
    [
        # Every registered sampler is offered (the registry grows: CurES, DARS, …).
        ({"strategy": "nope"}, "curriculum.strategy", "choose one of: " + ", ".join(SAMPLERS.names())),
        ({"strategy": "easy_to_hard", "start_quantile": 0}, "curriculum.start_quantile", "greater than 0"),
        ({"strategy": "easy_to_hard", "start_quantile": 1.5}, "curriculum.start_quantile", "less than or equal to 1"),
        ({"strategy": "easy_to_hard", "ramp_steps": 0}, "curriculum.ramp_steps", "greater than or equal to 1"),
        ({"ramp_steps": 5}, "curriculum.ramp_steps", "'uniform' does not use ramp_steps"),
        ({"strategy": "easy_to_hard", "ramp": 5}, "curriculum.ramp", "Extra inputs"),
        ({"prior_alpha": 0}, "curriculum.prior_alpha", "greater than 0"),
    ],
)
def test_a_bad_curriculum_is_refused_naming_the_field(curriculum, field, reason):
    with pytest.raises(SpecError) as refused:
        parse_spec({"curriculum": curriculum})

    [(where, why)] = refused.value.problems
    assert where == field and reason in why


def test_easy_to_hard_needs_the_difficulty_column_of_a_dataset_file():
    columns = {"prompt": "question", "id": "id"}
    dataset = {"path": str(SAMPLE_PATH), "columns": columns, "answer_format": "gsm8k"}

    with pytest.raises(SpecError) as refused:
        parse_spec({"dataset": dataset, "curriculum": {"strategy": "easy_to_hard"}})
    labelled = dataset | {"columns": columns | {"difficulty": "difficulty"}}
    paced = parse_spec({"dataset": labelled, "curriculum": {"strategy": "easy_to_hard"}})

    assert refused.value.problems[0][0] == "curriculum"
    assert "dataset.columns.difficulty" in refused.value.problems[0][1]
    assert (paced.curriculum.start_quantile, paced.curriculum.ramp_steps) == (0.3, 20)
