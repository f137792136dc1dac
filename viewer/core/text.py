"""Wording shared by the command line and the app."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``counted(1, "group")`` -> ``"1 group"``, ``counted(3, "unit")`` -> ``"3 units"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def first_line(text: str) -> str:
    """A message's first line; when it only announces the next one (it ends with ``:``, as
    a validation error's "Class validation error for validator 'x':"), the two together."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else ""


def error_line(exc: BaseException) -> str:
    """An exception as one line: ``"ValueError: boom"`` (the first line of its message)."""
    return f"{type(exc).__name__}: {first_line(str(exc))}"
