"""The built-in arith task: splits, determinism, the checker, difficulty and the long tail."""

import numpy as np
import pytest

from engine.models import build_tokenizer
from engine.tasks import BUILTIN_TASKS
from engine.tasks.arith import ArithTask

TASK: ArithTask = BUILTIN_TASKS.get("arith")


def test_the_task_is_registered():
    assert "arith" in BUILTIN_TASKS
    assert TASK.name == "arith"


def test_a_problem_reads_as_documented():
    # 7 +5 -3 +8 in a chain of at most 12 operations: 15 words per line.
    from engine.tasks.arith import chain_lines

    lines = chain_lines(7, [("+", 5), ("-", 3), ("+", 8)], width=15)
    assert [line.split()[-4:] for line in lines] == [
        ["7", "+5", "-3", "+8"],
        ["=", "12", "-3", "+8"],
        ["-3", "=", "9", "+8"],
        ["9", "+8", "=", "17"],
    ]
    assert all(len(line.split()) == 15 for line in lines)


def test_splits_are_disjoint_and_every_problem_is_in_its_split():
    train = TASK.problems("train", 3000, seed=0)
    test = TASK.problems("test", 1000, seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert all(TASK.split_of(p.prompt) == "test" for p in test)
    # Another seed draws other problems, never crossing the split either.
    assert not {p.prompt for p in TASK.problems("train", 3000, seed=7)} & {p.prompt for p in test}


def test_problems_are_deterministic_and_prefix_stable():
    assert TASK.problems("train", 50, seed=3) == TASK.problems("train", 50, seed=3)
    assert TASK.problems("train", 80, seed=3)[:50] == TASK.problems("train", 50, seed=3)
    assert TASK.problems("train", 50, seed=3) != TASK.problems("train", 50, seed=4)


def test_ids_are_content_hashes():
    problems = TASK.problems("train", 2000, seed=0)
    by_id = {}
    for problem in problems:
        assert by_id.setdefault(problem.id, problem.prompt) == problem.prompt


def test_reference_solutions_are_correct_and_values_stay_in_range():
    for problem in TASK.problems("train", 500, seed=1):
        assert TASK.score(problem, problem.solution) == 1.0
        numbers = [int(word) for word in (problem.prompt + problem.solution).split() if word.isdigit()]
        assert all(0 <= n <= TASK.max_value for n in numbers)
        assert problem.difficulty == len(problem.prompt.split()) - problem.prompt.split().count(".") - 1


def test_the_checker_reads_the_last_final_answer():
    problem = TASK.problems("test", 1, seed=0)[0]
    right, wrong = problem.answer, str(int(problem.answer) + 1)
    assert TASK.score(problem, f"#### {right}") == 1.0
    assert TASK.score(problem, f"some steps\n#### {wrong}\n#### {right}") == 1.0
    assert TASK.score(problem, f"#### {right}\n#### {wrong}") == 0.0
    assert TASK.score(problem, right) == 0.0  # no marker, no credit
    assert TASK.score(problem, "") == 0.0


def test_difficulty_follows_a_power_law_and_lengths_have_a_long_tail():
    tokenizer = build_tokenizer()
    problems = TASK.problems("train", 4000, seed=0)
    ks = np.array([p.difficulty for p in problems])
    assert ks.min() == 1 and ks.max() == TASK.max_ops
    # P(k) ∝ k^-1.2: about 39% of chains have one operation, about 2% have twelve.
    assert np.mean(ks == 1) == pytest.approx(0.39, abs=0.03)
    assert np.mean(ks == 12) == pytest.approx(0.02, abs=0.01)
    # Response tokens = solution + EOS = 16k + 3 (k lines of 15 words and a newline, then
    # "####", the answer, EOS); the power law on k makes the tail: p99 at least 4 × p50.
    lengths = np.array([len(tokenizer(p.solution, add_special_tokens=False)["input_ids"]) + 1 for p in problems])
    assert np.array_equal(lengths, 16 * ks + 3)
    p50, p99 = np.percentile(lengths, [50, 99])
    assert p99 >= 4 * p50


def test_the_checker_is_the_registered_arith_verifier():
    from engine.verifiers import VERIFIERS

    problem = TASK.problems("train", 1, seed=0)[0]
    for response in [problem.solution, f"#### {problem.answer}", "#### -1", problem.answer, ""]:
        assert TASK.score(problem, response) == VERIFIERS.get("arith")(response, problem.answer)
