"""Metadata of functional ops read from their real calls (viewer/core/describe.py)."""

import itertools

import torch

from viewer.core.describe import _perm, _plain_perm, describe
from viewer.core.meta import ConcatMeta, SplitMeta
from viewer.core.optypes import OpType


def test_plain_perm_agrees_with_the_stride_probe():
    x = torch.randn(2, 3, 4, 5)
    calls = [(fn, (x, a, b)) for fn in (torch.transpose, torch.Tensor.transpose,
                                        torch.swapaxes, torch.Tensor.swapdims)
             for a in range(-4, 4) for b in range(-4, 4)]
    for dims in itertools.permutations(range(4)):
        dims = tuple(d - 4 if d % 2 else d for d in dims)  # some negative
        calls += [(torch.Tensor.permute, (x, *dims)), (torch.Tensor.permute, (x, dims)),
                  (torch.permute, (x, list(dims)))]
    for fn, args in calls:
        plain = _plain_perm(fn.__name__, args, {}, x.dim())
        assert plain == _perm(fn, args, {}, x), (fn.__name__, args[1:])
    assert _plain_perm("transpose", (x, 0, 1), {"dim0": 0}, 4) is None  # unusual: probe
    assert _plain_perm("permute", (torch.tensor(1.0), ()), {}, 0) is None


def test_describe_reads_concat_and_split_sizes_from_the_real_call():
    a, b = torch.randn(2, 4, 3), torch.randn(2, 6, 3)
    y = torch.cat([a, b], -2)
    meta = describe(OpType.CONCAT, "cat", torch.cat, ([a, b], -2), {}, [a, b], [y])
    assert meta == ConcatMeta(dim=1, sizes=(4, 6)) and meta.offsets == (0, 4)
    parts = torch.split(y, [7, 3], dim=1)
    meta = describe(OpType.SPLIT, "split", torch.split, (y, [7, 3]), {"dim": 1}, [y], parts)
    assert isinstance(meta, SplitMeta) and (meta.dim, meta.sizes) == (1, (7, 3))
    assert meta.offsets == (0, 7) and not meta.computed


def test_counts_say_where_value_v_lands():
    # histc(ids, bins=n, min=0, max=n - 1) puts id v in bin v (a router's experts); other
    # ranges spread values over bins, and bincount is as wide as its minlength only if no
    # value is larger
    from viewer.core.meta import CountsMeta

    ids = torch.tensor([0.0, 3.0, 1.0, 1.0])

    def counts(name, func, args, kwargs):
        out = func(*args, **kwargs)
        assert name != "histc" or kwargs.get("min") != 0 or \
            out.tolist() == [1, 2, 0, 1]  # (bin v holds value v's count)
        return describe(OpType.ELEMENTWISE, name, func, args, kwargs, [args[0]], [out])

    assert counts("histc", torch.histc, (ids,), {"bins": 4, "min": 0, "max": 3}) == \
        CountsMeta("histc", 0, True)
    assert not counts("histc", torch.histc, (ids, 4, 0, 4), {}).exact  # bins 1.25 wide
    assert not counts("histc", torch.histc, (ids,), {"bins": 4}).exact  # min/max from data
    long = ids.long()
    assert counts("bincount", torch.bincount, (long,), {"minlength": 4}).exact
    assert not counts("bincount", torch.bincount, (long,), {"minlength": 2}).exact
    assert counts("one_hot", torch.nn.functional.one_hot, (long, 5), {}) == \
        CountsMeta("one_hot", 1, True)
