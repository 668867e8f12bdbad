"""ProRL's reference reset (docs/algorithms.md §0.3, item 4; `algorithm.reference_reset_every`):
π_ref becomes the current policy (the KL to it is 0 right after) and Adam's moments are
zeroed; the reset reference is in the checkpoint, so a resumed run continues bit for bit;
the spec refuses a reset without a KL reference."""

import importlib.util
from pathlib import Path

import pytest
import torch

from engine.algorithms import POLICY_LOSSES
from engine.spec import SpecError, parse_spec
from engine.training.torch_backend import TorchTrainingBackend

_path = Path(__file__).with_name("techniques.py")
_module_spec = importlib.util.spec_from_file_location("techniques", _path)
techniques = importlib.util.module_from_spec(_module_spec)
_module_spec.loader.exec_module(techniques)
grad_norms = techniques.load_test_module("test_cures_grad_norms")  # its hand-made rollouts

RESET = {"algorithm": {"name": "grpo", "reference_reset_every": 2}}


@pytest.mark.slow
def test_a_reset_makes_the_policy_the_reference_and_zeroes_the_optimiser_moments():
    torch.manual_seed(0)
    spec = parse_spec(RESET | {"resources": {"cpus": 1}})
    loss = POLICY_LOSSES.load(spec.algorithm.policy_loss)(spec.algorithm, 1.0, spec.rollout.max_new_tokens)
    backend = TorchTrainingBackend(spec, needs_reference=True)
    batch = grad_norms.rollouts(backend)
    for index, item in enumerate(batch):
        item.advantage = 1.0 if index % 2 else -1.0
    for _ in range(2):
        for item, logprobs in zip(batch, backend.logprobs(batch, reference=True)):
            item.ref_logprobs = logprobs
        backend.optimizer_step(batch, loss, backend.begin_batch())
    policy = torch.cat(backend.logprobs(batch))
    assert not torch.equal(policy, torch.cat(backend.logprobs(batch, reference=True)))  # trained away from π_ref
    moments = [state["exp_avg_sq"] for state in backend.optimizer.state.values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)

    backend.reset_reference()

    reference = torch.cat(backend.logprobs(batch, reference=True))
    assert torch.equal(reference, policy)  # KL(π_θ ‖ π_ref) = 0 exactly, every estimator
    assert not any(p.requires_grad for p in backend.reference.parameters()) and not backend.reference.training
    for state in backend.optimizer.state.values():
        assert all(float(value.abs().sum()) == 0.0 for value in state.values())  # exp_avg, exp_avg_sq, step
    assert backend.reference_resets == 1 and "reference" in backend.state_dict()
    # The policy keeps training, and the reference does not move with it.
    backend.optimizer_step(batch, loss, backend.begin_batch())
    assert torch.equal(torch.cat(backend.logprobs(batch, reference=True)), reference)
    assert not torch.equal(torch.cat(backend.logprobs(batch)), reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_resets_every_n_steps_and_resumes_bit_for_bit(tmp_path):
    """checkpoints.BASE for 4 steps with a reset every 2: the KL to the reference, taken on
    the step's own samples before it trains, is 0 at step 3 (the reference is step 2's
    policy); the resume after step 2 reads the reset reference from the checkpoint."""
    sink = techniques.resumed_equals_straight(RESET, tmp_path)
    train = {m.step: m.values for m in sink.of_kind("metrics") if "actor/pg_loss" in m.values}
    assert [train[step]["actor/reference_resets"] for step in (3, 4)] == [1.0, 2.0]
    assert train[3]["kl"] == pytest.approx(0.0, abs=1e-6) and train[4]["kl"] > 1e-5


def test_the_spec_refuses_a_reset_without_a_reference():
    assert parse_spec({}).algorithm.reference_reset_every is None
    for data in ({"algorithm": {"name": "dapo", "reference_reset_every": 5}}, {"algorithm": {"reference_reset_every": 0}}):
        with pytest.raises(SpecError) as refused:
            parse_spec(data)
        assert [loc for loc, _ in refused.value.problems] == ["algorithm.reference_reset_every"]
