"""The algorithm registry, DAPO's dynamic sampling and overlong shaping, and the spec's algorithm settings."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.algorithms import ALGORITHMS
from engine.algorithms.shaping import overlong_buffer_len, overlong_penalty
from engine.rollout.strategies import fill_batch, is_informative
from engine.spec import SpecError, parse_spec


def test_the_five_algorithms_are_configurations_of_the_shared_parts():
    assert ALGORITHMS.names() == ["dapo", "dr_grpo", "grpo", "gspo", "rloo"]
    grpo, dr_grpo, dapo, gspo, rloo = (ALGORITHMS.get(n) for n in ["grpo", "dr_grpo", "dapo", "gspo", "rloo"])
    assert (grpo.advantage, grpo.aggregation, grpo.kl_placement, grpo.kl_estimator, grpo.kl_coef) == (
        "group_norm", "seq-mean-token-mean", "loss", "k3", 0.04,
    )  # fmt: skip
    assert (dr_grpo.advantage, dr_grpo.aggregation) == ("group_mean", "seq-mean-token-sum-norm")
    assert (dapo.aggregation, dapo.clip_eps_low, dapo.clip_eps_high, dapo.kl_placement) == (
        "token-mean", 0.2, 0.28, "off",
    )  # fmt: skip
    assert dapo.dynamic_sampling and dapo.max_gen_rounds == 10 and dapo.overlong_buffer_fraction == 0.2
    assert (gspo.ratio_level, gspo.clip_eps_low, gspo.clip_eps_high) == ("sequence", 3e-4, 4e-4)
    assert (rloo.advantage, rloo.kl_placement, rloo.kl_estimator) == ("leave_one_out", "reward", "k1")
    assert not any(ALGORITHMS.get(n).dynamic_sampling for n in ["grpo", "dr_grpo", "gspo", "rloo"])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo", "rloo"])
def test_a_spec_naming_an_algorithm_is_filled_with_its_defaults(name):
    algorithm = parse_spec({"algorithm": {"name": name}}).algorithm
    defaults = vars(ALGORITHMS.get(name))
    assert {key: getattr(algorithm, key) for key in defaults if key != "description"} == {
        key: value for key, value in defaults.items() if key != "description"
    }


def test_a_setting_given_in_the_spec_wins_over_the_default():
    algorithm = parse_spec({"algorithm": {"name": "dapo", "clip_eps_high": 0.3, "max_gen_rounds": 3}}).algorithm
    assert algorithm.clip_eps_high == 0.3 and algorithm.max_gen_rounds == 3 and algorithm.clip_eps_low == 0.2


def problems_of(data) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return dict(caught.value.problems)


@pytest.mark.parametrize(
    "algorithm, field, reason",
    [
        ({"name": "dapo", "kl_coef": 0.1}, "algorithm.kl_coef", "no effect with kl_placement 'off'"),
        ({"name": "grpo", "kl_coef": 0}, "algorithm.kl_coef", "kl_coef must be above 0"),
        ({"name": "grpo", "kl_placement": "prior"}, "algorithm.kl_placement", "'loss', 'reward' or 'off'"),
        ({"kl_estimator": "k4"}, "algorithm.kl_estimator", "'k1', 'k2', 'k3' or 'low_var_kl'"),
        ({"ratio_level": "batch"}, "algorithm.ratio_level", "'sequence' or 'token'"),
        ({"dual_clip_c": 0.5}, "algorithm.dual_clip_c", "0 (off) or above 1"),
        ({"oversample": 0.5}, "algorithm.oversample", "greater than or equal to 1"),
        ({"max_gen_rounds": 0}, "algorithm.max_gen_rounds", "greater than or equal to 1"),
        ({"overlong_buffer_fraction": 1.0}, "algorithm.overlong_buffer_fraction", "less than 1"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_field(algorithm, field, reason):
    assert reason in problems_of({"algorithm": algorithm})[field]


def test_mini_batches_and_group_size_are_checked():
    assert "exceeds rollout.prompts_per_step (2)" in problems_of(
        {"rollout": {"prompts_per_step": 2}, "training": {"mini_batches": 3}}
    )["training"]
    assert "greater than or equal to 2" in problems_of({"rollout": {"n": 1}})["rollout.n"]
    assert "greater than or equal to 1" in problems_of({"training": {"epochs": 0}})["training.epochs"]


# ----------------------------------------------------------------- overlong shaping
@pytest.mark.parametrize(
    "length, factor, expected",
    [
        (50, 1.0, 0.0),  # well inside the budget
        (80, 1.0, 0.0),  # the last length before the buffer (100 − 20)
        (90, 1.0, -0.5),  # half-way into the buffer: −(90 − 80) / 20
        (100, 1.0, -1.0),  # the whole budget used (truncated): −factor
        (90, 0.5, -0.25),
    ],
)
def test_overlong_penalty(length, factor, expected):
    assert overlong_penalty(length, max_len=100, buffer_len=20, factor=factor) == pytest.approx(expected)


def test_overlong_buffer_is_a_fraction_of_the_budget_and_zero_turns_it_off():
    assert overlong_buffer_len(20480, 0.2) == 4096  # the paper's 4096 of 20480
    assert overlong_buffer_len(256, 0.2) == 51
    assert overlong_penalty(256, max_len=256, buffer_len=0, factor=1.0) == 0.0


# ----------------------------------------------------------------- dynamic sampling
class ScriptedRounds:
    """Hands out prepared groups (lists of 0/1 scores) in order, recording each request."""

    def __init__(self, groups):
        self.groups = list(groups)
        self.requests = []

    def __call__(self, count):
        self.requests.append(count)
        handed, self.groups = self.groups[:count], self.groups[count:]
        return handed


def test_dynamic_sampling_refills_until_the_batch_is_full_of_informative_groups():
    rounds = ScriptedRounds([[1, 1], [0, 1], [0, 0], [1, 0], [1, 1], [0, 1], [1, 0]])
    filled = fill_batch(rounds, lambda scores: scores, batch_groups=3, oversample=1.0, max_rounds=10)
    # Round 1 asks for 3 and keeps [0, 1]; round 2 asks for the 2 missing and keeps [1, 0];
    # round 3 asks for 1 and keeps [0, 1].
    assert rounds.requests == [3, 2, 1]
    assert filled.groups == [[0, 1], [1, 0], [0, 1]]
    assert (filled.generated, filled.kept, filled.rounds, filled.keep_rate) == (6, 3, 3, 0.5)


def test_oversampling_truncates_to_exactly_the_batch():
    rounds = ScriptedRounds([[0, 1], [1, 1], [1, 0], [0, 1], [1, 0], [0, 0]])
    filled = fill_batch(rounds, lambda scores: scores, batch_groups=2, oversample=3.0, max_rounds=10)
    assert rounds.requests == [6]  # ceil(2 × 3)
    assert filled.groups == [[0, 1], [1, 0]]
    assert (filled.generated, filled.kept, filled.rounds) == (6, 4, 1)


def test_when_the_rounds_run_out_the_batch_is_topped_up_with_filtered_groups():
    rounds = ScriptedRounds([[1, 1], [0, 1], [0, 0], [1, 1], [0, 0], [1, 1]])
    filled = fill_batch(rounds, lambda scores: scores, batch_groups=3, oversample=1.0, max_rounds=2)
    assert rounds.requests == [3, 2]
    # One informative group in two rounds; the rest of the batch is filtered-out groups.
    assert filled.groups == [[0, 1], [1, 1], [0, 0]]
    assert (filled.generated, filled.kept, filled.rounds) == (5, 1, 2)


@given(
    st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=4), min_size=40, max_size=60),
    st.integers(1, 8),
    st.floats(1.0, 3.0),
    st.integers(1, 5),
)
def test_a_filled_batch_always_has_exactly_the_batch_size_informative_groups_first(groups, size, oversample, rounds):
    filled = fill_batch(ScriptedRounds(groups), lambda scores: scores, size, oversample, rounds)
    assert len(filled.groups) == size
    informative = [is_informative(group) for group in filled.groups]
    assert informative == sorted(informative, reverse=True)  # kept ones first
    assert sum(informative) == min(filled.kept, size)
