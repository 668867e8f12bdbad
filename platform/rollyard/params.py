"""Reading numbers out of user text (query strings, form fields, references)."""

# Database ids are 64-bit: 18 digits always fit, and int() of an unbounded string is slow
# and refused past 4300 digits.
MAX_DIGITS = 18


def whole_number(text: str, default: int | None = None) -> int | None:
    """`text` as a whole number ≥ 0 that fits a database id, else `default`. ASCII digits
    only: str.isdigit() also takes '²', which int() refuses (a 500 where it was trusted)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS else default


NUL = "\x00"
NUL_REASON = "must not contain a NUL character"


def nul_fields(value: object, path: str = "") -> list[str]:
    """Dotted paths in `value` (mappings and lists, as parsed from JSON or YAML) whose
    string, or key, holds a NUL character; the empty path is `value` itself. PostgreSQL
    stores no NUL in text or jsonb, so such input would fail at the database as a 500."""
    if isinstance(value, str):
        return [path] if NUL in value else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            found += [inner] if isinstance(key, str) and NUL in key else nul_fields(item, inner)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += nul_fields(item, f"{path}.{index}" if path else str(index))
    return found
