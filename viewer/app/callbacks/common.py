"""Helpers every feature's callbacks share: one-line messages and error reporting."""

from __future__ import annotations

import base64
import logging
import re
from pathlib import PurePath

from dash import html

from viewer.core.errors import DepViewError
from viewer.core.text import first_line

log = logging.getLogger("viewer.app")

#: bytes of an upload (an export zip, a batch): the browser reads a file into one base64
#: string, and a 300 MB zip crashed the tab (assets/depview.js says so before it tries)
MAX_UPLOAD = 200_000_000


def error_text(exc: BaseException) -> str:
    """One line for the page: a DepViewError's own message, else the type and first line."""
    if isinstance(exc, DepViewError):
        return str(exc)
    first = first_line(str(exc))[:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def spec_slug(spec: str | None) -> str:
    """A file name part for a model spec: ``demo:resnet`` -> ``demo-resnet``, a file spec by
    its file's stem, ``/home/me/nets/models.py:Net`` -> ``models-Net`` (not the whole path).

    >>> spec_slug("torchvision.models:resnet50"), spec_slug("/tmp/hf/models.py:gpt2")
    ('torchvision-models-resnet50', 'models-gpt2')
    """
    spec = str(spec or "")
    head, sep, attr = spec.rpartition(":")
    if sep and head.endswith(".py"):
        spec = f"{PurePath(head.replace(chr(92), '/')).stem}:{attr}"
    return re.sub(r"[^A-Za-z0-9_]+", "-", spec).strip("-") or "model"


def message(text: str, kind: str = "info") -> html.Div:
    """A message for the page's message bar (``kind``: info, ok, warn, error)."""
    return html.Div(text, className=f"msg msg-{kind}", role="status")


def error_message(exc: BaseException) -> html.Div:
    """Report an exception in the page; unexpected ones are also logged with a traceback."""
    if not isinstance(exc, DepViewError):
        log.exception("callback failed", exc_info=exc)
    return message(error_text(exc), "error")


def fmt_count(n: int | float | None) -> str:
    """``25557032`` -> ``"25.56M"``."""
    if n is None:
        return "—"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def change(before: float, after: float) -> str:
    """``"25.56M → 13.01M (−49.1%)"``; ``"25.56M (unchanged)"``."""
    if after == before:
        return f"{fmt_count(before)} (unchanged)"
    pct = (after - before) / before * 100 if before else 0.0
    return f"{fmt_count(before)} → {fmt_count(after)} ({pct:+.1f}%)".replace("-", "−")


def decode_upload(contents: str, filename: str | None = None) -> bytes:
    """The bytes of a ``dcc.Upload`` (a base64 data URL), at most ``MAX_UPLOAD``; errors
    start with ``filename`` like every other upload error."""
    name = filename or "the upload"
    _, _, b64 = (contents or "").partition(",")
    try:
        data = base64.b64decode(b64, validate=False)
    except ValueError as exc:
        raise DepViewError(f"{name}: could not be decoded") from exc
    if not data:
        raise DepViewError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD:
        raise DepViewError(f"{name}: larger than {MAX_UPLOAD // 10**6} MB")
    return data
