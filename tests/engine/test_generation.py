"""engine.generation.generate, served by the continuous-batching TorchBackend: log-probs
match a full recompute, greedy decoding matches transformers' generate(), EOS stops a
sequence, and completions come back grouped by prompt."""

import pytest
import torch

from engine.generation import SamplingParams, generate, stop_token_ids
from engine.inference.sampling import sample_next
from engine.inference.sampling import sample_rows
from engine.algorithms.policy_loss import token_logprobs
from engine.models import TinyModelConfig, build_tiny_model, build_tokenizer, load_policy
from engine.spec import ModelSpec
from engine.tasks import BUILTIN_TASKS

# Prompts of different lengths, so left padding and position ids matter.
PROMPTS = ["3 +4\n", ". . 12 -3 +8 +1\n", "7\n"]


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, TinyModelConfig(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128))
    return model, tokenizer


@pytest.fixture(scope="module")
def builtin_model():
    return load_policy(ModelSpec(device="cpu"))


def full_sequence_logprobs(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> torch.Tensor:
    """One unpadded forward over prompt + response: log-probs of the response tokens."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, len(prompt_ids) - 1 : -1]
    return token_logprobs(logits, torch.tensor([response_ids]), temperature)[0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_returned_logprobs_equal_a_full_sequence_recompute(random_model, temperature):
    model, tokenizer = random_model
    params = SamplingParams(n=3, temperature=temperature, max_new_tokens=12)
    completions = generate(model, tokenizer, PROMPTS, params, torch.Generator().manual_seed(1))

    assert len(completions) == 9
    for completion in completions:
        assert len(completion.logprobs) == len(completion.token_ids) > 0
        expected = full_sequence_logprobs(model, completion.prompt_ids, completion.token_ids, temperature)
        assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)


def test_greedy_decoding_equals_transformers_generate(builtin_model):
    model, tokenizer = builtin_model
    prompts = [problem.prompt for problem in BUILTIN_TASKS.get("arith").problems("test", 6, seed=3)]
    ours = generate(model, tokenizer, prompts, SamplingParams(temperature=0.0, max_new_tokens=40), max_slots=4)

    for prompt, completion in zip(prompts, ours):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            reference = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        assert completion.token_ids == reference[0, ids.shape[1] :].tolist()


def test_completions_are_grouped_by_prompt_in_the_order_given(random_model):
    model, tokenizer = random_model
    completions = generate(model, tokenizer, PROMPTS, SamplingParams(n=4, max_new_tokens=3))
    assert [c.prompt_index for c in completions] == [0] * 4 + [1] * 4 + [2] * 4
    assert completions[4].prompt_ids == tokenizer(PROMPTS[1])["input_ids"]


def test_sampling_is_reproducible_with_a_seeded_generator(random_model):
    model, tokenizer = random_model
    params = SamplingParams(n=3, max_new_tokens=10)
    first = generate(model, tokenizer, PROMPTS, params, torch.Generator().manual_seed(5))
    second = generate(model, tokenizer, PROMPTS, params, torch.Generator().manual_seed(5))
    assert [c.token_ids for c in first] == [c.token_ids for c in second]


def test_a_sequence_stops_at_eos_and_a_long_one_is_cut_at_max_new_tokens(builtin_model):
    model, tokenizer = builtin_model
    task = BUILTIN_TASKS.get("arith")
    problems = task.problems("test", 200, seed=0)
    short = next(p for p in problems if p.difficulty == 1)
    long = next(p for p in problems if p.difficulty >= 4)

    done = generate(model, tokenizer, [short.prompt, long.prompt], SamplingParams(temperature=0.0, max_new_tokens=30))

    # The one-step chain (16 + 3 = 19 tokens) ends with EOS and nothing after it.
    assert done[0].status == "completed" and done[0].token_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in done[0].token_ids[:-1]
    assert task.score(short, tokenizer.decode(done[0].token_ids, skip_special_tokens=True)) == 1.0
    # The long one (16·4 + 3 = 67 tokens) is cut at 30.
    assert done[1].status == "truncated" and len(done[1].token_ids) == 30


def test_top_p_keeps_only_the_nucleus():
    # Probabilities (0.5, 0.3, 0.15, 0.05): top_p = 0.7 keeps the first two (0.5 < 0.7 ≤ 0.8).
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(2000, 1)
    tokens, logprobs = sample_next(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}
    # Log-probs are the untruncated distribution's (the documented convention).
    assert torch.allclose(logprobs[tokens == 1], torch.tensor(0.3).log())


def test_each_row_is_sampled_with_its_own_temperature_and_top_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(2000, 1)
    settings = [(1.0, 0.7) if row % 2 == 0 else (1.0, 1.0) for row in range(2000)]
    tokens, _ = sample_rows(logits, settings, torch.Generator().manual_seed(0))
    assert set(tokens[0::2].tolist()) == {0, 1}
    assert set(tokens[1::2].tolist()) == {0, 1, 2, 3}


def test_no_prompts_give_no_completions(random_model):
    model, tokenizer = random_model
    assert generate(model, tokenizer, [], SamplingParams(n=4)) == []


def test_the_models_end_tokens_all_stop_a_completion(random_model):
    model, tokenizer = random_model
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    try:
        assert stop_token_ids(model, tokenizer) == (tokenizer.eos_token_id, 7)
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
