"""APRIL (engine.rollout.april): the buffer's order and what it keeps, group completion,
version stamping across a weight update mid-sequence, the stale-prefix choices, equality
with the plain strategy at over_sampling = batch, the spec's refusals, a bit-for-bit
resume with a non-empty buffer, and learning end to end.

The hand-computed cases decode greedily with the built-in model, which solves every
chain when greedy (README), so a group's response length is fixed by its number of
operations k and which group finishes first can be worked out in advance."""

import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoint import complete_checkpoints
from engine.events import ListSink
from engine.generation import stop_token_ids
from engine.inference.interface import PartialResponse, SamplingParams
from engine.inference.torch_backend import TorchBackend
from engine.models import load_policy
from engine.orchestration import run
from engine.rollout.april import ActivePartialRollouts, partial_group_from_state, partial_group_state
from engine.rollout.collector import Collector
from engine.rollout.types import PartialGroup
from engine.sampling.base import PlanItem
from engine.spec import SpecError, parse_spec
from engine.tasks import BUILTIN_TASKS
from engine.telemetry import Timeline

_path = Path(__file__).with_name("techniques.py")
_module_spec = importlib.util.spec_from_file_location("techniques", _path)
techniques = importlib.util.module_from_spec(_module_spec)
_module_spec.loader.exec_module(techniques)

ARITH = BUILTIN_TASKS.get("arith")
N = 2  # samples per group


@pytest.fixture(scope="module")
def policy():
    model, tokenizer = load_policy(parse_spec({}).model)
    return model.eval(), tokenizer


def greedy_collector(policy, max_new_tokens: int = 64) -> Collector:
    model, tokenizer = policy
    params = SamplingParams(
        n=N, temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids(model, tokenizer)
    )
    return Collector(TorchBackend(model), tokenizer, ARITH, "auto", params, torch.Generator().manual_seed(0))


def with_ops(k: int, skip: int = 0):
    """The (skip+1)-th train problem with k operations."""
    found = [p for p in ARITH.problems("train", 400, seed=0) if p.difficulty == k]
    return found[skip]


def april(over_sampling: int, stale_prefix: str = "train", prompts: int = 1) -> ActivePartialRollouts:
    return ActivePartialRollouts(
        parse_spec(
            {
                "rollout": {
                    "prompts_per_step": prompts,
                    "n": N,
                    "strategy": "april",
                    "over_sampling": over_sampling,
                    "stale_prefix": stale_prefix,
                }
            }
        )
    )


def supplier(*problems):
    """`more(count)`: the next `count` of these problems, N samples each."""
    queue = list(problems)

    def more(count: int) -> list[PlanItem]:
        taken, queue[:] = queue[:count], queue[count:]
        return [PlanItem(problem, N) for problem in taken]

    return more


def uninterrupted(policy, problem):
    """The greedy response of `problem` decoded in one go."""
    (group,) = greedy_collector(policy).collect([PlanItem(problem, N)], 0, Timeline(0))
    return group.rollouts[0].token_ids


@pytest.mark.parametrize("stale_prefix", ["train", "mask"])
def test_the_tail_is_aborted_buffered_in_order_and_resumed_first_across_a_weight_update(policy, stale_prefix):
    """A greedy answer to a k-operation chain is 16k + 3 tokens (one 16-token line per
    operation, then '#### v <eos>'): 19, 35 and 51 for k = 1, 2, 3.

    N = 1 group a step, N' = 3. Step 1 submits the plan (k = 1, key 0) and two more
    (k = 3, key 1; k = 2, key 2): all rows start together and gain one token a step, so
    the k = 1 group ends first, at 19 tokens, and is the batch; the other two are aborted
    at 19 tokens each and wait in the buffer in submission order, keys 1 then 2.

    Between the steps the weights are pushed again as version 1 (the same values, so
    greedy decoding must continue exactly where it stopped). Step 2 serves the buffer
    first, then its plan (another k = 3 chain, key 3): key 1 lacks 51 − 19 = 32 tokens,
    key 2 lacks 35 − 19 = 16, key 3 all 51, so the k = 2 group ends first, 16 steps in.
    Its samples are the uninterrupted greedy answer, the first 19 tokens stamped version 0
    and the last 16 version 1 (staleness 19/35 per token); keys 1 (now at 35 tokens) and 3
    (at 16) go back to the buffer in key order."""
    model, _ = policy
    collector = greedy_collector(policy)
    strategy = april(over_sampling=3, stale_prefix=stale_prefix)
    k1, k3, k2, k3b = with_ops(1), with_ops(3), with_ops(2), with_ops(3, skip=1)

    first = strategy.collect(1, [PlanItem(k1, N)], supplier(k3, k2), collector, Timeline(1))

    assert [group.problem for group in first.groups] == [k1]
    answer_length = first.groups[0].rollouts[0].length
    assert answer_length == 19
    assert [group.key for group in strategy.buffer] == [1, 2]
    assert [group.problem for group in strategy.buffer] == [k3, k2]
    for group in strategy.buffer:
        assert not group.done  # greedy siblings end together: none finished
        assert [len(group.partial[i].token_ids) for i in range(N)] == [answer_length] * N
        assert all(group.partial[i].versions == [0] * answer_length for i in range(N))
        assert group.aborts == {0: 1, 1: 1}
    assert first.metrics["april/aborted_samples"] == 2 * N
    assert first.metrics["april/buffer_groups"] == 2
    assert first.metrics["rollout/partial_ratio"] == 0.0

    collector.load_weights(model.state_dict(), version=1)
    second = strategy.collect(2, [PlanItem(k3b, N)], supplier(), collector, Timeline(2))

    (group,) = second.groups
    assert group.problem == k2 and group.id == 0
    expected = uninterrupted(policy, k2)
    assert len(expected) == 35
    for item in group.rollouts:
        assert item.token_ids == expected
        assert item.versions == [0] * answer_length + [1] * (len(expected) - answer_length)
        assert item.aborts == 1
        assert item.trained_from == (answer_length if stale_prefix == "mask" else 0)
    assert [g.key for g in strategy.buffer] == [1, 3]
    assert [len(strategy.buffer[0].partial[i].token_ids) for i in range(N)] == [35, 35]
    assert [len(strategy.buffer[1].partial[i].token_ids) for i in range(N)] == [16, 16]
    assert second.metrics["april/resumed_groups"] == 2
    assert second.metrics["rollout/partial_ratio"] == 1.0
    # Staleness per token: 19 of the 35 tokens are one version behind.
    assert second.metrics["off_policy/staleness/mean"] == pytest.approx(19 / 35)
    assert second.metrics["off_policy/staleness/max"] == 1.0
    assert second.metrics["off_policy/versions_per_sample"] == 2.0


def test_a_resumed_group_keeps_its_finished_siblings_and_completes_with_its_last_sample(policy):
    """A group set aside with sample 0 finished and sample 1 three tokens in: starting it
    submits only sample 1 (resuming from its three tokens); the group is complete when
    sample 1 ends, and sample 0 is the very rollout it was, never generated again."""
    collector = greedy_collector(policy)
    problem = with_ops(2)
    expected = uninterrupted(policy, problem)
    (finished,) = greedy_collector(policy).collect([PlanItem(problem, 1)], 0, Timeline(0))
    sibling = finished.rollouts[0]
    head = PartialResponse(expected[:3], [-0.1, -0.2, -0.3], [0, 0, 0])
    group = PartialGroup(key=7, problem=problem, n=N, begun=1, done={0: sibling}, partial={1: head}, aborts={1: 1})

    collector.start([group])
    assert collector.in_flight() == 1
    assert collector.backend.has_unfinished()
    complete = []
    while not complete:
        complete = collector.advance(Timeline(0))

    assert complete == [group] and group.complete and collector.in_flight() == 0
    assert group.done[0] is sibling
    resumed = group.done[1]
    assert resumed.token_ids == expected and resumed.logprobs[:3] == [-0.1, -0.2, -0.3]
    assert resumed.versions == [0] * len(expected) and resumed.aborts == 1 and resumed.correct


def test_a_buffered_group_survives_a_checkpoint_as_plain_values(policy):
    collector = greedy_collector(policy)
    strategy = april(over_sampling=3)
    strategy.collect(1, [PlanItem(with_ops(1), N)], supplier(with_ops(3), with_ops(2)), collector, Timeline(1))

    state = strategy.state_dict()
    torch.save(state, "/dev/null")  # plain values only: checkpoints load with weights_only
    restored = april(over_sampling=3)
    restored.load_state_dict(state)

    assert restored.next_key == strategy.next_key == 3
    for before, after in zip(strategy.buffer, restored.buffer, strict=True):
        assert partial_group_state(after) == partial_group_state(before)
    assert partial_group_state(partial_group_from_state(partial_group_state(strategy.buffer[0]))) == partial_group_state(
        strategy.buffer[0]
    )


TINY = {
    "dataset": {"eval_size": 4},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 64},
    "training": {"steps": 2, "eval_every": 0, "warmup_steps": 1, "lr": 1e-3},
    "resources": {"executor": "inprocess", "cpus": 1},
    "seed": 5,
}
APRIL_ONLY = ("april/", "off_policy/", "rollout/partial_ratio")


def untimed(values: dict[str, float]) -> dict[str, float]:
    return techniques.untimed(values, own=APRIL_ONLY)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "algorithm, plain",
    [
        ({"name": "grpo"}, "plain"),
        ({"name": "gspo"}, "plain"),
        # DAPO's filter, one round of exactly the batch: both collect the plan once, keep
        # the informative groups and top the batch up with the filtered-out ones.
        ({"name": "dapo", "oversample": 1.0, "max_gen_rounds": 1}, "dynamic_sampling"),
    ],
)
def test_april_with_over_sampling_equal_to_the_batch_is_the_plain_strategy(algorithm, plain):
    """N' = N: every submitted group must end before the step does, nothing is aborted,
    and the backend is stepped exactly as plain's collect() steps it, so every metric but
    the timings (and APRIL's own) is identical, float for float; under DAPO the filter's
    own (dapo/keep_rate, dapo/gen_rounds) too, and a group filtered out tops the batch up
    after the informative ones in both. (With more rounds the two differ by design:
    APRIL submits N' more as soon as a group is filtered out, slime's rule; dynamic
    sampling waits for its whole round and asks for ⌈missing × oversample⌉.)"""
    base = TINY | {"algorithm": algorithm}
    baseline, partial = ListSink(), ListSink()
    run(parse_spec(base | {"rollout": TINY["rollout"] | {"strategy": plain}}), baseline)
    run(parse_spec(base | {"rollout": TINY["rollout"] | {"strategy": "april", "over_sampling": 2}}), partial)

    steps = [m for m in partial.of_kind("metrics") if "reward/mean" in m.values]
    assert all(m.values["april/aborted_samples"] == 0 and m.values["april/buffer_groups"] == 0 for m in steps)
    assert [untimed(m.values) for m in partial.of_kind("metrics")] == [untimed(m.values) for m in baseline.of_kind("metrics")]
    assert [h.counts for h in partial.of_kind("length_histogram")] == [h.counts for h in baseline.of_kind("length_histogram")]
    if plain == "dynamic_sampling":
        assert any(m.values["dapo/keep_rate"] < 1 for m in steps)  # a batch was topped up


@pytest.mark.timeout(300)
@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "gspo"])
def test_april_with_over_sampling_trains_under_each_algorithm(algorithm):
    """N' = 2N = 4 groups of n = 4 for three steps: every step trains with a finite loss,
    some step carries groups over (aborted, or complete beyond the batch), and the
    buffer keeps its books: a step resumes
    min(N', what the last one left) groups first, and leaves exactly the groups it
    submitted and did not complete (trained or filtered out: its length histogram counts
    every generated sample once)."""
    spec = parse_spec(
        TINY
        | {
            "algorithm": {"name": algorithm},
            "rollout": TINY["rollout"] | {"strategy": "april", "over_sampling": 4},
            "training": TINY["training"] | {"steps": 3},
        }
    )
    sink = ListSink()
    assert run(spec, sink) == "succeeded"

    steps = [m.values for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    generated = [sum(h.counts) / spec.rollout.n for h in sink.of_kind("length_histogram") if h.step > 0]
    assert len(steps) == len(generated) == 3
    left = 0.0
    for values, groups in zip(steps, generated):
        assert math.isfinite(values["actor/pg_loss"]) and math.isfinite(values["actor/grad_norm"])
        assert values["april/resumed_groups"] == min(4, left)
        assert values["april/submitted_groups"] >= 4
        assert values["april/buffer_groups"] == values["april/submitted_groups"] - groups
        left = values["april/buffer_groups"]
    assert any(v["april/buffer_groups"] > 0 for v in steps)  # over-sampled groups carried over
    if algorithm == "dapo":
        assert all(0 <= v["dapo/keep_rate"] <= 1 for v in steps)


@pytest.mark.parametrize(
    "rollout, field",
    [
        ({"strategy": "april", "prompts_per_step": 4, "over_sampling": 3}, "rollout.over_sampling"),
        ({"strategy": "plain", "over_sampling": 8}, "rollout.over_sampling"),
        ({"stale_prefix": "mask"}, "rollout.stale_prefix"),
        ({"strategy": "april", "stale_prefix": "weight"}, "rollout.stale_prefix"),
    ],
)
def test_bad_april_settings_are_refused_naming_the_field(rollout, field):
    with pytest.raises(SpecError) as refused:
        parse_spec({"rollout": rollout})
    assert [loc for loc, _ in refused.value.problems] == [field]


def test_april_defaults_to_the_papers_twice_the_batch_trained_as_on_policy():
    rollout = parse_spec({"rollout": {"strategy": "april", "prompts_per_step": 6}}).rollout
    assert (rollout.over_sampling, rollout.stale_prefix) == (12, "train")


@pytest.mark.timeout(300)
def test_a_resume_with_a_non_empty_buffer_continues_bit_for_bit(tmp_path):
    """4 steps straight equal 2 steps, a checkpoint whose buffer holds aborted groups, a
    fresh recipe restored from it and 2 more steps: every untimed metric and histogram
    identical. So the buffer came back whole (no group lost, none generated twice), its
    key counter too, and the resumed groups were served first as they would have been."""
    spec = parse_spec(
        TINY
        | {
            "rollout": TINY["rollout"] | {"strategy": "april", "over_sampling": 4},
            "training": TINY["training"] | {"steps": 4},
        }
    )
    straight, first, second = ListSink(), ListSink(), ListSink()
    run(spec, straight)
    stop = lambda: sum(1 for h in first.of_kind("heartbeat") if h.step > 0) >= 2  # noqa: E731
    assert run(spec, first, should_stop=stop, run_dir=tmp_path) == "cancelled"
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2]
    state = torch.load(tmp_path / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert len(state["strategy"]["buffer"]) == 2  # 4 submitted, 2 trained: the other 2 wait

    assert run(spec, second, run_dir=tmp_path) == "succeeded"

    def after(sink, step):
        return [
            (m.step, {k: v for k, v in m.values.items() if not k.startswith(("timing_s/", "perf/")) and "idle" not in k})
            for m in sink.of_kind("metrics")
            if m.step > step and "reward/mean" in m.values
        ]

    assert after(second, 2) == after(straight, 2)
    resumed = [m.values for m in second.of_kind("metrics") if m.step == 3 and "reward/mean" in m.values][0]
    assert resumed["april/resumed_groups"] == 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_april_raises_held_out_accuracy_on_the_built_in_task():
    """GRPO with APRIL at twice the batch, 20 steps of 16 prompts × 16 samples (as
    tests/engine/test_learning.py), must beat step 0 by more than 3 standard errors of
    the difference on 512 held-out prompts (about +0.08)."""
    started = time.time()
    before, after, margin, sink = techniques.held_out_gain(
        {
            "algorithm": {"name": "grpo"},
            "rollout": {"n": 16, "strategy": "april"},
            "training": {"steps": 20},
            "resources": {"cpus": 2},
        }
    )
    steps = [m.values for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    print(
        f"april: val/acc/mean@1 {before:.3f} -> {after:.3f} (needs > +{margin:.3f}), {time.time() - started:.0f}s, "
        f"partial ratio {sum(v['rollout/partial_ratio'] for v in steps) / len(steps):.2f}"
    )
    assert after - before > margin
    assert any(v["april/aborted_samples"] > 0 for v in steps)  # the tail was aborted and resumed
