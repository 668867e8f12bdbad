"""Write the shipped sample dataset: GSM8K-style word problems, generated here (not
downloaded), so a file-dataset run works offline out of the box.

    python -m engine.data.sample [--out engine/assets/datasets/gsm8k-style-sample.jsonl]

Each line is ``{"id", "question", "answer", "difficulty"}`` with GSM8K's answer format:
worked steps, then ``#### <number>`` (thousands written with commas). Difficulty is the
number of arithmetic steps. Read it with columns ``{"prompt": "question", "id": "id",
"difficulty": "difficulty"}`` and ``answer_format: gsm8k``. A seeded generator makes
the file the same on every machine (tests/engine/test_datasets.py checks it).
"""

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "assets" / "datasets" / "gsm8k-style-sample.jsonl"
SAMPLE_ROWS = 100
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "books"]

# A generator returns (question, steps, answer); each step is one line of the solution.
Word = tuple[str, list[str], int]


def _gift(rng: random.Random) -> Word:
    name, friend, item = *rng.sample(NAMES, 2), rng.choice(ITEMS)
    have, given = rng.randint(3, 60), rng.randint(2, 40)
    total = have + given
    question = (
        f"{name} has {have} {item}. {friend} gives {name} {given} more. How many {item} does {name} have now?"
    )
    return question, [f"{name} has {have} + {given} = {total} {item}."], total


def _spend(rng: random.Random) -> Word:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    have, used, lost = rng.randint(40, 120), rng.randint(5, 30), rng.randint(1, 9)
    left = have - used - lost
    question = (
        f"{name} had {have} {item}, used {used} of them for a school project and then lost {lost}. "
        f"How many {item} are left?"
    )
    steps = [
        f"After the project {name} has {have} - {used} = {have - used} {item}.",
        f"Then {have - used} - {lost} = {left}.",
    ]
    return question, steps, left


def _boxes(rng: random.Random) -> Word:
    item = rng.choice(ITEMS)
    boxes, per_box, extra = rng.randint(3, 12), rng.randint(6, 24), rng.randint(1, 5)
    total = boxes * per_box + extra
    question = (
        f"A shop has {boxes} boxes of {item} with {per_box} in each box, and {extra} loose {item}. "
        f"How many {item} does it have?"
    )
    steps = [
        f"The boxes hold {boxes} * {per_box} = {boxes * per_box} {item}.",
        f"With the loose ones: {boxes * per_box} + {extra} = {total}.",
    ]
    return question, steps, total


def _share(rng: random.Random) -> Word:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each = rng.randint(2, 9), rng.randint(3, 15)
    total = friends * each
    question = f"{name} shares {total} {item} equally among {friends} friends. How many {item} does each friend get?"
    return question, [f"Each friend gets {total} / {friends} = {each} {item}."], each


def _savings(rng: random.Random) -> Word:
    name = rng.choice(NAMES)
    weekly, weeks, spent = rng.randint(40, 250), rng.randint(10, 52), rng.randint(100, 900)
    saved = weekly * weeks - spent
    question = (
        f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a bike. "
        f"How many dollars does {name} have left?"
    )
    steps = [
        f"{name} saves {weekly} * {weeks} = {weekly * weeks} dollars.",
        f"After the bike: {weekly * weeks} - {spent} = {saved}.",
    ]
    return question, steps, saved


GENERATORS: list[Callable[[random.Random], Word]] = [_gift, _spend, _boxes, _share, _savings]


def sample_rows(count: int = SAMPLE_ROWS, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < count:
        question, steps, answer = rng.choice(GENERATORS)(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append(
            {
                "id": f"sample-{len(rows) + 1:03d}",
                "question": question,
                "answer": "\n".join(steps + [f"#### {answer:,}"]),
                "difficulty": len(steps),
            }
        )
    return rows


def sample_text(count: int = SAMPLE_ROWS, seed: int = 0) -> str:
    return "".join(json.dumps(row) + "\n" for row in sample_rows(count, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(sample_text())
    print(f"wrote {SAMPLE_ROWS} rows to {args.out}")


if __name__ == "__main__":
    main()
