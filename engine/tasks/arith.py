"""The built-in task "arith": chains of single-digit additions and subtractions.

A problem is a chain of k operations, e.g. ``7 +5 -3 +8``. The reference solution does
one operation per line, writing the step ``v s = v'`` followed by the operations still
to do, then states the answer after ``####``. Lines are right-aligned to a fixed width
with the blank word ``.``:

    prompt     . . . . . . . . . . . 7 +5 -3 +8
    solution   . . . . . . . . . 7 +5 = 12 -3 +8
               . . . . . . . . . . 12 -3 = 9 +8
               . . . . . . . . . . . 9 +8 = 17
               #### 17

Why this shape (docs/architecture.md, "the built-in tasks"):

- Verifiable: `score` reads the last ``#### <int>`` of a response and compares it
  (the ``arith`` verifier, engine.verifiers).
- Graded difficulty: difficulty = k, the number of operations; every line is one more
  chance to slip, so longer chains are harder for the same policy.
- Long tail: a solution has (max_ops + 4)·k + 3 tokens (newlines, ``####``, the answer
  and EOS included), and k follows a power law P(k) ∝ k^-alpha on 1..max_ops, so most
  chains are short and a few are long: with the defaults p50 = 35 and p99 = 195 tokens
  (p99/p50 ≈ 5.6; tested).
- Learnable by a tiny model in a couple of minutes on 2 CPU cores, which decided the
  details (each was measured on a 2-layer, d=128 Llama):
  * The reduction is written step by step so the model needs no pointer into the
    prompt: every line is built from the line just above it.
  * The alignment makes every lookup a *fixed* offset: an operation still to do is in
    the same column one line down (one line = max_ops + 4 tokens), and the step's
    inputs ``v s`` are copied from two columns further right. Left-aligned reductions
    ("12 - 3 + 8", "9 + 8", ...) need a copy offset that changes from line to line;
    a tiny model had not learned that after 2,000 supervised steps.
  * The arithmetic itself is local: ``v s = v'`` puts both inputs right before the
    result. Numbers stay in 0..max_value = 19 and operands are one word (``+5``, ``-3``),
    so the model learns a 20 × 18 table (about 500 steps) instead of a 100 × 18 one
    (not learned in 1,500 steps). A sign is forced when the other one would leave the
    range, otherwise it is a coin flip.
  Every word is one token of the built-in tokenizer (engine.models.ARITH_WORDS).

Splits: a chain belongs to the test split when a hash of its text falls in the first
`test_share` of the hash range, so train and test never share a prompt and the split
depends on neither seed nor count. The `hard` split is held out the same way (its chains
are test-split chains, never trained on) but draws k uniformly from hard_min_ops..max_ops
instead of the power law: the long chains the train law rarely shows, where a policy is
far from solving every prompt, so Pass@K for k up to 16 is not at its ceiling
(`training.eval_split: hard`; docs/benchmarks.md, CurES and DARS). Within a split, problems are drawn i.i.d. from the
law with a seeded generator; the first `count` problems of a (split, seed) stream are
the same whatever `count` is. Short chains can repeat (there are only 270 one-step
chains in all). A problem's id is a hash of its text, so a repeated prompt keeps its id,
which is what a per-prompt difficulty store needs.
"""

import hashlib
import random
from dataclasses import dataclass

from engine.problems import EvalSplit, Problem, Split
from engine.tasks import BUILTIN_TASKS
from engine.verifiers import ANSWER_MARKER, VERIFIERS

BLANK = "."


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def chain_lines(first: int, ops: list[tuple[str, int]], width: int) -> list[str]:
    """The chain and each step of its reduction, right-aligned to `width` words.

    Line 0 is the chain. Line j (j ≥ 1) shows the step just done, ``v s = v'``, then the
    operations still to do. Padding on the left with BLANK keeps every line `width`
    words long (width ≥ len(ops) + 3).
    """
    op_words = [f"{sign}{operand}" for sign, operand in ops]
    lines = [[str(first)] + op_words]
    value = first
    for done, (sign, operand) in enumerate(ops, start=1):
        before = value
        value = value + operand if sign == "+" else value - operand
        lines.append([str(before), op_words[done - 1], "=", str(value)] + op_words[done:])
    return [" ".join([BLANK] * (width - len(words)) + words) for words in lines]


@dataclass(frozen=True)
class ArithTask:
    """Chained arithmetic with a power-law number of operations (see module docstring)."""

    name: str = "arith"
    max_ops: int = 12
    alpha: float = 1.2  # P(k) ∝ k^-alpha
    max_value: int = 19  # every number in a chain stays in 0..max_value (≤ 99: one token each)
    test_share: float = 0.2
    hard_min_ops: int = 9  # the hard split's chains have hard_min_ops..max_ops operations

    @property
    def width(self) -> int:
        """Words per line: the longest line is the first step of a max_ops chain."""
        return self.max_ops + 3

    def ops_weights(self, split: EvalSplit | Split = "train") -> list[float]:
        """Unnormalised P(k) for k = 1..max_ops: the power law, or the hard split's uniform tail."""
        if split == "hard":
            return [float(k >= self.hard_min_ops) for k in range(1, self.max_ops + 1)]
        return [k**-self.alpha for k in range(1, self.max_ops + 1)]

    def split_of(self, prompt: str) -> Split:
        return "test" if _digest("split:" + prompt) % 10_000 < self.test_share * 10_000 else "train"

    def sample(self, rng: random.Random, law: EvalSplit | Split = "train") -> Problem:
        """One problem from the law (`hard`: the uniform tail), whichever split it falls in."""
        k = rng.choices(range(1, self.max_ops + 1), weights=self.ops_weights(law))[0]
        first = rng.randrange(self.max_value + 1)
        value, ops = first, []
        for _ in range(k):
            operand = rng.randrange(1, 10)
            if value + operand > self.max_value:
                sign = "-"
            elif value - operand < 0:
                sign = "+"
            else:
                sign = rng.choice("+-")
            value = value + operand if sign == "+" else value - operand
            ops.append((sign, operand))
        lines = chain_lines(first, ops, self.width)
        return Problem(
            id=f"arith-{_digest(lines[0]):016x}",
            prompt=lines[0] + "\n",
            answer=str(value),
            difficulty=float(k),
            solution="\n".join(lines[1:] + [f"{ANSWER_MARKER} {value}"]),
        )

    def problems(self, split: Split | EvalSplit, count: int, seed: int) -> list[Problem]:
        if split not in ("train", "test", "hard"):
            raise ValueError(f"unknown split {split!r}")
        rng = random.Random(f"arith:{split}:{seed}")
        held_out_as = "test" if split == "hard" else split
        out: list[Problem] = []
        while len(out) < count:
            problem = self.sample(rng, split)
            if self.split_of(problem.prompt) == held_out_as:
                out.append(problem)
        return out

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the last ``#### <int>`` in the response equals the answer, else 0.0."""
        return VERIFIERS.get("arith")(response, problem.answer)


BUILTIN_TASKS.register("arith", ArithTask())
