"""Wording shared by the command line and the app."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``counted(1, "group")`` -> ``"1 group"``, ``counted(3, "unit")`` -> ``"3 units"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def error_line(exc: BaseException) -> str:
    """An exception as one line: ``"ValueError: boom"`` (the first line of its message)."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
