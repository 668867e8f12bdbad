"""The curriculum decides which train prompts a step may draw: `uniform` is the plain
seeded pass every run had before curricula existed; `easy_to_hard` admits only the
easier prompts of the pool early and the whole pool once its ramp is over, and a run
resumed mid-ramp continues bit for bit."""

import importlib.util
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from engine.checkpoint import checkpoint_folder
from engine.curriculum import DifficultyPacing, pacing_quantile
from engine.data.sample import SAMPLE_PATH
from engine.events import ListSink
from engine.orchestration import run
from engine.spec import SpecError, parse_spec
from engine.trainer import TRAIN_POOL_SIZE, Trainer

SEED = 3
EASY_TO_HARD = {"strategy": "easy_to_hard", "start_quantile": 0.3, "ramp_steps": 10}


def _checkpoint_helpers():
    """tests/engine/test_checkpoints.py's comparison helpers (tests are not a package)."""
    path = Path(__file__).with_name("test_checkpoints.py")
    module_spec = importlib.util.spec_from_file_location("checkpoint_test_helpers", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


checkpoints = _checkpoint_helpers()


def trainer_with(curriculum: dict | None = None) -> Trainer:
    data = {"resources": {"executor": "inprocess", "cpus": 1}, "seed": SEED}
    return Trainer(parse_spec(data if curriculum is None else data | {"curriculum": curriculum}))


def at_step(trainer: Trainer, step: int, count: int) -> list:
    trainer.step_count = step  # what step() has counted when it draws its prompts
    return trainer.next_prompts(count)


def quantile_of(difficulties: list[float], q: float) -> float:
    """The smallest difficulty with at least a share q of the pool at or below it."""
    ranked = sorted(difficulties)
    return ranked[math.ceil(q * len(ranked)) - 1]


@pytest.fixture(scope="module")
def uniform_and_default():
    return trainer_with({"strategy": "uniform"}), trainer_with()


def test_uniform_draws_the_seeded_passes_every_run_drew_before(uniform_and_default):
    uniform, default = uniform_and_default
    count = TRAIN_POOL_SIZE + 50  # into the second pass

    drawn = [problem.id for problem in uniform.next_prompts(count)]

    # Before curricula: passes over the pool, each a fresh shuffle of one seeded
    # generator, drawn from the end.
    order_rng, expected = random.Random(SEED), []
    while len(expected) < count:
        order = list(range(TRAIN_POOL_SIZE))
        order_rng.shuffle(order)
        expected.extend(uniform.train_pool[index].id for index in reversed(order))
    assert drawn == expected[:count]
    assert [problem.id for problem in default.next_prompts(count)] == drawn
    assert uniform.curriculum.metrics(1) == {"curriculum/difficulty_quantile": 1.0, "curriculum/admission_rate": 1.0}


def test_easy_to_hard_admits_only_the_easy_quantile_first_and_the_whole_pool_after_the_ramp(uniform_and_default):
    uniform, _ = uniform_and_default
    pacing = trainer_with(EASY_TO_HARD)
    difficulties = [problem.difficulty for problem in pacing.train_pool]
    threshold = quantile_of(difficulties, 0.3)
    assert threshold < max(difficulties)  # arith's pool has harder chains to hold back
    # Without a curriculum the same step draws some of them.
    assert max(problem.difficulty for problem in at_step(uniform, 1, 64)) > threshold

    first = at_step(pacing, 1, 64)

    assert max(problem.difficulty for problem in first) <= threshold
    admitted = sum(d <= threshold for d in difficulties) / len(difficulties)
    assert pacing.curriculum.metrics(1) == {
        "curriculum/difficulty_quantile": 0.3,
        "curriculum/admission_rate": pytest.approx(admitted),
    }
    assert 0.3 <= admitted < 1.0
    # Halfway up the ramp the bar is higher, at step ramp_steps + 1 it is gone.
    halfway = at_step(pacing, 6, 64)
    assert max(problem.difficulty for problem in halfway) <= quantile_of(difficulties, pacing_quantile(6, 0.3, 10))
    assert pacing.curriculum.metrics(11) == {"curriculum/difficulty_quantile": 1.0, "curriculum/admission_rate": 1.0}
    # Passed-over prompts stayed in the pass: finishing it after the ramp draws every
    # prompt of the pool exactly once, the hardest included.
    rest = at_step(pacing, 11, len(pacing._order))
    assert Counter(problem.id for problem in first + halfway + rest) == Counter(p.id for p in pacing.train_pool)
    assert max(problem.difficulty for problem in rest) == max(difficulties)


def test_a_prompt_of_unknown_difficulty_counts_as_the_hardest():
    half_unknown = DifficultyPacing("easy_to_hard", [1.0, 2.0, math.nan, math.nan], start_quantile=0.5, ramp_steps=2)

    assert half_unknown.threshold(1) == 2.0
    assert half_unknown.admits(2.0, 2.0) and not half_unknown.admits(math.nan, 2.0)
    assert half_unknown.metrics(1) == {"curriculum/difficulty_quantile": 0.5, "curriculum/admission_rate": 0.5}
    # q = 0.75 reaches into the unknown ones, so every prompt is admissible.
    assert half_unknown.threshold(2) == math.inf and half_unknown.admits(math.nan, math.inf)
    assert half_unknown.metrics(2) == {"curriculum/difficulty_quantile": 0.75, "curriculum/admission_rate": 1.0}


def test_a_run_resumed_mid_ramp_continues_bit_for_bit(tmp_path):
    spec = parse_spec(checkpoints.spec().model_dump() | {"curriculum": {"strategy": "easy_to_hard", "ramp_steps": 4}})
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight, first, second = ListSink(), ListSink(), ListSink()
    steps_done = lambda: sum(1 for h in first.of_kind("heartbeat") if h.step > 0)  # noqa: E731
    resume_at, steps = checkpoints.RESUME_AT, checkpoints.STEPS

    assert run(spec, straight, run_dir=straight_dir) == "succeeded"
    assert run(spec, first, should_stop=lambda: steps_done() >= resume_at, run_dir=resumed_dir) == "cancelled"
    assert run(spec, second, run_dir=resumed_dir) == "succeeded"

    assert f"resumed at step {resume_at}" in second.of_kind("log")[0].message
    record = checkpoints.per_step_record
    assert record(second, after=resume_at) == record(straight, after=resume_at)
    checkpoints.assert_same_weights_and_state(
        checkpoint_folder(straight_dir, steps), checkpoint_folder(resumed_dir, steps)
    )
    # The resumed steps were mid-ramp: the curriculum still held prompts back.
    step_after_resume = next(m.values for m in second.of_kind("metrics") if "curriculum/admission_rate" in m.values)
    assert step_after_resume["curriculum/difficulty_quantile"] == pytest.approx(pacing_quantile(resume_at + 1, 0.3, 4))
    assert step_after_resume["curriculum/admission_rate"] < 1.0


@pytest.mark.parametrize(
    ("curriculum", "field", "reason"),
    [
        ({"strategy": "cures"}, "curriculum.strategy", "choose one of: easy_to_hard, uniform"),
        ({"strategy": "easy_to_hard", "start_quantile": 0}, "curriculum.start_quantile", "greater than 0"),
        ({"strategy": "easy_to_hard", "start_quantile": 1.5}, "curriculum.start_quantile", "less than or equal to 1"),
        ({"strategy": "easy_to_hard", "ramp_steps": 0}, "curriculum.ramp_steps", "greater than or equal to 1"),
        ({"ramp_steps": 5}, "curriculum.ramp_steps", "'uniform' does not use ramp_steps"),
        ({"strategy": "easy_to_hard", "ramp": 5}, "curriculum.ramp", "Extra inputs"),
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
