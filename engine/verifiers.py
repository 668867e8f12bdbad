"""Verifiers: named checkers that score a response against a reference answer (torch-free).

A verifier is a callable ``(response, reference) -> float`` returning 1.0 or 0.0. It
never raises: a response is whatever a policy wrote, and one odd completion must cost
its own reward, not the run.

- ``exact``    the final answers match after collapsing whitespace, case and a trailing
               period.
- ``numeric``  the final numbers match within a relative tolerance of 1e-6 (absolute
               1e-9). Reads ``-3``, ``1,234``, ``2.5``, ``.5``, ``3/4``, ``1.5e3``,
               ``1.5 × 10^3``; a currency sign before and a unit or ``%`` after are
               ignored (``$5``, ``5 cm``, ``50%`` read 5, 5 and 50; a percentage is never
               converted to a fraction).
- ``math``     the final answers are the same mathematical object: numbers compare as
               ``numeric`` does; anything else goes through math-verify (sympy) after
               our own LaTeX normalisation (``\\dfrac``, ``\\left(``, ``^\\circ``,
               ``\\text{}``, ``\\!``, ``$`` ...).
- ``arith``    the built-in arith task's checker: the last ``#### <int>`` equals the
               reference.

The *final answer* of a text is the content of its last ``\\boxed{...}``, else the rest of
the line after its last ``####``, else (for a response) its final number; a reference
with neither marker is taken whole.
"""

import math
import re
from collections.abc import Callable
from fractions import Fraction
from functools import wraps

from engine.registry import Registry

Verifier = Callable[[str, str], float]
VERIFIERS: Registry[Verifier] = Registry("verifier")

ANSWER_MARKER = "####"
REL_TOL = 1e-6
ABS_TOL = 1e-9
# Fraction(10**exponent) is exact but costs memory and time proportional to the digits;
# beyond this a number is read as a float (which overflows to inf, and compares as such).
MAX_EXACT_EXPONENT = 400


# ----------------------------------------------------------------- final answers
_BOXED = re.compile(r"\\(?:boxed|fbox)\b\s*")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces kept), or of ``\\boxed 5``;
    None when there is none or the last one is never closed (a truncated response)."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    if start >= len(text):
        return None
    if text[start] != "{":
        # "\boxed 5": one token, as LaTeX reads it.
        token = re.match(r"[^\s$]+", text[start:])
        return token.group(0) if token else None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index].strip()
    return None


def after_marker(text: str, marker: str = ANSWER_MARKER) -> str | None:
    """The rest of the line after the last `marker`, stripped; None when absent or empty."""
    position = text.rfind(marker)
    if position < 0:
        return None
    answer = text[position + len(marker) :].split("\n", 1)[0].strip()
    return answer or None


def marked_answer(text: str) -> str | None:
    """The last ``\\boxed{}`` content, else the text after the last ``####``, else None."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else after_marker(text)


# ----------------------------------------------------------------- numbers
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"  # 1,234.5 | 12 | 12.5 | .5
_NUMBER = re.compile(
    rf"""
    (?<![\w.])                                   # not the tail of a word or a decimal
    (?P<sign>[-−+]?)(?:[$€£¥]\s*)?              # a sign touches its number
    (?P<digits>{_DIGITS})
    (?:[eE](?P<exponent>[-+]?\d+)
      |\s*[x×*·]\s*10\s*\^\s*\{{?(?P<power_of_ten>[-+]?\d+)\}}?)?
    (?:\s*/\s*(?P<denominator>{_DIGITS}))?
    """,
    re.VERBOSE,
)


def _to_number(digits: str, exponent: int = 0) -> Fraction | float:
    plain = digits.replace(",", "")
    if abs(exponent) > MAX_EXACT_EXPONENT:
        return float(f"{plain}e{exponent}")
    return Fraction(plain) * Fraction(10) ** exponent


def _number_of(match: re.Match) -> Fraction | float | None:
    exponent = int(match["exponent"] or match["power_of_ten"] or 0)
    value = _to_number(match["digits"], exponent)
    if match["denominator"]:
        denominator = _to_number(match["denominator"])
        if denominator == 0:
            return None
        value = value / denominator
    return -value if match["sign"] in ("-", "−") else value


def final_number(text: str) -> Fraction | float | None:
    """The value of the last number written in `text`, or None (see module docstring)."""
    for match in reversed(list(_NUMBER.finditer(text))):
        value = _number_of(match)
        if value is not None:
            return value
    return None


def whole_number(text: str) -> Fraction | float | None:
    """The value of `text` when it is one number and nothing else but a ``%`` sign."""
    text = text.strip().removesuffix("%").rstrip()
    match = _NUMBER.fullmatch(text)
    return _number_of(match) if match else None


def numbers_match(got: Fraction | float, expected: Fraction | float) -> bool:
    if got == expected:
        return True
    return math.isclose(float(got), float(expected), rel_tol=REL_TOL, abs_tol=ABS_TOL)


# ----------------------------------------------------------------- verifiers
def _never_raises(verifier: Verifier) -> Verifier:
    @wraps(verifier)
    def guarded(response: str, reference: str) -> float:
        try:
            return verifier(response, reference)
        except Exception:  # a completion that breaks a checker is simply not correct
            return 0.0

    return guarded


def _normalise_text(text: str) -> str:
    return " ".join(text.split()).casefold().removesuffix(".").strip()


@_never_raises
def exact(response: str, reference: str) -> float:
    got = marked_answer(response)
    got = response if got is None else got
    expected = marked_answer(reference)
    expected = reference if expected is None else expected
    return 1.0 if _normalise_text(got) == _normalise_text(expected) and got.strip() else 0.0


@_never_raises
def numeric(response: str, reference: str) -> float:
    expected = final_number(reference)
    answer = marked_answer(response)
    got = final_number(response if answer is None else answer)
    if expected is None or got is None:
        return 0.0
    return 1.0 if numbers_match(got, expected) else 0.0


_ARITH_ANSWER = re.compile(r"####\s*(-?\d+)")


@_never_raises
def arith(response: str, reference: str) -> float:
    found = _ARITH_ANSWER.findall(response)
    return 1.0 if found and found[-1] == reference.strip() else 0.0


# ----------------------------------------------------------------- math
_LATEX_REWRITES = [
    # A unit after a number goes ("10 \text{ cm}"); other \text{} keeps its words below.
    (re.compile(r"(\d)\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}"), r"\1"),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])"), ""),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°"), ""),
    (re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\!"), ""),
    (re.compile(r"\\[,;:]|\\ |~"), " "),
    (re.compile(r"\\\$|\$"), ""),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\*\*"), "^"),
    (re.compile(r"\\displaystyle"), ""),
]


def normalise_latex(answer: str) -> str:
    """The answer with presentation-only LaTeX removed (module docstring), trimmed."""
    for pattern, replacement in _LATEX_REWRITES:
        answer = pattern.sub(replacement, answer)
    answer = answer.strip().removesuffix(".").strip()
    return " ".join(answer.split())


def math_answer(text: str, whole_if_unmarked: bool) -> str | None:
    """A text's final answer: boxed, else after ``####``, else the whole text (a
    reference) or the text of its final number (a response)."""
    marked = marked_answer(text)
    if marked is not None:
        return marked
    if whole_if_unmarked:
        return text.strip() or None
    numbers = list(_NUMBER.finditer(text))
    return numbers[-1].group(0).strip() if numbers else None


def _exponent_too_big(exponent: str) -> bool:
    return "^" in exponent or "!" in exponent or any(int(n) > 1000 for n in re.findall(r"\d+", exponent))


def safe_for_sympy(answer: str) -> bool:
    """False for inputs that could keep sympy busy for minutes: long answers, power
    towers, big exponents and factorials. math-verify's own timeout is a SIGALRM, which
    only works in a process's main thread; the trainer may score in a Ray actor's or a
    Celery worker's thread, so we run math-verify without it and screen the input."""
    if len(answer) > 300:
        return False
    for match in re.finditer(r"\^\s*", answer):
        rest = answer[match.end() :]
        if rest.startswith("{"):
            depth, end = 0, len(rest)
            for index, char in enumerate(rest):
                depth += {"{": 1, "}": -1}.get(char, 0)
                if depth == 0:
                    end = index + 1
                    break
            exponent = rest[:end]
        else:
            exponent = re.match(r"[-+]?\d*\.?\d*|.", rest).group(0)
        if _exponent_too_big(exponent):
            return False
    return not any(int(n) > 1000 for n in re.findall(r"(\d+)\s*!", answer))


def _sympy_equal(got: str, expected: str) -> bool:
    from math_verify import parse, verify  # imports sympy: only when a math answer needs it

    # parsing_timeout=None / timeout_seconds=None turn off the SIGALRM (safe_for_sympy).
    gold = parse(f"${expected}$", parsing_timeout=None)
    target = parse(f"${got}$", parsing_timeout=None)
    return bool(gold and target and verify(gold, target, timeout_seconds=None))


@_never_raises
def math_equal(response: str, reference: str) -> float:
    expected = math_answer(reference, whole_if_unmarked=True)
    got = math_answer(response, whole_if_unmarked=False)
    if expected is None or got is None:
        return 0.0
    expected, got = normalise_latex(expected), normalise_latex(got)
    if not got:
        return 0.0
    if got.casefold() == expected.casefold():
        return 1.0
    expected_number, got_number = whole_number(expected), whole_number(got)
    if expected_number is not None and got_number is not None:
        return 1.0 if numbers_match(got_number, expected_number) else 0.0
    if not (safe_for_sympy(got) and safe_for_sympy(expected)):
        return 0.0
    return 1.0 if _sympy_equal(got, expected) else 0.0


# A dataset file's checker when its spec names none (engine.spec fills it in).
DEFAULT_FILE_VERIFIER = "math"

VERIFIERS.register("exact", exact)
VERIFIERS.register("numeric", numeric)
VERIFIERS.register("math", math_equal)
VERIFIERS.register("arith", arith)
