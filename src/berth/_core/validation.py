"""Turn pydantic's validation errors into berth's typed errors, naming every bad field."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import ValidationError

from .._exceptions import BerthError


def _field_name(loc: tuple[int | str, ...], rename: Mapping[str, str]) -> str:
    dotted = ".".join(str(part) for part in loc)
    return rename.get(dotted, dotted)


def _reason(err: Mapping[str, object]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    msg = str(err.get("msg", "invalid"))
    # pydantic prefixes messages raised from our own validators with "Value error, ".
    return msg.removeprefix("Value error, ")


def raise_validation(
    exc: ValidationError,
    error: Callable[[str | None, str], BerthError],
    prefix: str = "",
    rename: Mapping[str, str] | None = None,
) -> BerthError:
    """Build one error listing every bad field; the first one becomes ``.field``."""
    rename = rename or {}
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        name = _field_name(loc, rename) if loc else ""
        name = f"{prefix}{name}" if name else prefix.rstrip(".") or "input"
        problems.append((name, _reason(err)))
    if len(problems) == 1:
        return error(*problems[0])
    first = problems[0][0]
    return error(first, "; ".join(f"{name}: {reason}" if i else reason
                                  for i, (name, reason) in enumerate(problems)))
