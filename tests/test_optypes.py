import pytest
import torch
from torch import nn

from viewer.core import optypes
from viewer.core.handlers import CUTS, REFRESH
from viewer.core.optypes import (
    STYLES,
    OpType,
    classify,
    classify_function,
    register_layer,
    unregister_layer,
)
from viewer.core.rules import RULES


@pytest.mark.parametrize("module, expected", [
    (nn.Conv2d(3, 8, 3), OpType.CONV),
    (nn.Conv1d(4, 4, 3, groups=2), OpType.CONV),
    (nn.Conv2d(8, 8, 3, groups=8), OpType.DEPTHWISE_CONV),
    (nn.Conv2d(1, 1, 3), OpType.CONV),  # one channel is not depthwise
    (nn.Conv2d(8, 16, 3, groups=8), OpType.CONV),  # channel multiplier: grouped, not dw
    (nn.ConvTranspose2d(8, 4, 2), OpType.CONV_TRANSPOSE),
    (nn.BatchNorm2d(8), OpType.BN),
    (nn.BatchNorm1d(8), OpType.BN),
    (nn.LayerNorm(8), OpType.LN),
    (nn.RMSNorm(8), OpType.LN),
    (nn.GroupNorm(2, 8), OpType.GN),
    (nn.InstanceNorm2d(8), OpType.IN),
    (nn.Linear(4, 5), OpType.LINEAR),
    (nn.PReLU(8), OpType.PRELU),
    (nn.Embedding(10, 4), OpType.EMBED),
    (nn.EmbeddingBag(10, 4), OpType.EMBED),
    (nn.MultiheadAttention(8, 2), OpType.MHA),
    (nn.LSTM(4, 8), OpType.LSTM),
    (nn.GRU(4, 8), OpType.GRU),
    (nn.RNN(4, 8), OpType.RNN),
    (nn.PixelShuffle(2), OpType.PIXEL_SHUFFLE),
    (nn.Unfold(3), OpType.UNFOLD),
    (nn.Fold((4, 4), 3), OpType.UNFOLD),
    (nn.MaxPool2d(2), OpType.SPATIAL),
    (nn.AdaptiveAvgPool2d(1), OpType.SPATIAL),
    # looked through: the flatten / softmax call inside is recorded with its metadata
    (nn.Flatten(), OpType.ELEMENTWISE),
    (nn.Softmax(-1), OpType.ELEMENTWISE),
    (nn.ReLU(), OpType.ELEMENTWISE),
    (nn.Dropout(), OpType.ELEMENTWISE),
    (nn.Sequential(), OpType.ELEMENTWISE),  # unknown -> default
])
def test_classify_module(module, expected):
    assert classify(module) is expected
    assert classify(module) is classify(module)  # deterministic


@pytest.mark.parametrize("func, expected", [
    (torch.cat, OpType.CONCAT), (torch.stack, OpType.CONCAT), (torch.split, OpType.SPLIT),
    (torch.Tensor.chunk, OpType.SPLIT), (torch.unbind, OpType.UNBIND),
    (torch.Tensor.__getitem__, OpType.SLICE), (torch.Tensor.view, OpType.RESHAPE),
    (torch.flatten, OpType.RESHAPE), (torch.Tensor.permute, OpType.PERMUTE),
    (torch.transpose, OpType.PERMUTE), (torch.Tensor.expand, OpType.EXPAND),
    (torch.matmul, OpType.MATMUL), (torch.nn.functional.linear, OpType.MATMUL),
    (torch.nn.functional.scaled_dot_product_attention, OpType.ATTENTION),
    (torch.Tensor.mean, OpType.REDUCTION), (torch.softmax, OpType.REDUCTION),
    (torch.Tensor.add, OpType.ELEMENTWISE), (torch.relu, OpType.ELEMENTWISE),
    (torch.Tensor.__mul__, OpType.ELEMENTWISE),
])
def test_classify_function(func, expected):
    assert classify_function(func) is expected


def test_every_type_has_one_row_in_every_table():
    for table in (STYLES, RULES, CUTS, REFRESH):
        assert set(table) == set(OpType), set(OpType) - set(table)


def test_channel_mixing_ops_are_not_elementwise():
    # the reference library's failure mode: permute/matmul passing as channel-preserving
    for f in (torch.Tensor.permute, torch.Tensor.transpose, torch.matmul, torch.bmm):
        assert classify_function(f) is not OpType.ELEMENTWISE


def test_register_custom_layer_has_priority_and_unregisters():
    class MyConv(nn.Conv2d):
        pass

    m = MyConv(3, 4, 1)
    assert classify(m) is OpType.CONV
    register_layer(MyConv, in_dims={"weight": 1}, out_dims={"weight": 0, "bias": 0})
    try:
        assert classify(m) is OpType.CUSTOMIZED
        assert optypes.custom_layer(m).out_dims == {"weight": 0, "bias": 0}
    finally:
        unregister_layer(MyConv)
    assert classify(m) is OpType.CONV


def test_register_rejects_non_modules():
    with pytest.raises(TypeError):
        register_layer(int, in_dims={}, out_dims={})


def test_op_types_hash_by_identity_and_survive_a_pickle_round_trip():
    import pickle

    assert {t: t.value for t in OpType}[OpType.CONV] == "conv"
    for t in OpType:
        back = pickle.loads(pickle.dumps(t))
        assert back is t and hash(back) == hash(t) == object.__hash__(t)


def test_norms_reduce_along_their_dims_given_after_the_order():
    # ConvNeXt V2's GRN: an unknown op that changed the shape, and a norm's dim comes third
    x = torch.randn(2, 4, 3, 3)
    model = nn.Sequential(nn.Conv2d(4, 4, 1))

    class GRN(nn.Module):
        def forward(self, x):
            g = torch.linalg.vector_norm(x, 2, (2, 3), keepdim=True)
            return x * g / torch.norm(g, 2, 1, keepdim=True)

    from viewer.core.trace import build_graph

    g = build_graph(nn.Sequential(model, GRN()), (x,))
    metas = {n.target: n.meta for n in g.nodes if n.op_type is OpType.REDUCTION}
    assert metas["linalg_vector_norm"].dims == (2, 3) and metas["norm"].dims == (1,)
