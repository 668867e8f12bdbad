"""The README's measured numbers are the measurements: each carries a mark naming where it
comes from, and this test reads every mark and compares the number, rounded as shown.

The mark is an HTML comment right after the number (or its % sign), invisible on the
rendered page:

    held-out accuracy rises from 0.55<!-- bench:demo_learning.metrics.val_acc_start -->

Sources: `bench:NAME.PATH` is bench/results/NAME.json, `warmstart:PATH` the built-in
model's engine/assets/arith-tiny/warmstart.json (written by `python -m engine.warmstart`),
`spec:PATH` the run spec's defaults (engine/spec.py). PATH is dotted keys. A number shown
with a % is a share ×100. "Rounded as shown": the shown value is within half a unit of its
last digit of the source's value (0.55 stands for anything in [0.545, 0.555]).

A number that looks measured (a decimal below 1, a percentage, seconds) without a mark
fails too, so a new claim cannot skip the check.
"""

import json
import re
from pathlib import Path

import pytest

from engine.spec import parse_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"

MARKED = re.compile(r"(?P<shown>\d+(?:\.\d+)?)(?P<percent>%?)<!-- (?P<source>\w+):(?P<path>[^\s]+) -->")
# A number not preceded by a word character or a dot (so not the 99 of `p99`, nor the 11
# of 3.11), with its % sign if any.
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(%?)")
SECONDS = re.compile(r" s(?!\w)")
COMMENT = re.compile(r"<!-- .*? -->", re.DOTALL)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def source_value(source: str, path: str) -> float:
    if source == "bench":
        name, _, path = path.partition(".")
        data = json.loads((REPO_ROOT / "bench" / "results" / f"{name}.json").read_text())
    elif source == "warmstart":
        data = json.loads((REPO_ROOT / "engine" / "assets" / "arith-tiny" / "warmstart.json").read_text())
    elif source == "spec":
        data = parse_spec({}).model_dump()
    else:
        raise AssertionError(f"unknown source {source!r} (bench, warmstart or spec)")
    for key in path.split("."):
        assert isinstance(data, dict) and key in data, f"{source}:{path}: no {key!r} there"
        data = data[key]
    assert isinstance(data, int | float) and not isinstance(data, bool), f"{source}:{path} is {data!r}, not a number"
    return float(data)


def matches_as_shown(shown: str, percent: bool, value: float) -> bool:
    decimals = len(shown.partition(".")[2])
    number = float(shown) / 100 if percent else float(shown)
    half_unit = 0.5 * 10.0 ** -(decimals + (2 if percent else 0))
    return abs(number - value) <= half_unit * (1 + 1e-9)


def marks(text: str) -> list[re.Match]:
    return list(MARKED.finditer(text))


def unmarked_measurements(text: str) -> list[str]:
    """Numbers outside code that read as measurements (a decimal below 1, a percentage,
    seconds) and that no mark follows, each with some context."""
    prose = CODE.sub(lambda code: " " * len(code.group()), text)  # blanked, so offsets hold
    prose = COMMENT.sub(lambda mark: "<!-- " + " " * (len(mark.group()) - 5), prose)
    found = []
    for number in NUMBER.finditer(prose):
        after = prose[number.end() :]
        if after.startswith("<!-- "):
            continue
        if number.group(1).startswith("0.") or number.group(2) or SECONDS.match(after):
            found.append(prose[max(0, number.start() - 40) : number.end() + 10].replace("\n", " "))
    return found


README_TEXT = README.read_text()
README_MARKS = marks(README_TEXT)


def test_the_readme_marks_its_demo_numbers():
    # The demo paragraph quotes 5 spec defaults, 7 benchmark results and 6 warm-start figures.
    sources = [m.group("source") for m in README_MARKS]
    assert (sources.count("spec"), sources.count("bench"), sources.count("warmstart")) == (5, 7, 6), sources


@pytest.mark.parametrize("mark", README_MARKS, ids=[m.group("path") for m in README_MARKS])
def test_a_readme_number_matches_its_source_as_rounded(mark: re.Match):
    value = source_value(mark.group("source"), mark.group("path"))
    shown = mark.group("shown") + mark.group("percent")
    assert matches_as_shown(mark.group("shown"), bool(mark.group("percent")), value), (
        f"README shows {shown} for {mark.group('source')}:{mark.group('path')}, which is {value}"
    )


def test_every_measured_looking_readme_number_has_a_mark():
    assert unmarked_measurements(README_TEXT) == []


# The checks themselves, on text whose right answers are worked out by hand.
def test_rounding_as_shown_allows_half_a_unit_of_the_last_digit():
    assert matches_as_shown("0.55", False, 0.5546875)  # |0.55 − 0.5547| = 0.0047 ≤ 0.005
    assert not matches_as_shown("0.57", False, 0.5546875)  # 0.0153 > 0.005: the stale 0.57
    assert matches_as_shown("51", False, 50.8)  # 0.2 ≤ 0.5
    assert not matches_as_shown("30", False, 50.8)
    assert matches_as_shown("12", True, 0.125)  # 12.5 %: either rounding of a half is fine
    assert matches_as_shown("13", True, 0.125)
    assert not matches_as_shown("54", True, 0.5546875)  # 55.5 % − 54 % = 1.5 points


def test_unmarked_numbers_are_found_and_marked_ones_code_and_versions_are_not():
    text = (
        "rises from 0.55<!-- bench:x.y --> to 0.74 in 51<!-- bench:x.z --> s, 1.7 s a step; 54% held-out, "
        "12%<!-- warmstart:a --> on hard ones; `0.99` in code, Python 3.11+, p99, 60 steps, 2 MB\n"
        "```\nval acc 0.61 after 9 s\n```\n"
    )
    found = unmarked_measurements(text)
    assert len(found) == 3, found  # 0.74, 1.7 s and 54%; not 51 (marked before its unit)
    assert [m.group("shown") + m.group("percent") for m in marks(text)] == ["0.55", "51", "12%"]
