"""Config diff: where two runs' resolved specs differ, leaf by leaf."""

from collections.abc import Mapping
from typing import Any, TypedDict


class Difference(TypedDict):
    path: str  # dotted, e.g. "training.lr"
    a: Any  # None where the key is absent from that spec
    b: Any


def spec_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """The leaves where `a` and `b` differ, in path order. Mappings are walked; any other
    value (lists included) is a leaf compared whole. Stored specs are fully resolved, so a
    key absent on one side means the two runs come from engine versions with different
    settings."""
    differences: list[Difference] = []
    _walk(a, b, "", differences)
    return sorted(differences, key=lambda difference: difference["path"])


def _walk(a: Any, b: Any, path: str, into: list[Difference]) -> None:
    # A section one side lacks is walked against an empty one: its leaves are the differences.
    if isinstance(a, Mapping) and isinstance(b, Mapping | None) or isinstance(b, Mapping) and a is None:
        a, b = a or {}, b or {}
        for key in a.keys() | b.keys():
            _walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key), into)
    elif a != b:
        into.append(Difference(path=path, a=a, b=b))
