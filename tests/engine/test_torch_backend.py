"""The continuous-batching TorchBackend through the GenerationBackend interface: slots
refill at once, n samples share a prefill, abort and resume, stop tokens, token budget,
and per-token policy versions across load_weights."""

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from engine.inference.interface import PartialResponse, Request, SamplingParams, run_to_completion
from engine.inference.torch_backend import TorchBackend
from engine.algorithms.policy_loss import token_logprobs
from engine.models import TinyModelConfig, build_tiny_model, build_tokenizer

PROMPT = [1, 20, 30, 40]  # <bos> and three words


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tiny_model(build_tokenizer(), TinyModelConfig(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128))


def greedy(max_new_tokens: int, stop: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=stop)


def run_one(model, request: Request, **backend_options):
    backend = TorchBackend(model, **backend_options)
    backend.submit(request)
    (sample,) = run_to_completion(backend)
    return sample


def recomputed_logprobs(model, prompt_ids, response_ids, temperature=1.0) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[:, len(prompt_ids) - 1 : -1]
    return token_logprobs(logits, torch.tensor([response_ids]), temperature)[0]


def test_a_long_sample_does_not_hold_back_short_ones(model):
    backend = TorchBackend(model, max_slots=2)
    backend.submit(Request("long", PROMPT, greedy(40)))
    for index in range(4):
        backend.submit(Request(f"short{index}", PROMPT[:2], greedy(3)))
    order = [sample.request_id for sample in run_to_completion(backend)]

    assert order == ["short0", "short1", "short2", "short3", "long"]
    # The long sample's first token comes from its prefill, the other 39 from decode steps,
    # and the four short ones ran beside it in the second slot, refilled as each ended:
    # no step was spent waiting (static batches of two would take 39 + 2 + 2).
    assert backend.stats.decode_steps == 39


def test_n_samples_of_a_prompt_share_one_prefill(model):
    backend = TorchBackend(model, max_slots=3, generator=torch.Generator().manual_seed(0))
    for index in range(3):
        backend.submit(Request(str(index), PROMPT[: index + 2], SamplingParams(n=4, max_new_tokens=6)))
    samples = run_to_completion(backend)

    assert len(samples) == 12
    assert backend.stats.prefilled_prompts == 3  # even though only 3 of the 12 fit at once
    first_tokens = {sample.token_ids[0] for sample in samples if sample.request_id == "0"}
    assert len(first_tokens) > 1  # each sample draws its own first token from the shared logits
    for sample in samples:
        expected = recomputed_logprobs(model, sample.prompt_ids, sample.token_ids)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)


def test_requests_with_different_temperatures_decode_together_with_their_own_logprobs(model):
    backend = TorchBackend(model, generator=torch.Generator().manual_seed(1))
    backend.submit(Request("hot", PROMPT, SamplingParams(temperature=1.3, max_new_tokens=8)))
    backend.submit(Request("cool", PROMPT, SamplingParams(temperature=0.6, max_new_tokens=8)))
    for sample in run_to_completion(backend):
        temperature = 1.3 if sample.request_id == "hot" else 0.6
        expected = recomputed_logprobs(model, sample.prompt_ids, sample.token_ids, temperature)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)


def test_abort_returns_the_partial_sample_with_its_logprobs(model):
    backend = TorchBackend(model)
    backend.submit(Request("running", PROMPT, greedy(30)))
    backend.submit(Request("queued", PROMPT, greedy(30)))
    backend.max_slots = 1  # the second request waits behind the first
    for _ in range(5):
        assert backend.step() == []

    (partial,) = backend.abort("running")
    (never_started,) = backend.abort("queued")

    assert partial.status == "aborted" and len(partial.token_ids) == 5
    assert torch.allclose(torch.tensor(partial.logprobs), recomputed_logprobs(model, PROMPT, partial.token_ids), atol=1e-4)
    assert never_started.status == "aborted" and never_started.token_ids == []
    assert not backend.has_unfinished()
    assert backend.abort("running") == []  # already gone: nothing to abort


def test_a_resumed_sample_continues_as_if_never_interrupted(model):
    uninterrupted = run_one(model, Request("a", PROMPT, greedy(24)))

    backend = TorchBackend(model)
    backend.submit(Request("a", PROMPT, greedy(24)))
    for _ in range(9):
        backend.step()
    (partial,) = backend.abort("a")
    resumed_from = PartialResponse(partial.token_ids, partial.logprobs, partial.versions)
    resumed = run_one(model, Request("a", PROMPT, greedy(24), resume_from=resumed_from))

    assert len(partial.token_ids) == 9
    assert resumed.token_ids == uninterrupted.token_ids
    assert resumed.status == uninterrupted.status == "truncated"  # max_new_tokens bounds the whole response
    assert torch.allclose(torch.tensor(resumed.logprobs), torch.tensor(uninterrupted.logprobs), atol=1e-4)


def test_any_of_several_stop_tokens_ends_a_sample(model):
    def sampled(stop: tuple[int, ...]):
        # The same seed draws the same tokens until a stop token ends the sample.
        params = SamplingParams(max_new_tokens=30, stop_token_ids=stop)
        return run_one(model, Request("a", PROMPT, params), generator=torch.Generator().manual_seed(3))

    tokens = sampled(stop=()).token_ids
    # Two tokens of the free-running response, each at its first occurrence.
    first_seen = {token: position for position, token in reversed(list(enumerate(tokens)))}
    (early, early_at), (late, late_at) = sorted(first_seen.items(), key=lambda item: item[1])[1:3]

    both, late_only = sampled(stop=(late, early)), sampled(stop=(late,))

    assert both.status == late_only.status == "completed"
    assert both.token_ids == tokens[: early_at + 1]
    assert late_only.token_ids == tokens[: late_at + 1]


def test_max_new_tokens_one_needs_no_decode_step(model):
    backend = TorchBackend(model)
    backend.submit(Request("a", PROMPT, SamplingParams(n=3, max_new_tokens=1)))
    samples = run_to_completion(backend)
    assert [len(sample.token_ids) for sample in samples] == [1, 1, 1]
    assert {sample.status for sample in samples} == {"truncated"}
    assert backend.stats.decode_steps == 0


def test_the_token_budget_bounds_the_samples_running_at_once(model):
    backend = TorchBackend(model, max_tokens=len(PROMPT) + 10)
    for index in range(3):
        backend.submit(Request(str(index), PROMPT, greedy(10)))
    run_to_completion(backend)
    assert backend.stats.decode_steps == 3 * 9  # one at a time

    with pytest.raises(ValueError, match="max_tokens"):
        backend.submit(Request("big", PROMPT, greedy(11)))


def test_load_weights_changes_the_policy_and_the_version_each_token_carries(model):
    policy = copy.deepcopy(model)
    backend = TorchBackend(policy)
    backend.submit(Request("a", PROMPT, greedy(12)))
    for _ in range(4):
        backend.step()
    perturbed = {name: tensor + 0.05 * torch.randn_like(tensor) for name, tensor in model.state_dict().items()}
    backend.load_weights(perturbed, version=1)
    (switched,) = run_to_completion(backend)
    backend.submit(Request("b", PROMPT, greedy(12)))
    (after,) = run_to_completion(backend)
    before = run_one(model, Request("c", PROMPT, greedy(12)))

    assert switched.versions == [0] * 4 + [1] * 8  # the prefill's token and 3 decode steps under version 0
    assert after.versions == [1] * 12 and before.versions == [0] * 12
    # The new weights produced the new log-probs (the random model repeats one
    # token greedily under both, so the numbers, not the tokens, tell them apart).
    assert torch.allclose(torch.tensor(after.logprobs), recomputed_logprobs(policy, PROMPT, after.token_ids), atol=1e-4)
    assert not torch.allclose(torch.tensor(after.logprobs), torch.tensor(before.logprobs), atol=1e-2)
    assert torch.equal(policy.state_dict()["lm_head.weight"], perturbed["lm_head.weight"])


def test_bad_requests_are_refused_with_the_reason(model):
    backend = TorchBackend(model)
    with pytest.raises(ValueError, match="empty prompt"):
        Request("a", [], greedy(4))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="nothing is left"):
        backend.submit(Request("a", PROMPT, greedy(2), resume_from=PartialResponse([5, 6], [0.0, 0.0], [0, 0])))
    backend.submit(Request("a", PROMPT, greedy(2)))
    with pytest.raises(ValueError, match="already in flight"):
        backend.submit(Request("a", PROMPT, greedy(2)))


def test_a_qwen2_model_decodes_ragged_rows_like_transformers_generate():
    # Qwen2 adds q/k/v biases and grouped KV heads to what the Llama tests cover.
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    qwen = Qwen2ForCausalLM(config).eval()
    prompts = [torch.randint(3, 300, (length,)).tolist() for length in (3, 11, 6)]
    backend = TorchBackend(qwen, max_slots=2, generator=torch.Generator().manual_seed(0))
    for index, prompt in enumerate(prompts):
        backend.submit(Request(str(index), prompt, SamplingParams(temperature=0.0, max_new_tokens=10 + 5 * index)))
    samples = sorted(run_to_completion(backend), key=lambda sample: sample.request_id)

    for prompt, sample in zip(prompts, samples):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            reference = qwen.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=len(sample.token_ids),
                eos_token_id=None, pad_token_id=0,
            )
        assert sample.token_ids == reference[0, len(prompt) :].tolist()
        expected = recomputed_logprobs(qwen, prompt, sample.token_ids)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)
