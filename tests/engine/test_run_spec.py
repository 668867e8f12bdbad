"""The run spec refuses what cannot run, naming the field and the reason."""

import subprocess
import sys

import pytest

from engine.spec import SpecError, load_spec_file, parse_spec


def problems_of(data) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return dict(caught.value.problems)


def test_an_empty_spec_resolves_to_the_defaults_and_the_algorithms_settings():
    spec = parse_spec({})
    assert spec.model.path == "builtin:arith-tiny"
    assert spec.dataset.name == "arith"
    assert spec.algorithm.name == "grpo"
    # Filled in from the algorithm registry, so a stored spec is complete.
    assert spec.algorithm.advantage == "group_norm"
    assert spec.algorithm.aggregation == "seq-mean-token-mean"
    assert spec.algorithm.clip_eps_low == spec.algorithm.clip_eps_high == 0.2


@pytest.mark.parametrize(
    ("data", "strategy"),
    [
        ({}, "plain"),  # no rollout section at all: the default RolloutSpec is resolved too
        ({"rollout": {}}, "plain"),
        ({"algorithm": {"name": "dapo"}}, "dynamic_sampling"),
        ({"algorithm": {"name": "dapo"}, "rollout": {"n": 4}}, "dynamic_sampling"),
    ],
)
def test_the_rollout_strategy_follows_the_algorithm_with_or_without_a_rollout_section(data, strategy):
    # A stored spec is complete, and the recipe loads ROLLOUT_STRATEGIES[strategy]: None
    # there is "unknown rollout strategy None" at the first step.
    assert parse_spec(data).rollout.strategy == strategy


def test_an_unknown_algorithm_lists_the_known_ones():
    problems = problems_of({"algorithm": {"name": "ppo-magic"}})
    assert "unknown algorithm 'ppo-magic'" in problems["algorithm"]
    assert "grpo" in problems["algorithm"]


def test_an_unknown_dataset_lists_the_known_ones():
    problems = problems_of({"dataset": {"name": "gsm8k"}})
    assert "unknown built-in task 'gsm8k'; choose one of: arith" in problems["dataset.name"]


@pytest.mark.parametrize(
    "data, field",
    [
        ({"rollout": {"n": 0}}, "rollout.n"),
        ({"rollout": {"temperature": -1}}, "rollout.temperature"),
        ({"rollout": {"top_p": 1.5}}, "rollout.top_p"),
        ({"training": {"lr": 0}}, "training.lr"),
        ({"training": {"steps": "many"}}, "training.steps"),
        ({"dataset": {"eval_size": 0}}, "dataset.eval_size"),
        ({"algorithm": {"clip_eps_low": -0.1}}, "algorithm.clip_eps_low"),
    ],
)
def test_bad_numbers_name_their_field(data, field):
    assert field in problems_of(data)


def test_a_misspelt_key_is_refused_not_ignored():
    problems = problems_of({"rollout": {"temprature": 0.7}})
    assert problems == {"rollout.temprature": "Extra inputs are not permitted"}


def test_a_missing_model_folder_is_refused(tmp_path):
    problems = problems_of({"model": {"path": str(tmp_path / "nothing-here")}})
    assert "no model folder at" in problems["model.path"]


def test_the_example_spec_file_is_valid():
    from pathlib import Path

    import engine

    spec = load_spec_file(Path(engine.__file__).parent / "examples" / "arith-grpo.yaml")
    assert spec.dataset.name == "arith"


def test_an_unreadable_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec_file(tmp_path / "missing.yaml")


def test_the_contract_modules_do_not_import_torch():
    # The web tier imports these at start-up; torch costs seconds and hundreds of MB.
    code = (
        "import sys, engine, engine.spec, engine.events, engine.algorithms, engine.tasks, engine.assets\n"
        "engine.spec.parse_spec({})\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray', 'django') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "section, field", [("dataset", "path"), ("model", "path"), ("model", "reference")]
)
def test_a_path_the_file_system_cannot_look_up_is_a_spec_error_naming_the_field(tmp_path, section, field):
    # 300 characters: more than the 255 bytes a name may have on Linux file systems.
    too_long = str(tmp_path / ("x" * 300))
    with pytest.raises(SpecError) as refused:
        parse_spec({section: {field: too_long}})
    assert refused.value.problems == [
        (f"{section}.{field}", "a name in this path is longer than the file system allows (255 bytes per name)")
    ]


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"algorithm": {"name": "dapo"}},
        {"curriculum": {"strategy": "easy_to_hard"}},
        {"curriculum": {"strategy": "cures"}},
        {"curriculum": {"strategy": "dars"}},
        {"rollout": {"strategy": "april"}},
        {"orchestration": {"mode": "async"}, "resources": {"rollout_workers": 1}},
        {"backends": {"generation": "vllm"}},
        {"backends": {"training": "deepspeed", "zero_stage": 2}},
    ],
    ids=lambda data: ",".join(f"{k}={v}" for k, v in data.items()) or "defaults",
)
def test_a_stored_resolved_spec_parses_back_to_itself(data):
    # The platform stores the resolved spec and the worker parses it again at claim: a
    # resolved field that the schema then refused would fail every run at start.
    spec = parse_spec(data)
    assert parse_spec(spec.model_dump(mode="json")) == spec
