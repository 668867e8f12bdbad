"""The built-in task "arith": chained single-digit additions and subtractions.

A problem is a chain of k operations on numbers in 0..99, e.g. ``7 + 5 - 3 + 8 =``;
the reference solution rewrites the expression with the first operation done, one
line at a time, until one number is left, then states the answer:

    prompt:    7 + 5 - 3 + 8 =\\n
    solution:  12 - 3 + 8\\n9 + 8\\n17\\n#### 17

Why this shape (docs/architecture.md, "the built-in tasks"):

- Verifiable by a checker: `score` reads the final ``#### <int>`` and compares it.
- Graded difficulty: difficulty = k, the number of operations. Each line needs one
  local fact (``a ± d`` with a in 0..99, d in 0..9) plus copying the rest of the line
  above, so a small model gets easy chains right and errs more often on long ones
  (every token is one more chance to slip at temperature 1).
- Long tail: line j holds 2(k − j) + 1 tokens, so a solution has k² + k + 3 tokens
  (newlines, ``####``, the answer and EOS included) and length grows quadratically in k.
  With k drawn from a power law P(k) ∝ k^-alpha on 1..max_ops, most chains are short
  and a few are long: with the defaults, p50 is 9 tokens and p99 is 159 (ratio ≈ 18).
- Reduction rather than "running total" steps: each line only needs the line just above
  it (no lookup of the i-th operand far back), which a 2-layer model learns quickly.
- Every number is one token (0..99) and every intermediate value stays in 0..99: when
  ``a + d`` would pass 99 the sign is forced to ``-``, when ``a - d`` would go below 0 it
  is forced to ``+``, otherwise it is a coin flip. The first number is drawn from 0..99,
  so the k = 1 chains alone span about 1,500 distinct prompts.

Splits: an expression belongs to the test split when a hash of its text falls in the
first `test_share` of the hash range, so train and test can never share a prompt and the
assignment does not depend on the seed or count. Within a split, problems are drawn
i.i.d. from the law above with a seeded generator; the first `count` problems of a
(split, seed) stream are the same whatever `count` is, and short chains can repeat
(there are only ~300 test prompts with k = 1). A problem's id is a hash of its text,
so a repeated prompt keeps its id, which is what a per-prompt difficulty store needs.
"""

import hashlib
import random
import re
from dataclasses import dataclass

from engine.tasks import TASKS, Problem, Split

ANSWER_MARKER = "####"
_ANSWER_RE = re.compile(r"####\s*(-?\d+)")


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


BLANK = "."


def chain_lines(first: int, ops: list[tuple[str, int]], width: int) -> list[str]:
    """The chain and each step of its reduction, right-aligned to `width` words.

    Line 0 is the chain. Line j (j ≥ 1) shows the step just done, ``v s = v'``, followed
    by the operations still to do. Left-padding with BLANK keeps every line `width`
    words long, so an operation still to do sits in the same column on every line and
    the step's inputs ``v s`` sit two columns left of where they were on the line above.
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
    test_share: float = 0.2
    max_value: int = 99  # every number in a chain stays in 0..max_value (≤ 99: one token each)

    def ops_weights(self) -> list[float]:
        """Unnormalised P(k) for k = 1..max_ops."""
        return [k**-self.alpha for k in range(1, self.max_ops + 1)]

    def split_of(self, expression: str) -> Split:
        return "test" if _digest("split:" + expression) % 10_000 < self.test_share * 10_000 else "train"

    def sample(self, rng: random.Random) -> Problem:
        """One problem from the law (ignoring the split)."""
        k = rng.choices(range(1, self.max_ops + 1), weights=self.ops_weights())[0]
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
        lines = chain_lines(first, ops, width=self.max_ops + 3)
        return Problem(
            id=f"arith-{_digest(lines[0]):016x}",
            prompt=lines[0] + "\n",
            answer=str(value),
            difficulty=float(k),
            solution="\n".join(lines[1:] + [f"{ANSWER_MARKER} {value}"]),
        )

    def problems(self, split: Split, count: int, seed: int) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}")
        rng = random.Random(f"arith:{split}:{seed}")
        out: list[Problem] = []
        while len(out) < count:
            problem = self.sample(rng)
            if self.split_of(problem.prompt) == split:
                out.append(problem)
        return out

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the last ``#### <int>`` in the response equals the answer, else 0.0."""
        found = _ANSWER_RE.findall(response)
        return 1.0 if found and found[-1] == problem.answer else 0.0


TASKS.register("arith", ArithTask())
