"""A spec as the user typed it (YAML, or JSON, which is YAML too), read with its problems
named where the user sees them: "line L, column C: <problem>", not PyYAML's own text
(`in "<unicode string>"` and a caret drawing).

Every form and endpoint that takes spec text reads it here: the launch form, the fork
form's overrides, the live validation (POST /api/spec/validate/) and the catalog's
presets."""

from typing import Any

import yaml

from engine.spec import SpecError


def load_spec_text(text: str, field: str) -> Any:
    """The data `text` holds ({} for an empty text). Raises SpecError on `field` when it
    is not YAML, naming the line and column (counted from 1)."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SpecError([(field, yaml_problem(exc, text))]) from None


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """`exc` as "line L, column C: <problem>", with what the parser was reading where
    it says so ("while scanning a quoted scalar that began at line 1, column 4")."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        message = f"{_place(mark.line, mark.column)}: {exc.problem}"
        if exc.context:
            began = exc.context_mark
            where = f" that began at {_place(began.line, began.column)}" if began is not None else ""
            message += f" ({exc.context}{where})"
        return message
    if isinstance(exc, yaml.reader.ReaderError):
        # The reader counts characters; the user counts lines and columns.
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        character = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return f"{_place(line, column)}: character U+{character:04X}: {exc.reason}"
    return str(exc)


def _place(line: int, column: int) -> str:
    return f"line {line + 1}, column {column + 1}"
