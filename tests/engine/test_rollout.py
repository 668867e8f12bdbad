"""Rollouts as the collector makes them and the recipe trains on them: every token carries
the policy version that sampled it, statuses stay distinct (completed, truncated,
aborted), and a group DAPO's dynamic sampling only topped the batch up with gets
exactly zero advantage, overlong shaping or not."""

import dataclasses
import json

import pytest
import torch

from engine.algorithms.advantages import group_advantages
from engine.algorithms.shaping import OverlongShaping
from engine.inference.interface import Request
from engine.models import encode_prompts
from engine.recipes.sync import SyncRecipe
from engine.rollout.types import Group, Rollout
from engine.spec import parse_spec
from engine.tasks import BUILTIN_TASKS
from engine.telemetry import Timeline, UpdateResult, sample_records, step_metrics

TINY = {
    "dataset": {"eval_size": 4},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 24},
    "training": {"steps": 3, "lr": 1e-3, "warmup_steps": 0},
    "resources": {"executor": "inprocess", "cpus": 1},
}


def recording_collects(recipe: SyncRecipe) -> list[list[Group]]:
    """What each call of the recipe's collector returned, appended as the run goes."""
    calls: list[list[Group]] = []
    collect = recipe.collector.collect

    def recording(*args, **kwargs):
        groups = collect(*args, **kwargs)
        calls.append(groups)
        return groups

    recipe.collector.collect = recording
    return calls


def recording_optimizer_steps(recipe: SyncRecipe) -> list[Rollout]:
    """Every rollout the training backend's optimiser steps were given."""
    trained: list[Rollout] = []
    optimizer_step = recipe.training.optimizer_step

    def recording(mini_batch, loss, statistics):
        trained.extend(mini_batch)
        optimizer_step(mini_batch, loss, statistics)

    recipe.training.optimizer_step = recording
    return trained


# ----------------------------------------------------------------- per-token versions
@pytest.mark.parametrize(("mini_batches", "per_step"), [(1, 1), (2, 2)])
def test_every_token_of_step_k_carries_the_version_of_the_weights_that_sampled_it(mini_batches, per_step):
    recipe = SyncRecipe(parse_spec(TINY | {"training": TINY["training"] | {"mini_batches": mini_batches}}))
    collected = recording_collects(recipe)

    for step in (1, 2, 3):
        events = recipe.step()
        # Version = optimiser steps so far: step k samples with the weights of the
        # (k − 1)·mini_batches steps before it; 1 a step → 0, 1, 2; 2 a step → 0, 2, 4.
        expected = (step - 1) * per_step
        rollouts = [item for group in collected[-1] for item in group.rollouts]
        assert len(rollouts) == 8 and all(item.token_ids for item in rollouts)
        assert {version for item in rollouts for version in item.versions} == {expected}
        assert all(len(item.versions) == len(item.token_ids) == len(item.logprobs) for item in rollouts)
        [samples] = [event for event in events if event.kind == "samples"]
        assert {(s.first_version, s.last_version) for s in samples.samples} == {(expected, expected)}
        # After the update the generation backend holds the new weights' version.
        assert recipe.collector.version == recipe.training.version == step * per_step

    # An evaluation after step 3 samples with the weights of version 3 · per_step.
    [evaluated] = [event for event in recipe.evaluate(3) if event.kind == "samples"]
    assert {(s.first_version, s.last_version) for s in evaluated.samples} == {(3 * per_step, 3 * per_step)}


# ----------------------------------------------------------------- statuses
@pytest.fixture(scope="module")
def recipe():
    return SyncRecipe(parse_spec(TINY))


def test_the_collector_tells_completed_from_truncated_responses(recipe):
    stop = set(recipe.collector.params.stop_token_ids)
    groups = recipe.collector.collect(recipe.sampler.next(1, 4), first_group=0, timeline=Timeline(1))
    rollouts = [item for group in groups for item in group.rollouts]

    # 24 tokens: the shortest chains end within the budget, the longer ones do not.
    statuses = {item.status for item in rollouts}
    assert statuses == {"completed", "truncated"}
    for item in rollouts:
        if item.status == "completed":  # ended with a stop token, within the budget
            assert item.token_ids[-1] in stop and item.length <= 24
        else:  # used the whole budget without one
            assert item.length == 24 and not stop & set(item.token_ids)
    assert [group.id for group in groups] == [0, 1, 2, 3] and all(len(group.rollouts) == 4 for group in groups)


def test_an_aborted_sample_stays_aborted_and_is_never_counted_as_truncated(recipe):
    collector = recipe.collector
    backend = collector.backend
    hardest = max(recipe.sampler.pool[:200], key=lambda problem: problem.difficulty)  # a long chain: no early stop
    [prompt_ids] = encode_prompts(collector.tokenizer, [hardest.prompt], collector.chat_template)
    # A budget of 4 tokens, stopped one token short of it: 3 decoded, then aborted.
    params = dataclasses.replace(collector.params, n=2, max_new_tokens=4)
    backend.generator = collector.generator
    backend.submit(Request("to-abort", prompt_ids, params))
    finished = [sample for _ in range(3) for sample in backend.step()]  # admit (1st token), then 2 more

    aborted = backend.abort("to-abort")

    assert finished == [] and not backend.has_unfinished()
    assert [(s.status, len(s.token_ids), s.versions) for s in aborted] == [("aborted", 3, [0, 0, 0])] * 2
    rollouts = [
        Rollout(
            group=0,
            problem=hardest,
            prompt_ids=s.prompt_ids,
            token_ids=s.token_ids,
            logprobs=s.logprobs,
            versions=s.versions,
            status=s.status,
        )
        for s in aborted
    ]
    # Downstream it is an aborted sample: its own ratio, not the length-truncation one ...
    values = step_metrics(
        [Group(id=0, problem=hardest, rollouts=rollouts)],
        torch.zeros(2),
        torch.zeros(2),
        UpdateResult(metrics={}, trained_tokens=0),
        {"step": 1.0},
        rollout_busy=0.0,
        trainer_busy=0.0,
        devices=1,
    )
    assert values["rollout/aborted_ratio"] == 1.0 and values["rollout/clip_ratio"] == 0.0
    # ... its drill-down records say aborted (overlong shaping: the next test) ...
    assert {record.status for record in sample_records(rollouts, per_prompt=4)} == {"aborted"}
    # ... and the run's backend is clean for the next collection.
    assert len(collector.collect(recipe.sampler.next(1, 1), first_group=0, timeline=Timeline(1))[0].rollouts) == 4


def test_overlong_shaping_counts_only_truncated_samples_as_truncated():
    problem = BUILTIN_TASKS.get("arith").problems("train", 1, seed=0)[0]

    def rollout(length: int, status: str) -> Rollout:
        return Rollout(0, problem, [1], [7] * length, [0.0] * length, [0] * length, status)

    # max_new_tokens 10, buffer ⌊10 · 0.2⌋ = 2: lengths 9 and 10 are in the buffer.
    shaping = OverlongShaping(parse_spec({"algorithm": {"name": "dapo"}, "rollout": {"max_new_tokens": 10}}))
    rollouts = [rollout(10, "truncated"), rollout(9, "aborted"), rollout(9, "completed"), rollout(5, "completed")]

    values = shaping(rollouts)

    # Penalties −(L − 8)/2: −1 (10 tokens), −0.5, −0.5, 0 (5 tokens); mean −0.5.
    assert [item.shaping for item in rollouts] == [-1.0, -0.5, -0.5, 0.0]
    assert values["overlong/penalty_mean"] == -0.5
    assert values["overlong/truncated_ratio"] == 0.25  # the one truncated, not the aborted one
    assert values["overlong/buffer_ratio"] == 0.5  # 9 tokens: in the buffer, short of the budget


# ----------------------------------------------------------------- DAPO's filtered groups
def test_dapo_trains_on_whole_distinct_groups_informative_ones_first():
    recipe = SyncRecipe(
        parse_spec(
            TINY | {"algorithm": {"name": "dapo"}, "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 80}}
        )
    )
    trained = recording_optimizer_steps(recipe)
    events = recipe.step()
    values = events[0].values

    groups: dict[int, list[float]] = {}
    for item in trained:
        groups.setdefault(item.group, []).append(item.reward)
    assert len(groups) == 4 and all(len(rewards) == 4 for rewards in groups.values())
    generated_groups = sum(r.attempts for r in events[2].results) // 4
    kept = round(values["dapo/keep_rate"] * generated_groups)
    assert sum(max(rewards) != min(rewards) for rewards in groups.values()) == min(4, kept)


def test_a_group_dynamic_sampling_only_topped_up_with_gets_exactly_zero_advantage_under_overlong_shaping(tmp_path):
    # Arith prompts whose recorded answer no chain reaches: every response is wrong, so
    # every group is uniform (all rewards 0) and DAPO's filter keeps none; with one
    # round allowed, both of the batch's groups only top it up.
    never = tmp_path / "never.jsonl"
    problems = BUILTIN_TASKS.get("arith").problems("train", 40, seed=0)
    never.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "answer": "-1000"}) + "\n" for p in problems))
    recipe = SyncRecipe(
        parse_spec(
            TINY
            | {
                "dataset": {"path": str(never), "columns": {"id": "id"}, "eval_size": 4},
                "algorithm": {"name": "dapo", "max_gen_rounds": 1, "oversample": 1.0},
            }
        )
    )
    trained = recording_optimizer_steps(recipe)

    values = recipe.step()[0].values

    assert values["dapo/keep_rate"] == 0.0 and values["dapo/gen_rounds"] == 1.0
    assert len(trained) == 8 and {item.reward for item in trained} == {0.0}
    # Overlong shaping is on (a 24-token budget, buffer ⌊24 · 0.2⌋ = 4): truncated
    # responses get −1, a completed 19-token one 0, so shaped rewards differ within a group ...
    shaped = torch.tensor([item.reward + item.shaping for item in trained])
    assert values["overlong/penalty_mean"] < 0 and len(set(shaped.tolist())) > 1
    # ... and normalising them would hand the filtered groups a gradient ...
    assert group_advantages(shaped, [item.group for item in trained], "group_norm").abs().max() > 0.5
    # ... which they must not get: exactly zero, so no loss and no gradient from them.
    assert [item.advantage for item in trained] == [0.0] * 8
    assert values["advantages/abs_mean"] == 0.0 and values["actor/pg_loss"] == 0.0
