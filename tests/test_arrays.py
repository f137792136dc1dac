"""viewer.core.arrays: the helpers agree with numpy on every input shape they get."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from viewer.core import arrays


@pytest.mark.parametrize("a", [
    np.arange(32000, dtype=np.int64),                   # distinct, sorted (a vocabulary)
    np.arange(100, dtype=np.int64)[::-1].copy(),        # distinct, reversed
    np.random.default_rng(0).integers(0, 50, 1000),     # many repeats
    np.random.default_rng(1).integers(-5, 5, (3, 4)),   # 2-D: flattened, as np.unique does
    np.array([7, 7, 7]), np.array([5]), np.array([], dtype=np.int64),
])
def test_unique_is_numpys_unique(a):
    got, want = arrays.unique(a), np.unique(a)
    assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all()


def test_unique_does_not_change_or_alias_its_input():
    a = np.array([3, 1, 2])
    got = arrays.unique(a)
    assert a.tolist() == [3, 1, 2] and not np.shares_memory(got, a)


def test_the_docstring_examples_hold():
    assert doctest.testmod(arrays).failed == 0
