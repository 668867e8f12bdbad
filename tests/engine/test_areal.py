"""AReaL (engine.recipes.asynchronous): staleness-bounded admission against a hand-computed
table, the decoupled PPO loss and its cap on three tokens, interruptible generation on a
rollout worker (versions stamped across a weight update mid-sequence), η = 0 equal to the
synchronous recipe, a resume with in-flight rollouts, the probe phase (CurES under async:
η = 0 equal to sync, η = 1 never training its probes, a resume bit for bit), the spec's
refusals, and learning end to end."""

import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoint import complete_checkpoints
from engine.events import ListSink
from engine.models import load_policy
from engine.orchestration import run
from engine.recipes.asynchronous import AsyncRecipe
from engine.rollout.collector import build_collector
from engine.rollout.staleness import StalenessManager
from engine.rollout.types import PartialGroup
from engine.rollout.workers import RolloutWorker
from engine.sampling.base import PlanItem
from engine.spec import SpecError, parse_spec
from engine.tasks import BUILTIN_TASKS
from engine.telemetry import Timeline
from engine.training.collate import Collated

_path = Path(__file__).with_name("techniques.py")
_module_spec = importlib.util.spec_from_file_location("techniques", _path)
techniques = importlib.util.module_from_spec(_module_spec)
_module_spec.loader.exec_module(techniques)

ARITH = BUILTIN_TASKS.get("arith")


# ----------------------------------------------------------------- admission
@pytest.mark.parametrize(
    "B, eta, v, accepted, running, concurrent, capacity",
    [
        # (η + v + 1)·B − (accepted + running), floored at 0; min with concurrent − running.
        (4, 0, 0, 0, 0, None, 4),  # (0+0+1)·4 − 0 = 4: the synchronous first batch
        (4, 1, 0, 0, 0, None, 8),  # (1+0+1)·4 = 8: one batch ahead
        (4, 2, 1, 8, 3, None, 5),  # (2+1+1)·4 − 11 = 5
        (2, 0, 3, 6, 0, None, 2),  # (0+3+1)·2 − 6 = 2: after three synchronous steps, one batch
        (4, 0, 0, 2, 3, None, 0),  # 4 − 5 = −1 → 0
        (4, 4, 0, 0, 2, 3, 1),  # min((4+0+1)·4 − 2 = 18, 3 − 2 = 1) = 1
        (8, 2, 5, 41, 10, 64, 13),  # min((2+5+1)·8 − 51 = 13, 64 − 10 = 54) = 13
    ],
)
def test_admission_capacity_follows_areals_formula(B, eta, v, accepted, running, concurrent, capacity):
    manager = StalenessManager(batch=B, max_staleness=eta, max_concurrent=concurrent, accepted=accepted, running=running)
    assert manager.capacity(v) == capacity


@pytest.mark.parametrize("B, eta", [(1, 0), (3, 0), (3, 1), (2, 4)])
def test_admitting_one_at_a_time_equals_the_papers_form(B, eta):
    """Request i (1-based, N_r = i) is admitted iff ⌊(N_r − 1)/B⌋ ≤ v + η: at version v
    exactly (η + v + 1)·B requests have been admitted in all, whatever finished."""
    manager = StalenessManager(batch=B, max_staleness=eta)
    admitted = 0
    for v in range(5):
        while manager.capacity(v):
            admitted += 1
            assert (admitted - 1) // B <= v + eta
            manager.submitted(1)
        assert (admitted - 1 + 1) // B > v + eta  # the next one would break the bound
        assert admitted == (eta + v + 1) * B
        manager.accept(B)  # the trainer consumes a batch and moves to v + 1


def test_rejected_groups_free_capacity_and_a_resume_restores_the_counts():
    manager = StalenessManager(batch=2, max_staleness=1)
    manager.submitted(4)  # (1+0+1)·2 = 4
    manager.reject(1)  # DAPO's filter dropped one: it leaves running, not accepted
    assert (manager.accepted, manager.running, manager.rejected, manager.capacity(0)) == (0, 3, 1, 1)
    # Resumed at v = 3 with 1 accepted group not trained yet and 2 resubmitted in flight:
    # accepted = 3·2 + 1 = 7, running = 2, capacity = (1+3+1)·2 − 9 = 1.
    manager.restore(3, buffered=1, in_flight=2, surplus=0)
    assert (manager.accepted, manager.running, manager.capacity(3)) == (7, 2, 1)


def test_a_step_that_takes_more_than_b_slots_is_remembered_across_a_resume():
    """B = 2, η = 0. A step takes a group of 1 slot and one carrying 2 (1 + a pruned
    prompt's): 3 slots, 1 beyond B. At v = 1 the straight run has accepted 3 (nothing
    buffered), so capacity is (0+1+1)·2 − 3 = 1; a resume at v = 1 recomputes accepted =
    1·2 + surplus 1 + 0 buffered = 3, the same capacity, not (0+1+1)·2 − 2 = 2."""
    manager = StalenessManager(batch=2, max_staleness=0)
    manager.submitted(3)
    manager.accept(3)
    manager.trained(3)
    assert (manager.surplus, manager.capacity(1)) == (1, 1)
    resumed = StalenessManager(batch=2, max_staleness=0)
    resumed.restore(1, buffered=0, in_flight=0, surplus=manager.state_dict()["surplus"])
    assert (resumed.accepted, resumed.capacity(1)) == (3, 1)


# ----------------------------------------------------------------- the decoupled loss
def probability_logits(probabilities: list[float]) -> torch.Tensor:
    """[1, T, 2] logits whose softmax gives token 0 exactly probability p at each position."""
    p = torch.tensor(probabilities, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], dim=-1)[None].float().requires_grad_(True)


def decoupled(action: str = "mask", cap: float = 5.0):
    from engine.algorithms.policy_loss import DecoupledPPOLoss

    spec = parse_spec(
        {
            "algorithm": {
                "name": "grpo",
                "policy_loss": "decoupled_ppo",
                "aggregation": "token-mean",
                "kl_placement": "off",
                "kl_coef": 0.0,
                "behav_weight_cap": cap,
                "behav_weight_action": action,
            }
        }
    )
    return DecoupledPPOLoss(spec.algorithm, temperature=1.0, max_new_tokens=3)


def three_tokens(prox: list[float], behav: list[float]) -> Collated:
    return Collated(
        input_ids=torch.zeros((1, 4), dtype=torch.long),
        mask=torch.ones((1, 3)),
        old_logprobs=torch.tensor([prox]).log(),
        behaviour_logprobs=torch.tensor([behav]).log(),
        ref_logprobs=None,
        advantages=torch.tensor([1.0]),
    )


@pytest.mark.parametrize(
    "action, expected_loss, expected_weight_mean",
    [
        # w = [1, 2, 10]: the third token is above the cap of 5, masked: ℓ = −[1, 2.2, 0]
        ("mask", -(1.0 + 2.2 + 0.0) / 3, (1 + 2 + 0) / 3),
        # ... or clamped to 5: ℓ = −[1, 2.2, 1.2·5]
        ("clamp", -(1.0 + 2.2 + 6.0) / 3, (1 + 2 + 5) / 3),
    ],
)
def test_the_decoupled_loss_and_its_cap_on_three_tokens(action, expected_loss, expected_weight_mean):
    """π_θ = [0.5, 0.55, 0.9], π_prox = [0.5, 0.5, 0.5], π_behav = [0.5, 0.25, 0.05], A = +1,
    ε = 0.2, token-mean over the 3 tokens.

    u = π_θ/π_prox = [1.0, 1.1, 1.8] → clipped [1.0, 1.1, 1.2]; with A > 0 the PPO term
    is −min(u, clip(u)) = −[1.0, 1.1, 1.2]. w = π_prox/π_behav = [1, 2, 10]. The
    denominator stays 3 tokens whether the cap masks one or not (AReaL's)."""
    loss_fn = decoupled(action)
    logits = probability_logits([0.5, 0.55, 0.9])
    batch = three_tokens(prox=[0.5, 0.5, 0.5], behav=[0.5, 0.25, 0.05])

    loss, statistics = loss_fn(logits, torch.zeros((1, 3), dtype=torch.long), batch, num_seqs=1, num_tokens=3)

    assert float(loss.detach()) == pytest.approx(expected_loss, abs=1e-5)
    assert statistics["off_policy/behav_weight_mean"] / 3 == pytest.approx(expected_weight_mean, abs=1e-5)
    assert statistics["off_policy/behav_capped_ratio"] == 1.0  # one token above the cap (a sum; /3 per token)
    assert statistics["off_policy/behav_kl"] / 3 == pytest.approx((0 + math.log(2) + math.log(10)) / 3, abs=1e-5)
    assert statistics["high"] == 1.0  # the third token's ratio 1.8 > 1.2 with A > 0: clipped
    loss.backward()
    # Token 3 carries no gradient either way: masked (w = 0), or clamped on PPO's clipped branch.
    assert torch.all(logits.grad[0, 2] == 0)
    # Token 2's gradient is w·∂u/∂logit: twice the gradient of plain PPO on that token.
    assert torch.all(logits.grad[0, 1] != 0)


def test_with_proximal_equal_to_behaviour_the_decoupled_loss_is_ppo():
    from engine.algorithms.policy_loss import PPOLoss

    spec = parse_spec({"algorithm": {"name": "grpo", "aggregation": "token-mean", "kl_placement": "off", "kl_coef": 0.0}})
    ppo = PPOLoss(spec.algorithm, temperature=1.0, max_new_tokens=3)
    batch = three_tokens(prox=[0.4, 0.5, 0.7], behav=[0.4, 0.5, 0.7])
    targets = torch.zeros((1, 3), dtype=torch.long)

    ours, _ = decoupled()(probability_logits([0.5, 0.55, 0.9]), targets, batch, 1, 3)
    theirs, _ = ppo(probability_logits([0.5, 0.55, 0.9]), targets, batch, 1, 3)

    assert float(ours.detach()) == float(theirs.detach())


# ----------------------------------------------------------------- interruptible generation
TINY = {
    "dataset": {"eval_size": 4},
    "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 64},
    "training": {"steps": 2, "eval_every": 0, "warmup_steps": 1, "lr": 1e-3},
    "resources": {"executor": "inprocess", "cpus": 1},
    "seed": 5,
}


def async_spec(eta: int, **extra) -> dict:
    return TINY | {
        "orchestration": {"mode": "async", "max_staleness": eta},
        "resources": TINY["resources"] | {"rollout_workers": 1},
        **extra,
    }


def test_a_weight_update_mid_sequence_pauses_loads_and_continues_the_same_samples():
    """A 3-operation chain (51 tokens greedy) is in flight on a worker when version 1 is
    pushed (the same weight values). The worker aborts it, loads, and resumes each sample
    from its tokens: the answer is the uninterrupted one, its first j tokens stamped 0 and
    the rest 1 (j ≥ 10: the push waited for ten tokens per sample), aborted once.
    Near-greedy decoding (T = 0.001) makes the answer a fixed point of the weights."""
    spec = parse_spec(async_spec(1, rollout=TINY["rollout"] | {"temperature": 0.001}))
    problem = next(p for p in ARITH.problems("train", 400, seed=0) if p.difficulty == 3)
    model, tokenizer = load_policy(spec.model)
    (reference,) = build_collector(spec, model.eval(), tokenizer, ARITH).collect([PlanItem(problem, 2)], 0, Timeline(0))
    expected = reference.rollouts[0].token_ids
    assert len(expected) == 51

    worker = RolloutWorker(spec, 0)
    try:
        worker.submit([PartialGroup(key=0, problem=problem, n=2, begun=0)])
        while worker.collector.backend.stats.generated_tokens < 20:
            time.sleep(0.002)
        seconds = worker.update_weights(model.state_dict(), version=1)
        finished = []
        while not finished:
            finished = worker.take_finished(timeout=1.0)
        spans = worker.pop_spans()
    finally:
        worker.close()

    (group,) = finished
    for item in group.rollouts():
        assert item.token_ids == expected
        switch = item.versions.index(1)
        assert switch >= 10 and item.versions == [0] * switch + [1] * (len(expected) - switch)
        assert item.aborts == 1
    assert seconds > 0
    assert {span.phase for span in spans} >= {"generate", "sync"}


# ----------------------------------------------------------------- η = 0 is the sync recipe
def untimed(values: dict[str, float]) -> dict[str, float]:
    """The async recipe's own metrics exist only there."""
    return techniques.untimed(values, own=("async/", "off_policy/", "buffer/", "rollout/partial_ratio"))


@pytest.mark.timeout(300)
def test_eta_zero_reports_the_same_metrics_as_the_sync_recipe():
    """Tolerance: none, every untimed metric equal float for float. With η = 0 each step
    admits exactly B groups after the previous update, in one submission, to one worker
    whose sampling stream is seeded like the sync recipe's collector; the worker's copy of
    the weights has the same values (loaded from the same folder, then every update
    copied), the same process and torch threads, so it decodes the same tokens with the
    same log-probs, and the trainer sees the same batch in the same order. (Through Ray
    the worker would run in another process with its own thread count, where the last
    bits of a matmul may differ and a sampled token flip: that is not compared bitwise.)"""
    sync, asynchronous = ListSink(), ListSink()
    run(parse_spec(TINY), sync)
    run(parse_spec(async_spec(0)), asynchronous)

    assert [untimed(m.values) for m in asynchronous.of_kind("metrics")] == [untimed(m.values) for m in sync.of_kind("metrics")]
    assert [h.counts for h in asynchronous.of_kind("length_histogram")] == [h.counts for h in sync.of_kind("length_histogram")]
    steps = [m.values for m in asynchronous.of_kind("metrics") if "reward/mean" in m.values]
    assert all(v["off_policy/staleness/max"] == 0 and v["buffer/size"] == 0 and v["off_policy/dropped"] == 0 for v in steps)
    workers = {span.worker for span in asynchronous.of_kind("span")}
    assert workers == {"trainer", "rollout-0"}


# ----------------------------------------------------------------- too stale
def test_accepted_groups_older_than_eta_are_dropped_and_free_their_place():
    """η = 0, B = 2, the trainer at step 3 (version 2) with four accepted groups waiting,
    begun at versions 0, 1, 2 and 2 (what a fork under η = 0 of an η = 2 run finds):
    2 − 0 > 0 and 2 − 1 > 0, so the first two are dropped, 2 groups × n = 2 = 4 samples
    reported as off_policy/dropped, observed but not trained; the other two are the
    batch. Accepted was v·B + 4 = 8 and falls by the two dropped to 6, so the bound's
    capacity is (0 + 2 + 1)·2 − 6 = 0 until the batch is trained."""
    recipe = AsyncRecipe(parse_spec(async_spec(0)))
    try:
        generated = recipe.collector.collect(recipe.sampler.next(1, 4), 0, Timeline(0))
        recipe.buffer = [
            PartialGroup(key=key, problem=group.problem, n=2, begun=begun, done=dict(enumerate(group.rollouts)))
            for key, (group, begun) in enumerate(zip(generated, [0, 1, 2, 2]))
        ]
        recipe.staleness.accepted = 2 * 2 + 4
        batch = recipe.collect(3, Timeline(3))
    finally:
        recipe.close()

    assert [group.problem for group in batch.groups] == [generated[2].problem, generated[3].problem]
    assert batch.metrics["off_policy/dropped"] == 4
    assert [group.problem for group in batch.generated] == [group.problem for group in generated[2:] + generated[:2]]
    assert (recipe.staleness.accepted, recipe.staleness.dropped, batch.metrics["async/capacity"]) == (6, 2, 0)
    assert recipe.buffer == []


# ----------------------------------------------------------------- resume
@pytest.mark.timeout(300)
def test_a_resume_with_in_flight_rollouts_loses_and_repeats_no_group(tmp_path):
    """η = 2, B = 2: by step 2 (version 1) the bound has admitted (2 + 1 + 1)·2 = 8 groups, 4
    trained, so 4 are in the trainer's buffer or on the worker (finished or in flight) when
    the checkpoint is written; version 2's slots are admitted by step 3. A fresh recipe
    restores them and the counters (accepted + running as saved, so the same capacity:
    (2 + 2 + 1)·2 − 8 = 2 for step 3) and trains on: across the four steps no prompt is
    trained twice, and every group saved as pending is trained or still pending at the end."""
    spec = parse_spec(async_spec(2, training=TINY["training"] | {"steps": 4}))
    first = ListSink()
    stop = lambda: sum(1 for h in first.of_kind("heartbeat") if h.step > 0) >= 2  # noqa: E731
    assert run(spec, first, should_stop=stop, run_dir=tmp_path) == "cancelled"
    (step, folder), = complete_checkpoints(tmp_path)
    state = torch.load(folder / "trainer_state.pt", weights_only=True)["async"]
    saved_pending = [g["problem"]["id"] for g in state["buffer"]] + [
        g["problem"]["id"] for worker in state["workers"] for g in worker["in_flight"] + worker["finished"]
    ]
    assert step == 2 and len(saved_pending) == 4
    assert any(worker["in_flight"] for worker in state["workers"]) or state["buffer"]
    saved = state["staleness"]
    assert saved["accepted"] + saved["running"] == 8 and saved["accepted"] == 2 * 2 + len(state["buffer"])

    recipe = AsyncRecipe(spec)
    try:
        recipe.load_checkpoint(str(folder))
        restored = recipe.staleness
        assert restored.accepted + restored.running == 8
        assert (restored.capacity(1), restored.capacity(2)) == (0, 2)  # as saved: full until version 2
        events = [event for _ in range(2) for event in recipe.step()]
        end = recipe.workers.call("snapshot")
        still_pending = [g.problem.id for g in recipe.buffer] + [
            g["problem"]["id"] for worker in end for g in worker["in_flight"] + worker["finished"]
        ]
    finally:
        recipe.close()

    def trained(events):
        return [r.prompt_id for e in events if e.kind == "prompt_results" and e.split == "train" for r in e.results]

    before, after = trained(first.events), trained(events)
    assert len(before) == len(after) == 4
    assert len(set(before + after)) == 8  # none trained twice
    assert not set(before) & set(saved_pending)
    assert set(saved_pending) <= set(after) | set(still_pending)  # none lost


# ----------------------------------------------------------------- the probe phase (CurES)
# Chunks of 4 prompts, 2 steps each: steps 1 and 3 pre-roll a chunk.
CURES = {"strategy": "cures", "chunk_prompts": 4, "chunk_steps": 2}


def with_cures(curriculum: dict) -> dict:
    """What the CurES runs change in TINY: 4 samples a prompt (one allocation unit), 3 steps."""
    return {"rollout": TINY["rollout"] | {"n": 4}, "training": TINY["training"] | {"steps": 3}, "curriculum": curriculum}


@pytest.mark.timeout(300)
def test_cures_with_eta_zero_reports_what_the_sync_recipe_does():
    """Tolerance: none, as for GRPO above. By construction: each step's probe is the sync
    recipe's (the same plan, submitted at once to the one worker while nothing else is in
    flight, so its stream decodes what the colocated collector does), handed to the
    sampler in plan order, then the step admits exactly its B = 2 slots in one plan after
    the previous step's observe, as the sync recipe plans after it. A pruned prompt's slot
    rides on its plan's last group, so the step trains that plan and asks for no more.
    The seed prunes: step 1 plans one prompt of the two drawn (pruned share 1/2)."""
    sync, asynchronous = ListSink(), ListSink()
    assert run(parse_spec(TINY | with_cures(CURES)), sync) == "succeeded"
    assert run(parse_spec(async_spec(0, **with_cures(CURES))), asynchronous) == "succeeded"

    assert [untimed(m.values) for m in asynchronous.of_kind("metrics")] == [untimed(m.values) for m in sync.of_kind("metrics")]
    assert [h.counts for h in asynchronous.of_kind("length_histogram")] == [h.counts for h in sync.of_kind("length_histogram")]
    # The difficulty store saw the same probes and batches: the per-prompt events agree.
    assert [e.model_dump(exclude={"wall_time"}) for e in asynchronous.of_kind("difficulty")] == [
        e.model_dump(exclude={"wall_time"}) for e in sync.of_kind("difficulty")
    ]
    steps = {m.step: m.values for m in asynchronous.of_kind("metrics") if "reward/mean" in m.values}
    assert [steps[step]["cures/pre_rollout_tokens"] > 0 for step in (1, 2, 3)] == [True, False, True]
    assert steps[1]["cures/pruned_share"] == 0.5


@pytest.mark.timeout(300)
def test_cures_with_eta_one_trains_and_never_trains_its_probe_groups():
    """η = 1, B = 2, 2 pre-rollouts a chunk prompt, training rollouts in units of 4: a
    trained prompt shows a multiple of 4 attempts, and a probe group trained by mistake
    would add 2. The probes are observed: the difficulty store's attempts add up to the
    trained ones plus 2 × 4 chunk prompts × 2 chunks. They are outside the staleness
    counters: at step s (version s − 1) accepted + running ≤ (η + s)·B = 2s + 2 slots,
    which the 4 probe groups of step 1 alone would break."""
    cures = CURES | {"pre_rollouts": 2}
    sink = ListSink()
    assert run(parse_spec(async_spec(1, **with_cures(cures))), sink) == "succeeded"

    steps = {m.step: m.values for m in sink.of_kind("metrics") if "reward/mean" in m.values}
    assert sorted(steps) == [1, 2, 3]
    assert [steps[step]["cures/pre_rollout_tokens"] > 0 for step in (1, 2, 3)] == [True, False, True]
    trained = [r for e in sink.of_kind("prompt_results") if e.split == "train" for r in e.results]
    assert trained and all(r.attempts % 4 == 0 for r in trained)
    last_row = {row.prompt_id: row for e in sink.of_kind("difficulty") for row in e.prompts}
    assert sum(row.attempts for row in last_row.values()) == sum(r.attempts for r in trained) + 2 * 4 * 2
    for step, values in steps.items():
        assert values["async/accepted"] + values["async/running"] <= (1 + step) * 2
        assert values["perf/trained_tokens"] > 0


@pytest.mark.timeout(300)
def test_a_cures_async_run_resumes_bit_for_bit_mid_chunk(tmp_path):
    """η = 0, one worker in process (deterministic, as above): chunks of 3 steps, so the
    resume at step 2 is inside the first chunk and step 4, after the resume, pre-rolls
    the next one on the worker. The checkpoint holds no probe: step 2's was done and
    observed, step 3's runs after the resume."""
    overrides = {
        "curriculum": CURES | {"chunk_steps": 3},
        "orchestration": {"mode": "async", "max_staleness": 0},
        "resources": techniques.checkpoints.BASE["resources"] | {"rollout_workers": 1},
    }
    sink = techniques.resumed_equals_straight(overrides, tmp_path)
    tokens = {m.step: m.values["cures/pre_rollout_tokens"] for m in sink.of_kind("metrics") if "cures/pruned_share" in m.values}
    assert tokens[3] == 0 and tokens[4] > 0


# ----------------------------------------------------------------- the spec
@pytest.mark.parametrize(
    "spec, field",
    [
        ({"orchestration": {"mode": "async", "max_staleness": -1}, "resources": {"rollout_workers": 1}}, "orchestration.max_staleness"),
        ({"orchestration": {"max_staleness": 2}}, "orchestration.max_staleness"),
        ({"orchestration": {"mode": "async", "max_concurrent_groups": 0}, "resources": {"rollout_workers": 1}}, "orchestration.max_concurrent_groups"),
        ({"orchestration": {"mode": "async"}}, "orchestration"),
        ({"orchestration": {"mode": "async"}, "resources": {"rollout_workers": 1}, "rollout": {"strategy": "april"}}, "orchestration"),
        ({"algorithm": {"behav_weight_cap": 3.0}}, "algorithm.behav_weight_cap"),
        ({"algorithm": {"policy_loss": "decoupled_ppo", "behav_weight_cap": 0.5}}, "algorithm.behav_weight_cap"),
    ],
)
def test_bad_async_settings_are_refused_naming_the_field(spec, field):
    with pytest.raises(SpecError) as refused:
        parse_spec(spec)
    assert [loc for loc, _ in refused.value.problems] == [field]


def test_async_defaults():
    spec = parse_spec({"orchestration": {"mode": "async"}, "resources": {"rollout_workers": 1}})
    assert spec.orchestration.max_staleness == 2
    # CurES's pre-rollouts run in the async recipe's probe phase, so the pair is accepted.
    cures = parse_spec({"orchestration": {"mode": "async"}, "resources": {"rollout_workers": 1}, "curriculum": {"strategy": "cures"}})
    assert cures.curriculum.strategy == "cures"
    algorithm = parse_spec({"algorithm": {"policy_loss": "decoupled_ppo"}}).algorithm
    assert (algorithm.behav_weight_cap, algorithm.behav_weight_action) == (5.0, "mask")


# ----------------------------------------------------------------- learning
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_async_training_with_the_decoupled_loss_raises_held_out_accuracy():
    """η = 2 with the decoupled loss, one rollout worker beside the trainer (in process,
    one torch thread each is what the machine has), 20 steps of 16 prompts × 16 samples:
    held-out accuracy on 512 prompts must rise by more than 3 standard errors."""
    started = time.time()
    before, after, margin, sink = techniques.held_out_gain(
        {
            "algorithm": {"name": "grpo", "policy_loss": "decoupled_ppo"},
            "rollout": {"n": 16},
            "training": {"steps": 20},
            "orchestration": {"mode": "async", "max_staleness": 2},
            "resources": {"rollout_workers": 1},
        }
    )
    steps = [m.values for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    staleness = sum(v["off_policy/staleness/mean"] for v in steps) / len(steps)
    print(f"async η=2: {before:.3f} -> {after:.3f} (needs > +{margin:.3f}), {time.time() - started:.0f}s, staleness {staleness:.2f}")
    assert after - before > margin
    assert max(v["off_policy/staleness/max"] for v in steps) >= 1  # it did train off-policy
