"""CurES's embedding-gradient norms through the training backend (docs/algorithms.md §1(b)
step 3): real per-rollout norms of the built-in model, equal to a direct autograd
computation, and measuring them leaves the weights, their gradients and the optimiser's
state exactly as they were."""

import copy

import pytest
import torch

from engine.algorithms import POLICY_LOSSES
from engine.problems import Problem
from engine.rollout.types import Rollout
from engine.spec import parse_spec
from engine.training.torch_backend import TorchTrainingBackend

SPEC = parse_spec({"curriculum": {"strategy": "cures"}, "rollout": {"temperature": 1.2}, "resources": {"cpus": 1}})


def rollouts(backend: TorchTrainingBackend) -> list[Rollout]:
    """Six rollouts of two prompts, responses of different words and lengths."""
    tokenizer = backend.tokenizer
    problems = [Problem("a", "3 + 4", "7", 1.0, ""), Problem("b", "9 - 2 + 1", "8", 2.0, "")]
    responses = ["7", "8", "= 7", "1 2 3", "8", "9 - 1 = 8"]
    made = []
    for index, response in enumerate(responses):
        problem = problems[index % 2]
        prompt_ids = tokenizer(problem.prompt)["input_ids"]
        token_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        made.append(Rollout(index % 2, problem, prompt_ids, token_ids, [0.0] * len(token_ids), [0] * len(token_ids), "completed"))
    return made


def direct_norm(model, item: Rollout, temperature: float) -> float:
    """‖∇_E(−Σ log π(y_t | ·))‖ by a plain backward on a copy of the model: E's .grad."""
    model = copy.deepcopy(model).eval()
    ids = torch.tensor([item.prompt_ids + item.token_ids])
    logits = model(input_ids=ids).logits[0, len(item.prompt_ids) - 1 : -1].float() / temperature
    loss = -torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(item.token_ids)[:, None]).sum()
    loss.backward()
    return float(model.get_input_embeddings().weight.grad.norm())


@pytest.mark.slow
def test_embedding_gradient_norms_are_real_and_touch_neither_weights_nor_optimiser():
    torch.manual_seed(0)
    loss = POLICY_LOSSES.load(SPEC.algorithm.policy_loss)(SPEC.algorithm, 1.2, SPEC.rollout.max_new_tokens)
    backend = TorchTrainingBackend(SPEC, needs_reference=loss.needs_reference)
    batch = rollouts(backend)
    # One real update first, so Adam has moments and every weight a .grad to keep.
    for item in batch:
        item.advantage = 1.0 if item.problem.answer in "".join(backend.tokenizer.decode(item.token_ids)) else -1.0
    if backend.reference is not None:
        for item, logprobs in zip(batch, backend.logprobs(batch, reference=True)):
            item.ref_logprobs = logprobs
    backend.optimizer_step(batch, loss, backend.begin_batch())
    weights = {name: tensor.clone() for name, tensor in backend.model.state_dict().items()}
    grads = {name: p.grad.clone() for name, p in backend.model.named_parameters()}
    optimiser = copy.deepcopy(backend.optimizer.state_dict())
    version, training = backend.version, backend.model.training

    norms = backend.embedding_grad_norms(batch)

    assert norms == pytest.approx([direct_norm(backend.model, item, 1.2) for item in batch], abs=1e-5)
    assert len({round(norm, 4) for norm in norms}) == len(norms) and min(norms) > 0
    assert backend.model.training == training and backend.version == version
    assert all(torch.equal(weights[name], tensor) for name, tensor in backend.model.state_dict().items())
    assert all(torch.equal(grads[name], p.grad) for name, p in backend.model.named_parameters())
    after = backend.optimizer.state_dict()
    assert after["param_groups"] == optimiser["param_groups"]
    for key, state in optimiser["state"].items():
        assert all(torch.equal(value, after["state"][key][name]) for name, value in state.items())
