from typing import Any

from django import template

register = template.Library()


@register.filter
def metric(summary: dict[str, Any] | None, name: str) -> Any:
    """`{{ run.summary|metric:"reward/mean" }}`: metric names hold slashes, which the
    template language's dotted lookups cannot express."""
    return (summary or {}).get(name)
