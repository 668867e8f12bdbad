"""The built-in task's hard held-out split (engine.tasks.arith), on which bench/cures_dars.py
measures Pass@K: held out like the test split (never a train prompt), only long chains,
selected by `training.eval_split`, refused for a dataset file; the default stays `test`."""

import json

import pytest

from engine.spec import SpecError, parse_spec
from engine.tasks import BUILTIN_TASKS


def test_the_hard_split_holds_out_long_chains_only():
    task = BUILTIN_TASKS.get("arith")
    hard = task.problems("hard", 300, seed=0)
    train = {problem.prompt for problem in task.problems("train", 20_000, seed=0)}
    assert {problem.difficulty for problem in hard} == {float(k) for k in range(task.hard_min_ops, task.max_ops + 1)}
    assert all(task.split_of(problem.prompt) == "test" for problem in hard)
    assert not train & {problem.prompt for problem in hard}
    assert task.problems("hard", 10, seed=0) == hard[:10]  # a stream, like the other splits
    # Every answer is the chain's value: the reference solution ends in it.
    assert all(problem.solution.endswith(f"#### {problem.answer}") for problem in hard)


def test_the_spec_selects_it_for_the_built_in_task_only(tmp_path):
    assert parse_spec({}).training.eval_split == "test"
    assert parse_spec({"training": {"eval_split": "hard"}}).training.eval_split == "hard"
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) + "\n" for i in range(20)))
    for data, field in [
        ({"training": {"eval_split": "harder"}}, "training.eval_split"),
        ({"dataset": {"path": str(path)}, "training": {"eval_split": "hard"}}, "training"),
    ]:
        with pytest.raises(SpecError) as refused:
            parse_spec(data)
        assert [loc for loc, _ in refused.value.problems] == [field]
        assert "eval_split" in str(refused.value)
