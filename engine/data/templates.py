"""Prompt templates: the text around a dataset's prompt, with one ``{prompt}`` slot."""

from string import Formatter

PLACEHOLDER = "prompt"


def check_template(template: str) -> None:
    """Raise ValueError unless `template` holds ``{prompt}`` exactly once and every
    other brace is written doubled (``{{`` and ``}}`` stand for ``{`` and ``}``)."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{exc}; write a literal brace as {{{{ or }}}}") from None
    for name, spec, conversion in fields:
        if name != PLACEHOLDER:
            raise ValueError(
                f"unknown placeholder {{{name}}}: only {{prompt}} is filled in; write a literal brace as {{{{ or }}}}"
            )
        if spec or conversion:
            raise ValueError("write {prompt} without a format spec or conversion")
    if not fields:
        raise ValueError("the template has no {prompt} placeholder")
    if len(fields) > 1:
        raise ValueError(f"the template has {{prompt}} {len(fields)} times; use it once")


def apply_template(template: str | None, prompt: str) -> str:
    """The prompt as the model sees it (`template` already checked; None: unchanged)."""
    return prompt if template is None else template.format(prompt=prompt)
