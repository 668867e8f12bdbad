"""Make the built-in model `builtin:arith-tiny`: a short supervised warm start.

    python -m engine.warmstart [--out FOLDER]

Builds the word-level tokenizer and a tiny Llama (engine.models), trains it for a fixed,
seeded recipe on reference solutions of the arith task's *train* split (loss on the
solution tokens only), measures accuracy on held-out *test* prompts, and writes the
folder with save_pretrained (safetensors) plus `warmstart.json` (recipe and accuracy).

The recipe is deliberately short. RL needs a policy that solves some prompts and not
others: after it, sampling at temperature 1 solves most 1–2 operation chains, some of
the middle ones and few of the longest, so per-prompt pass rates spread over 0..1 and
GRPO groups carry signal. A fully trained model would leave RL nothing to do.
"""

import argparse
import os
import dataclasses
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.assets import ASSETS_DIR
from engine.generation import SamplingParams, generate
from engine.models import TinyModelConfig, build_tiny_model, build_tokenizer
from engine.tasks import TASKS, Problem
from engine.tasks.arith import ArithTask


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    shape: TinyModelConfig = field(default_factory=TinyModelConfig)
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    eval_size: int = 512
    threads: int = 2
    tokens_per_chunk: int = 4096
    sft_alpha: float = 2.0  # power law of the SFT problems (see train())


def supervised_batch(tokenizer, problems: list[Problem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt + solution + EOS. Returns input_ids, attention_mask and
    labels, all [B, L]; labels are -100 on prompt tokens and padding."""
    rows, label_rows = [], []
    for problem in problems:
        prompt = tokenizer(problem.prompt)["input_ids"]
        answer = tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        label_rows.append([-100] * len(prompt) + answer)
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows)):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
        labels[index, : len(row)] = torch.tensor(label_row)
    return input_ids, attention_mask, labels


def _length_chunks(tokenizer, problems: list[Problem], tokens_per_chunk: int) -> list[list[Problem]]:
    """Split length-sorted problems into chunks of at most ~tokens_per_chunk padded tokens."""
    chunks: list[list[Problem]] = [[]]
    for problem in problems:
        width = len(tokenizer(problem.prompt + problem.solution)["input_ids"]) + 1
        if chunks[-1] and width * (len(chunks[-1]) + 1) > tokens_per_chunk:
            chunks.append([])
        chunks[-1].append(problem)
    return chunks


def accuracy_by_difficulty(model, tokenizer, problems: list[Problem], temperature: float, seed: int) -> dict[str, float]:
    """Share of problems solved by one sample each (temperature 0 = greedy), overall and
    per number of operations."""
    task = TASKS.get("arith")
    generator = torch.Generator().manual_seed(seed)
    completions = generate(
        model, tokenizer, [p.prompt for p in problems], SamplingParams(temperature=temperature, max_new_tokens=200), generator
    )
    scores: dict[int, list[float]] = {}
    for problem, completion in zip(problems, completions):
        text = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        scores.setdefault(int(problem.difficulty), []).append(task.score(problem, text))
    out = {"all": sum(sum(s) for s in scores.values()) / len(problems)}
    out.update({f"k={k}": round(sum(s) / len(s), 3) for k, s in sorted(scores.items())})
    return out


def train(recipe: Recipe, log=print):
    """Run the recipe; returns (model, tokenizer, report)."""
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    task: ArithTask = TASKS.get("arith")
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, recipe.shape)
    if os.environ.get('FOURIER'):
        from engine.models import init_number_embeddings; init_number_embeddings(model, tokenizer); print('fourier init')
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < recipe.warmup_steps:
            return recipe.lr * (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    # The task's law puts most *tokens* in long chains (token mass ∝ k^(2 - alpha)), which
    # mostly teach copying; sampling k ∝ k^-2 here spreads tokens evenly over k, so the
    # short chains that teach the arithmetic facts get their share. Train split only.
    sft_task = dataclasses.replace(task, alpha=recipe.sft_alpha)
    if os.environ.get('MAXV'): sft_task = dataclasses.replace(sft_task, max_value=int(os.environ['MAXV'])); task = dataclasses.replace(task, max_value=int(os.environ['MAXV']))
    problems = sft_task.problems("train", recipe.steps * recipe.batch_size, seed=recipe.seed)
    started = time.time()
    model.train()
    for step in range(recipe.steps):
        batch = problems[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        # Lengths are long-tailed: padding every row to the longest one would waste most
        # of the compute, so rows of similar length go through together (same gradient).
        batch = sorted(batch, key=lambda problem: len(problem.solution))
        tokens = sum(len(tokenizer(p.solution)["input_ids"]) for p in batch)
        total = 0.0
        for chunk in _length_chunks(tokenizer, batch, recipe.tokens_per_chunk):
            input_ids, attention_mask, labels = supervised_batch(tokenizer, chunk)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
            ) / tokens
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == recipe.steps - 1:
            log(f"step {step:4d}  loss {total:.4f}  {time.time() - started:.0f}s")
    train_seconds = time.time() - started

    print("eval task", task)
    held_out = task.problems("test", recipe.eval_size, seed=recipe.seed)
    report = {
        "train_seconds": round(train_seconds, 1),
        "held_out_accuracy": {
            "temperature_1": accuracy_by_difficulty(model, tokenizer, held_out, 1.0, recipe.seed),
            "greedy": accuracy_by_difficulty(model, tokenizer, held_out, 0.0, recipe.seed),
        },
    }
    return model, tokenizer, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS_DIR / "arith-tiny")
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    args = parser.parse_args(argv)
    recipe = Recipe(steps=args.steps)
    model, tokenizer, report = train(recipe)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    record = {"recipe": asdict(recipe), "task": asdict(TASKS.get("arith")), **report}
    (args.out / "warmstart.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
