"""Generation throughput: the continuous-batching TorchBackend vs transformers' generate().

Two long-tailed workloads, each run by both sides on the same model, prompts, sampling
parameters and rows per batch:

1. arith-tiny: the warm-started built-in model on the arith task's held-out prompts
   (power-law difficulty, so most responses are short and a few long), n samples per
   prompt at temperature 1, top-p 1, max_new_tokens 256; responses end at EOS.
2. random-llama: a randomly initialised 4-layer Llama (d=256) whose responses would
   never end on their own. Each request gets a target length drawn from a Pareto law
   (minimum 8 tokens, shape 1.2, capped at 256) and ends exactly there on both sides:
   the backend gets it as the request's max_new_tokens (stop tokens off); generate()
   gets a stopping criterion that marks row i finished once it has generated target_i
   tokens (and max_new_tokens = the batch's longest target), which is how it treats a
   row that sampled EOS. Both produce exactly sum(target_i) tokens, sampled at T = 1.

generate() gets its best reasonable settings: batched with left padding, KV cache on,
the model's own dtype, `num_return_sequences=n` (it expands the prompts), top-k off so
both sample from the same distribution, and batches of the same number of rows as the
backend's slots. Generated tokens count every sampled token up to and including the
stop token (what the trainer trains on); padding after a finished row does not count.
Both sides run with the same torch CPU thread count (--threads, default 1: on a shared
machine extra threads only wait on each other).

    .venv/bin/python -m bench.generation_throughput [--prompts 64] [--n 8] [--requests 512] [--slots 128]
"""

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList

from bench.record import record
from engine.generation import SamplingParams, generate, stop_token_ids
from engine.inference.interface import Request, run_to_completion
from engine.inference.torch_backend import TorchBackend
from engine.models import load_policy
from engine.spec import ModelSpec
from engine.tasks import BUILTIN_TASKS

MAX_NEW_TOKENS = 256


def timed(work) -> tuple[int, float]:
    """(generated tokens, wall seconds) of work()."""
    started = time.perf_counter()
    tokens = work()
    return tokens, time.perf_counter() - started


def response_lengths(rows: torch.Tensor, stop_ids: tuple[int, ...]) -> list[int]:
    """Generated tokens per row of generate()'s output (prompt cut off): up to and
    including the first stop token, else the whole row."""
    lengths = []
    for row in rows.tolist():
        ends = [position for position, token in enumerate(row) if token in stop_ids]
        lengths.append(ends[0] + 1 if ends else len(row))
    return lengths


def hf_generate(model, prompt_rows: list[list[int]], pad_id: int, rows_per_batch: int, n: int, batch_options=None, **options):
    """transformers' generate() over left-padded batches of prompts; returns each batch's
    generated tokens [rows, new tokens]. batch_options(start, prompt_width) gives extra
    keyword arguments for the batch starting at prompt `start`."""
    outputs = []
    per_batch = max(1, rows_per_batch // n)
    for start in range(0, len(prompt_rows), per_batch):
        batch = prompt_rows[start : start + per_batch]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=model.device)
        pad_columns = torch.tensor([width - len(ids) for ids in batch], device=model.device)
        attention_mask = (torch.arange(width, device=model.device)[None, :] >= pad_columns[:, None]).long()
        with torch.no_grad():
            out = model.generate(
                input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                top_k=0,
                num_return_sequences=n,
                use_cache=True,
                pad_token_id=pad_id,
                **options,
                **(batch_options(start, width) if batch_options else {}),
            )
        outputs.append(out[:, width:])
    return outputs


def arith_workload(prompt_count: int, n: int, slots: int) -> dict:
    model, tokenizer = load_policy(ModelSpec(device="auto"))
    model.eval()
    problems = BUILTIN_TASKS.get("arith").problems("test", prompt_count, seed=0)
    prompts = [problem.prompt for problem in problems]
    stops = stop_token_ids(model, tokenizer)
    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=stops)

    def ours() -> int:
        generator = torch.Generator(device=model.device).manual_seed(0)
        return sum(len(c.token_ids) for c in generate(model, tokenizer, prompts, params, generator, max_slots=slots))

    def theirs() -> int:
        torch.manual_seed(0)
        outputs = hf_generate(
            model, tokenizer(prompts)["input_ids"], tokenizer.pad_token_id, slots, n,
            temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=list(stops),
        )
        return sum(sum(response_lengths(rows, stops)) for rows in outputs)

    return compare(ours, theirs, f"{prompt_count} prompts × n={n}, T=1, max {MAX_NEW_TOKENS} new tokens")


class StopAtTargetLength(StoppingCriteria):
    """Row i of the batch is done once it has generated targets[i] tokens."""

    def __init__(self, targets: list[int], prompt_width: int):
        self.targets = torch.tensor(targets)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_width
        return (generated >= self.targets).to(input_ids.device)


def random_llama_workload(request_count: int, slots: int) -> dict:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(config).to(device).eval()
    draws = torch.Generator().manual_seed(1)
    prompts = [
        [1] + torch.randint(3, config.vocab_size, (int(torch.randint(16, 64, (1,), generator=draws)),), generator=draws).tolist()
        for _ in range(request_count)
    ]
    # Pareto(shape 1.2, minimum 8), capped: median ≈ 14 tokens, a few reach 256.
    uniform = torch.rand(request_count, generator=draws)
    targets = (8 * uniform ** (-1 / 1.2)).floor().clamp(max=MAX_NEW_TOKENS).long().tolist()

    def ours() -> int:
        backend = TorchBackend(model, max_slots=slots, generator=torch.Generator(device=device).manual_seed(0))
        for index, (prompt, target) in enumerate(zip(prompts, targets)):
            backend.submit(Request(str(index), prompt, SamplingParams(temperature=1.0, max_new_tokens=target)))
        return sum(len(sample.token_ids) for sample in run_to_completion(backend))

    def theirs() -> int:
        torch.manual_seed(0)

        def stop_at_targets(start: int, prompt_width: int) -> dict:
            batch_targets = targets[start : start + slots]
            return {
                "max_new_tokens": max(batch_targets),
                "stopping_criteria": StoppingCriteriaList([StopAtTargetLength(batch_targets, prompt_width)]),
            }

        outputs = hf_generate(
            model, prompts, 0, slots, 1, batch_options=stop_at_targets, temperature=1.0, top_p=1.0, eos_token_id=None
        )
        # Row i's tokens after its target are generate()'s padding of a finished row.
        widths = [batch.shape[1] for batch in outputs for _ in range(batch.shape[0])]
        return sum(min(target, width) for target, width in zip(targets, widths))

    workload = f"{request_count} requests, target lengths Pareto(1.2, min 8) ≤ {MAX_NEW_TOKENS}, T=1"
    return compare(ours, theirs, workload, expected_tokens=sum(targets))


def compare(ours, theirs, workload: str, expected_tokens: int | None = None) -> dict:
    backend_tokens, backend_s = timed(ours)
    hf_tokens, hf_s = timed(theirs)
    if expected_tokens is not None:
        assert backend_tokens == hf_tokens == expected_tokens, (backend_tokens, hf_tokens, expected_tokens)
    result = {
        "workload": workload,
        "backend_tokens": backend_tokens,
        "backend_s": round(backend_s, 2),
        "backend_tokens_per_s": round(backend_tokens / backend_s, 1),
        "hf_generate_tokens": hf_tokens,
        "hf_generate_s": round(hf_s, 2),
        "hf_generate_tokens_per_s": round(hf_tokens / hf_s, 1),
    }
    result["speedup"] = round(result["backend_tokens_per_s"] / result["hf_generate_tokens_per_s"], 2)
    print(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64, help="arith prompts (each sampled n times)")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--requests", type=int, default=512, help="random-llama requests")
    parser.add_argument("--slots", type=int, default=128, help="backend slots = generate() rows per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both sides")
    args = parser.parse_args()
    # On a shared machine more threads than free cores make every op wait on spinning
    # OpenMP workers (10× slower per step when we measured with 2 threads at load 14).
    torch.set_num_threads(args.threads)

    metrics = {
        "slots": args.slots,
        "threads": args.threads,
        "arith_tiny": arith_workload(args.prompts, args.n, args.slots),
        "random_llama": random_llama_workload(args.requests, args.slots),
    }
    summary = "; ".join(
        f"{name}: {m['backend_tokens_per_s']:.0f} vs {m['hf_generate_tokens_per_s']:.0f} tok/s "
        f"(generate()), {m['speedup']:.2f}×"
        for name, m in (("arith-tiny", metrics["arith_tiny"]), ("random 4-layer Llama", metrics["random_llama"]))
    )
    record(__spec__.name, metrics, summary)
    print(summary)


if __name__ == "__main__":
    main()
