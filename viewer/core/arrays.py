"""Small numpy helpers the group search and the plans call in their inner loops."""

from __future__ import annotations

import numpy as np


def unique(a) -> np.ndarray:
    """The sorted distinct values of ``a`` (flattened), as ``np.unique(a)`` gives them, by
    one sort. numpy 2's ``np.unique`` hashes the values before it sorts them: about 2 ms for
    32,000 distinct int64s (a vocabulary's positions), where a sort takes 0.1 ms; groups and
    plans take the unique positions of every member.

    >>> unique([3, 1, 3, 2]).tolist()
    [1, 2, 3]
    """
    s = np.sort(np.asarray(a).ravel())
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s if keep.all() else s[keep]
