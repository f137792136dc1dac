"""A cache of facts about classes that does not keep the classes alive."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_class(fn: Callable[[type], T]) -> Callable[[type], T]:
    """``functools.cache`` for a function of one class, holding the classes weakly: each
    ``load_model`` of a ``file.py:attr`` spec imports the file again (a script's loop, the
    app rebuilding a model it evicted), and each import makes new classes whose methods
    hold their module's globals (weights, data)."""
    seen: weakref.WeakKeyDictionary[type, T] = weakref.WeakKeyDictionary()

    @functools.wraps(fn)
    def cached(cls: type) -> T:
        try:
            return seen[cls]
        except KeyError:
            seen[cls] = out = fn(cls)
            return out

    cached.cache_clear = seen.clear  # type: ignore[attr-defined]
    return cached
