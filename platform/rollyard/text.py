"""Counts in words, for messages: "1 run slot", "2 run slots", never "1 run slots".
Templates use Django's `pluralize` filter and the pages' scripts Rollyard.count, to the
same rule."""


def count(n: int, noun: str, plural: str = "") -> str:
    """`n` and `noun`, in the plural (`plural`, else noun + "s") unless n is 1."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
