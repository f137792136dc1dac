"""Tensors in nested inputs and outputs (viewer/core/trees.py)."""

import torch

from viewer.core.trees import flatten, floats_as, tensors_in


def test_tensors_in_finds_what_flatten_finds_in_the_same_order():
    from collections import OrderedDict, namedtuple
    from dataclasses import dataclass


    @dataclass
    class Out:
        logits: torch.Tensor
        extra: object = None

    pair = namedtuple("pair", "a b")
    t = [torch.randn(i + 1) for i in range(8)]
    cases = [
        t[0], None, 3, torch.Size([2, 3]), (t[0], 1, None, slice(0, 2), Ellipsis, torch.float32),
        [t[1], (t[2], [t[3]]), {"k": t[4], "j": (t[5],)}], pair(t[6], [t[7]]),
        OrderedDict(b=t[2], a=t[1]), Out(t[3], {"h": [t[4], t[5]]}), ((), [], {}),
    ]
    for obj in cases:
        assert [id(x) for x in tensors_in(obj, [])] == [id(x) for _, x in flatten(obj)]


def test_floats_as_casts_floating_tensors_only():
    x, ids = torch.randn(2, 3), torch.arange(3)
    a, b = floats_as((x, ids), torch.bfloat16)
    assert a.dtype is torch.bfloat16 and b is ids
    d = floats_as({"x": x, "ids": ids}, torch.float16)
    assert d["x"].dtype is torch.float16 and d["ids"] is ids


def test_named_tuple_items_are_named_by_field_and_older_names_map_to_them():
    from typing import NamedTuple

    from viewer.core.trees import renamed_outputs

    class Out(NamedTuple):
        logits: torch.Tensor
        features: tuple

    a, b, c = torch.randn(2), torch.randn(3), torch.randn(4)
    out = Out(a, (b, c))
    assert [p for p, _ in flatten(out)] == ["logits", "features[0]", "features[1]"]
    assert [p for p, _ in flatten({"head": out})] == ["head.logits", "head.features[0]",
                                                      "head.features[1]"]
    assert [p for p, _ in flatten(out, named=False)] == ["[0]", "[1][0]", "[1][1]"]
    assert renamed_outputs(out) == {"[0]": "logits", "[1][0]": "features[0]",
                                    "[1][1]": "features[1]"}
    # torch's struct sequences too (a model that returns torch.max(x, 1))
    top = torch.randn(3, 4).max(1)
    assert [p for p, _ in flatten({"best": top})] == ["best.values", "best.indices"]
    assert renamed_outputs(top) == {"[0]": "values", "[1]": "indices"}
    # plain tuples and lists keep their indices: nothing renamed
    assert [p for p, _ in flatten((a, [b]))] == ["[0]", "[1][0]"]
    assert renamed_outputs((a, [b])) == {} and renamed_outputs(a) == {}
