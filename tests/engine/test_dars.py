"""DARS (docs/algorithms.md §5): the extra-rollout schedules against the table computed
from the authors' code, the second round merged into its groups and filtered, the
merged groups' advantages, the spec's fields, learning end to end and resuming bit for bit."""

import importlib.util
from pathlib import Path

import pytest
import torch

from engine.algorithms.advantages import group_advantages
from engine.rollout.dars import DarsCollection
from engine.sampling.base import PlanItem
from engine.sampling.dars import extra_rollouts, max_total_rollouts
from engine.spec import SpecError, parse_spec
from engine.telemetry import Timeline

_path = Path(__file__).with_name("techniques.py")
_module_spec = importlib.util.spec_from_file_location("techniques", _path)
techniques = importlib.util.module_from_spec(_module_spec)
_module_spec.loader.exec_module(techniques)


# Δn by first-round #correct 0..8 at N = 8. The first two rows are algorithms.md's
# table (the released runs: no std, ET N_max 32, HW N_max 64). By hand, ET without std,
# #correct 1: acc 1/8, S = 2·(1/8)·(7/8) = 0.21875, A_peak = 0.5·8 = 4,
# (4 − 8·0.21875)/0.21875 = 10.29 → 11; #correct 0: acc → 0.5/8 = 0.0625,
# S = 0.1171875, (4 − 0.9375)/0.1171875 = 26.1 → 27, capped at 32 − 8 = 24.
# HW #correct 0: target 2·(1 − 0.0625)·4 = 7.5, (7.5 − 0.9375)/0.1171875 = 56 exactly.
# With std (S = 2·sqrt(acc(1−acc)), A_peak = 8), ET #correct 2: S = 2·sqrt(0.1875) =
# 0.8660, (8 − 6.928)/0.8660 = 1.24 → 2; HW #correct 1: target 2·0.875·8 = 14,
# S = 0.6614, (14 − 5.2915)/0.6614 = 13.2 → 14. Prompts at 50% or more get none.
SCHEDULE_TABLE = {
    ("equal", False): [24, 11, 3, 1, 0, 0, 0, 0, 0],
    ("hardness", False): [56, 24, 8, 3, 0, 0, 0, 0, 0],
    ("equal", True): [9, 5, 2, 1, 0, 0, 0, 0, 0],
    ("hardness", True): [23, 14, 6, 3, 0, 0, 0, 0, 0],
}


@pytest.mark.parametrize(("schedule", "with_std"), list(SCHEDULE_TABLE))
def test_extra_rollouts_for_n_8_match_the_table(schedule, with_std):
    max_total = max_total_rollouts(schedule, 8, None)
    assert max_total == {"equal": 32, "hardness": 64}[schedule]
    assert [extra_rollouts(correct, 8, schedule, max_total, with_std) for correct in range(9)] == SCHEDULE_TABLE[
        (schedule, with_std)
    ]


def test_the_cap_bounds_the_total_and_a_spec_cap_replaces_the_default():
    # ET, #correct 0 wants 27 more; with N_max = 16 only 16 − 8 = 8 fit.
    assert extra_rollouts(0, 8, "equal", 16, False) == 8
    assert extra_rollouts(0, 8, "equal", 8, False) == 0
    assert max_total_rollouts("hardness", 16, 40) == 40


def dars_spec(**curriculum):
    return parse_spec(
        {
            "curriculum": {"strategy": "dars", **curriculum},
            "rollout": {"prompts_per_step": 4, "n": 8},
            "resources": {"executor": "inprocess", "cpus": 1},
        }
    )


def test_the_second_round_joins_its_groups_and_zero_variance_groups_are_filtered():
    """Four prompts, N = 8, ET without std (Δn 24, 11, 3, 1 for 0..3 correct):
    p0 8/8 right → Δn 0, all right: filtered; p1 1/8 → Δn 11, of which 3 right: merged
    19 rollouts, 4 right; p2 0/8 → Δn 24, none right: all 32 wrong, filtered;
    p3 4/8 → Δn 0, trained as it is."""
    first = [[1.0] * 8, [1.0] + [0.0] * 7, [0.0] * 8, [1.0] * 4 + [0.0] * 4]
    second = [[1.0] * 3 + [0.0] * 8, [0.0] * 24]
    collector = techniques.ScriptedCollector([first, second])
    plan = [PlanItem(techniques.problem(i), 8) for i in range(4)]

    batch = DarsCollection(dars_spec()).collect(1, plan, lambda count: [], collector, Timeline(1))

    # Round 2 asked exactly for the schedule's counts, for the prompts under 50%.
    assert [(item.problem.id, item.n) for item in collector.plans[1]] == [("p1", 11), ("p2", 24)]
    assert [len(group.rollouts) for group in batch.generated] == [8, 19, 32, 8]
    # Merged rollouts carry their first-round group's id, so advantages see one group.
    assert {item.group for item in batch.generated[1].rollouts} == {batch.generated[1].id}
    assert [group.problem.id for group in batch.groups] == ["p1", "p3"]
    assert all(group.trainable for group in batch.groups)
    assert batch.metrics == {
        "dars/extra_rollouts": 35.0,
        "dars/positive_gained": 3.0,
        "dars/saved_share": 0.0,  # p2 was the one all-wrong prompt, and stayed so
        "dars/filtered_share": 0.5,
        "dars/extra_rollouts/acc_0": 24.0,
        "dars/extra_rollouts/acc_0_25": 11.0,
        "dars/extra_rollouts/acc_25_50": 0.0,
    }

    # Merged-group advantages. Dr.GRPO / DARS (R − mean): p1 has 4 right of 19, mean 4/19,
    # so a right rollout gets 15/19 = 0.7895, a wrong one −4/19 = −0.2105; p3 (4 of 8):
    # ±0.5. GRPO (÷ unbiased std): p1's std = sqrt(19/18 · (4/19)(15/19)) = sqrt(60/342) =
    # 0.41885, so right 0.78947/0.41885 = 1.8848 and wrong −0.21053/0.41885 = −0.5026.
    rollouts = batch.rollouts
    rewards = torch.tensor([item.reward for item in rollouts])
    ids = [item.group for item in rollouts]
    mean_only = group_advantages(rewards, ids, "group_mean")
    normalised = group_advantages(rewards, ids, "group_norm")
    p1 = slice(0, 19)
    assert torch.allclose(mean_only[p1][rewards[p1] == 1], torch.tensor(15 / 19))
    assert torch.allclose(mean_only[p1][rewards[p1] == 0], torch.tensor(-4 / 19))
    assert torch.allclose(mean_only[19:], torch.tensor([0.5] * 4 + [-0.5] * 4))
    assert torch.allclose(normalised[p1][rewards[p1] == 1], torch.tensor(1.8848), atol=1e-4)
    assert torch.allclose(normalised[p1][rewards[p1] == 0], torch.tensor(-0.5026), atol=1e-4)


def test_a_second_round_that_finds_a_correct_answer_saves_an_all_wrong_prompt_and_hw_weights_it_up():
    """HW: p0 0/8 → Δn 56, 2 of them right: saved; p1 2/8 → Δn 8."""
    collector = techniques.ScriptedCollector([[[0.0] * 8, [1.0] * 2 + [0.0] * 6], [[1.0] * 2 + [0.0] * 54, [0.0] * 8]])
    plan = [PlanItem(techniques.problem(i), 8) for i in range(2)]

    batch = DarsCollection(dars_spec(schedule="hardness")).collect(1, plan, lambda count: [], collector, Timeline(1))

    assert [item.n for item in collector.plans[1]] == [56, 8]
    assert batch.metrics["dars/saved_share"] == 1.0
    assert batch.metrics["dars/extra_rollouts/acc_0"] == 56.0
    assert batch.metrics["dars/extra_rollouts/acc_25_50"] == 8.0
    assert [len(group.rollouts) for group in batch.groups] == [64, 16]


def test_when_fewer_groups_survive_than_mini_batches_filtered_ones_top_up_untrained():
    collector = techniques.ScriptedCollector([[[1.0] * 8, [1.0] * 8, [1.0] * 4 + [0.0] * 4], []])
    spec = parse_spec(
        {
            "curriculum": {"strategy": "dars"},
            "rollout": {"prompts_per_step": 3, "n": 8},
            "training": {"mini_batches": 2},
            "resources": {"executor": "inprocess", "cpus": 1},
        }
    )
    plan = [PlanItem(techniques.problem(i), 8) for i in range(3)]

    batch = DarsCollection(spec).collect(1, plan, lambda count: [], collector, Timeline(1))

    assert len(collector.plans) == 1  # no prompt under 50%: no second round at all
    assert [(group.problem.id, group.trainable) for group in batch.groups] == [("p2", True), ("p0", False)]


def test_the_dars_curriculum_resolves_its_collection_and_refuses_what_contradicts_it():
    spec = parse_spec({"curriculum": {"strategy": "dars"}})
    assert spec.rollout.strategy == "dars"
    assert (spec.curriculum.schedule, spec.curriculum.max_rollouts, spec.curriculum.schedule_std) == ("equal", None, False)
    assert spec.curriculum.upper_threshold == 1.0
    refusals = {
        "rollout": {"curriculum": {"strategy": "dars"}, "rollout": {"strategy": "plain"}},
        "curriculum.schedule": {"curriculum": {"strategy": "dars", "schedule": "steep"}},
        "curriculum.max_rollouts": {"curriculum": {"strategy": "dars", "max_rollouts": 1}},
        "curriculum.upper_threshold": {"curriculum": {"strategy": "dars", "upper_threshold": 1.5}},
        "curriculum.pre_rollouts": {"curriculum": {"strategy": "dars", "pre_rollouts": 4}},
        "curriculum.schedule_std": {"curriculum": {"strategy": "uniform", "schedule_std": True}},
    }
    for field, data in refusals.items():
        with pytest.raises(SpecError) as refused:
            parse_spec(data)
        assert [loc for loc, _ in refused.value.problems] == [field], data
    with pytest.raises(SpecError, match="filters its own groups"):
        parse_spec({"curriculum": {"strategy": "dars"}, "algorithm": {"name": "dapo"}})
    with pytest.raises(ValueError, match="set curriculum.strategy dars"):
        DarsCollection(parse_spec({}))


# DARS's own loss (algorithms.md §5 step 7): R − mean, a constant normaliser, no KL,
# entropy bonus 0.001.
DARS_LOSS = {"name": "dr_grpo", "kl_placement": "off", "kl_coef": 0.0, "entropy_coef": 0.001}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dars_raises_held_out_accuracy_on_the_built_in_task():
    """16 steps of 16 prompts × 8 (ET, no std) with DARS's loss must beat step 0 by more
    than 3 standard errors on 512 held-out prompts (test_learning's yardstick)."""
    before, after, margin, sink = techniques.held_out_gain({"curriculum": {"strategy": "dars"}, "algorithm": DARS_LOSS})
    print(f"dars: val/acc/mean@1 {before:.3f} -> {after:.3f} (needs > +{margin:.3f})")
    assert after - before > margin
    steps = [m.values for m in sink.of_kind("metrics") if "dars/extra_rollouts" in m.values]
    assert sum(values["dars/extra_rollouts"] for values in steps) > 0


@pytest.mark.timeout(300)
def test_a_dars_run_resumes_bit_for_bit(tmp_path):
    sink = techniques.resumed_equals_straight(
        {"curriculum": {"strategy": "dars", "schedule": "hardness"}, "algorithm": DARS_LOSS}, tmp_path
    )
    resumed = [m.values for m in sink.of_kind("metrics") if "dars/extra_rollouts" in m.values]
    assert [len(resumed)] == [2] and any(values["dars/extra_rollouts"] > 0 for values in resumed)
