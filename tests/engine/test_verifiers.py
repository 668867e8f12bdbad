"""The verifiers registry: each checker on a table of tricky cases, must-reject ones included."""

import threading
import time

import pytest

from engine.verifiers import VERIFIERS, final_number, last_boxed

exact = VERIFIERS.get("exact")
numeric = VERIFIERS.get("numeric")
math_equal = VERIFIERS.get("math")
arith = VERIFIERS.get("arith")


def test_the_registry_names_every_verifier():
    assert VERIFIERS.names() == ["arith", "exact", "math", "numeric"]
    with pytest.raises(KeyError, match="unknown verifier 'regex'; choose one of: arith, exact, math, numeric"):
        VERIFIERS.get("regex")


@pytest.mark.parametrize(
    "text, boxed",
    [
        (r"so \boxed{42}", "42"),
        (r"\boxed{1} then \boxed{2}", "2"),  # the last one
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed 7 is it", "7"),
        (r"\fbox{x}", "x"),
        (r"\boxed{\frac{1}{2", None),  # truncated: never closed
        ("no box here", None),
    ],
)
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


@pytest.mark.parametrize(
    "response, reference, score",
    [
        ("Paris", "Paris", 1.0),
        ("  paris ", "Paris", 1.0),
        ("New   York", "new york", 1.0),
        ("Paris.", "Paris", 1.0),  # a closing period is not part of the answer
        ("The capital is Paris. #### Paris", "Paris", 1.0),
        (r"... \boxed{Paris}", "Paris", 1.0),
        ("#### Paris", "#### Paris", 1.0),  # a GSM8K-style reference reads the same way
        ("blue", "Blue", 1.0),
        # must reject
        ("Pariss", "Paris", 0.0),
        ("Paris, France", "Paris", 0.0),
        ("The answer is Paris", "Paris", 0.0),  # no marker: the whole response must match
        ("", "", 0.0),  # an empty answer is never right
        ("   ", "", 0.0),
        ("#### Lyon", "Paris", 0.0),
        ("#### Paris\n#### Lyon", "Paris", 0.0),  # the last marker counts
        ("NewYork", "New York", 0.0),
    ],
)
def test_exact(response, reference, score):
    assert exact(response, reference) == score


@pytest.mark.parametrize(
    "response, reference, score",
    [
        ("The answer is 42", "42", 1.0),
        ("#### 1,234", "1234", 1.0),  # thousands separators
        ("1234567", "1,234,567", 1.0),
        ("It costs $5.", "5", 1.0),  # currency
        ("x = -3", "-3", 1.0),
        ("x = −3", "-3", 1.0),  # a Unicode minus
        ("0.75", "3/4", 1.0),  # fractions
        ("3 / 4", "0.75", 1.0),
        (".5", "0.5", 1.0),
        ("1.5e3", "1500", 1.0),  # scientific notation
        ("1.5 × 10^3", "1500", 1.0),
        ("about 5 cm long", "5", 1.0),  # units
        ("50%", "50", 1.0),  # a percent sign is dropped, not converted
        ("0.1 + 0.2 = 0.30000000000000004", "0.3", 1.0),  # float noise is within tolerance
        ("3.0000001", "3", 1.0),  # relative error 3e-8 < 1e-6
        (r"\boxed{12} apples, 3 left over", "12", 1.0),  # a boxed answer beats later numbers
        # must reject
        ("3.00001", "3", 0.0),  # relative error 3e-6 > 1e-6
        ("The answer is 42, no wait, 41", "42", 0.0),  # the final number counts
        ("5 - 3", "-3", 0.0),  # a minus between numbers is not a sign: final number 3
        ("no numbers here", "7", 0.0),
        ("7", "seven", 0.0),  # a reference without a number never matches
        ("1/0", "1", 0.0),
        ("50%", "0.5", 0.0),
        ("1,2345", "12345", 0.0),  # not a thousands separator: the final number is 2345
        ("1e999999", "1", 0.0),  # overflows to inf without hanging
        ("9" * 5000, "1", 0.0),  # a 5,000-digit number: no crash
    ],
)
def test_numeric(response, reference, score):
    assert numeric(response, reference) == score


def test_numbers_are_read_exactly_where_possible():
    from fractions import Fraction

    assert final_number("a third is 1/3") == Fraction(1, 3)
    assert final_number("$-1,234.5 owed") == Fraction(-12345, 10)
    assert final_number("1e-3") == Fraction(1, 1000)


@pytest.mark.parametrize(
    "response, reference, score",
    [
        (r"so the answer is \boxed{\dfrac{1}{2}}", r"\frac{1}{2}", 1.0),
        (r"\boxed{0.5}", r"\frac12", 1.0),
        ("the answer is 1/2", "0.5", 1.0),  # no box: the final number
        (r"\boxed{\left(1, 2\right)}", "(1,2)", 1.0),
        (r"\boxed{90^\circ}", "90", 1.0),
        (r"\boxed{90^{\circ}}", r"90^\circ", 1.0),
        (r"\boxed{10\text{ cm}}", "10", 1.0),  # a unit after a number
        (r"\boxed{\text{(A)}}", "(A)", 1.0),
        (r"\boxed{-\!5}", "-5", 1.0),
        (r"$\boxed{\$5}$", "5", 1.0),
        (r"\boxed{1{,}000}", "1000", 1.0),
        (r"\boxed{1.5e3}", "1500", 1.0),  # math-verify alone misses this one
        (r"\boxed{x^2+1}", "1+x^2", 1.0),  # symbolic: needs sympy
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),
        (r"\boxed{3}", r"#### 3", 1.0),
        (r"\boxed{\frac{1}{3}}", r"\boxed{\frac{2}{6}}", 1.0),
        # must reject
        (r"\boxed{\frac{1}{3}}", "0.33", 0.0),
        (r"\boxed{(1,2)}", "[1,2]", 0.0),  # an open interval is not a closed one
        (r"\boxed{2x}", "2", 0.0),  # a variable is not a unit
        (r"\boxed{x^2-1}", "x^2+1", 0.0),
        (r"\boxed{\frac{1}{2", "0.5", 0.0),  # a truncated box holds no answer
        ("I don't know", "3", 0.0),
        (r"\boxed{}", "3", 0.0),
        (r"\boxed{4} ... \boxed{5}", "4", 0.0),  # the last box counts
        (r"\boxed{2^{2^{2^{2^{2^{20}}}}}}", "3", 0.0),  # a power tower: refused, not computed
        (r"\boxed{100000!}", "3", 0.0),
        ("x" * 10_000, "3", 0.0),
    ],
)
def test_math(response, reference, score):
    assert math_equal(response, reference) == score


def test_math_works_outside_the_main_thread_and_never_hangs():
    # math-verify's default timeout is a SIGALRM, which raises in any other thread (a Ray
    # actor's or Celery's); ours is off, and the dangerous inputs are screened instead.
    results = {}

    def score_all():
        results["symbolic"] = math_equal(r"\boxed{x^2+1}", "1+x^2")
        results["tower"] = math_equal(r"\boxed{9^{9^{9}}}", "1")

    started = time.monotonic()
    worker = threading.Thread(target=score_all)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert results == {"symbolic": 1.0, "tower": 0.0}
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "response, reference, score",
    [
        ("#### 17", "17", 1.0),
        ("steps\n#### 3\n#### 17", "17", 1.0),  # the last marker counts
        ("####17", "17", 1.0),
        ("#### -2", "-2", 1.0),
        ("#### 17", " 17 ", 1.0),
        ("#### 17 and more text", "17", 1.0),
        # must reject
        ("17", "17", 0.0),  # no marker, no credit
        ("#### 17\n#### 18", "17", 0.0),
        ("", "17", 0.0),
        ("#### 017", "17", 0.0),  # the task writes numbers without leading zeros
        ("#### 17.0", "170", 0.0),
        ("#### seventeen", "17", 0.0),
        ("# 17", "17", 0.0),
        ("#### 1 7", "17", 0.0),
        ("#### +17", "17", 0.0),
    ],
)
def test_arith(response, reference, score):
    assert arith(response, reference) == score


@pytest.mark.parametrize("name", ["exact", "numeric", "math", "arith"])
@pytest.mark.parametrize("junk", ["\x00\x01\x02", "\\boxed{" * 500, "}" * 1000 + "{", "\ud800", "#### " + "9" * 50_000])
def test_no_verifier_raises_on_junk(name, junk):
    verifier = VERIFIERS.get(name)
    assert verifier(junk, "3") == 0.0
    assert verifier("3", junk) in (0.0, 1.0)
