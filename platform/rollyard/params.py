"""Reading numbers out of user text (query strings, form fields, references)."""

# Database ids are 64-bit: 18 digits always fit, and int() of an unbounded string is slow
# and refused past 4300 digits.
MAX_DIGITS = 18


def whole_number(text: str, default: int | None = None) -> int | None:
    """`text` as a whole number ≥ 0 that fits a database id, else `default`. ASCII digits
    only: str.isdigit() also takes '²', which int() refuses (a 500 where it was trusted)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS else default
