import json
import warnings
import weakref

import pytest
import torch
from conftest import EmbedsThenPositions, PositionsFromLength, PositionsFromValues
from torch import nn
from torch.nn import functional as F

import demo_models
from viewer.core.errors import DepViewError
from viewer.core.meta import ConcatMeta, SliceMeta, SplitMeta, meta_to_dict
from viewer.core.optypes import OpType
from viewer.core.trace import build_graph, quantized_layer


def _only(g, op_type):
    nodes = [n for n in g.nodes if n.op_type is op_type]
    assert len(nodes) == 1, [n.name for n in nodes]
    return nodes[0]


class CatSplit(nn.Module):
    def forward(self, x):  # x: (2, 5, 7)
        a, b, c = torch.split(x, [1, 4, 2], dim=2)  # uneven, on the last dim
        y = torch.cat([c, a, b, c], dim=-1)  # dim -1 normalised to 2
        parts = y.chunk(3, dim=1)  # 5 -> 2, 2, 1
        return parts[0].sum() + parts[2].sum() + torch.tensor_split(y, 3, dim=2)[1].sum()


def test_concat_and_split_metadata_hand_computed():
    g = build_graph(CatSplit(), torch.randn(2, 5, 7))
    split = [n for n in g.nodes if n.op_type is OpType.SPLIT]
    assert split[0].meta == SplitMeta(dim=2, sizes=(1, 4, 2), computed=False)
    assert split[0].meta.offsets == (0, 1, 5)
    cat = _only(g, OpType.CONCAT)
    assert cat.meta == ConcatMeta(dim=2, sizes=(2, 1, 4, 2))
    assert cat.meta.offsets == (0, 2, 3, 7)
    assert cat.out_shapes == ((2, 5, 9),)
    assert split[1].meta == SplitMeta(dim=1, sizes=(2, 2, 1), computed=True)
    assert split[1].meta.offsets == (0, 2, 4)
    assert split[2].meta.sizes == (3, 3, 3) and split[2].meta.computed
    assert cat.grad_fn is None  # no grad: plain tensors
    x = torch.randn(2, 5, 7, requires_grad=True)
    cat = _only(build_graph(CatSplit(), x, autograd=True), OpType.CONCAT)
    assert cat.grad_fn == "CatBackward0"
    assert _only(build_graph(CatSplit(), x), OpType.CONCAT).grad_fn is None  # default: no_grad
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    grads = [n.grad_fn for n in build_graph(conv, torch.randn(1, 3, 8, 8), autograd=True).nodes
             if n.is_module]
    assert grads == ["ConvolutionBackward0"]
    assert _only(build_graph(conv, torch.randn(1, 3, 8, 8)), OpType.CONV).grad_fn is None
    assert meta_to_dict(cat.meta) == {"dim": 2, "sizes": [2, 1, 4, 2], "stacked": False,
                                      "offsets": [0, 2, 3, 7], "kind": "concat"}


class Slicing(nn.Module):
    def forward(self, x):  # (2, 8, 6)
        return x[:, 2:8:3, None, ...], x[..., 1], x.narrow(1, 4, 2), x.unbind(2)[0]


def test_slice_and_unbind_metadata():
    g = build_graph(Slicing(), torch.randn(2, 8, 6))
    s1, s2, s3 = [n for n in g.nodes if n.op_type is OpType.SLICE]
    assert isinstance(s1.meta, SliceMeta)
    assert (s1.meta.dim, s1.meta.start, s1.meta.stop, s1.meta.step) == (1, 2, 8, 3)
    assert s1.meta.dim_map == (0, 1, 3) and s1.out_shapes == ((2, 2, 1, 6),)
    assert s2.meta.selects == ((2, 1),) and s2.meta.dim_map == (0, 1, None)
    assert (s3.meta.dim, s3.meta.start, s3.meta.stop) == (1, 4, 6)
    unbind = _only(g, OpType.UNBIND)
    assert (unbind.meta.dim, unbind.meta.n) == (2, 6)


_T = torch.tensor
INDEXES = [  # (index, dim_map, gathered, adv_dims) on a (4, 5, 6) tensor
    ((0, slice(None), [1, 2]), (None, 0, None), (2,), (1,)),  # the int goes first in torch
    ((_T(1),), (None, 0, 1), (0,), ()),  # a 0-d index selects, as an int does
    ((slice(None), _T([[0, 1], [1, 2]])), (0, None, 3), (1,), (1, 2)),  # a 2-D index: 2 dims
    (([0, 1], slice(None), [1, 2]), (None, 1, None), (0, 2), (0,)),  # apart: its dims go first
    ((slice(None), [0, 1], [1, 2]), (0, None, None), (1, 2), (1,)),  # adjacent: in place
    ((None, slice(1, 3), Ellipsis, _T(2)), (1, 2, None), (2,), ()),
    ((Ellipsis, slice(0, 4, 2)), (0, 1, 2), (), ()),
    ((slice(None), None, 1), (0, None, 2), (), ()),
    ((_T([True, False, True, True]),), (None, 1, 2), (0,), (0,)),  # a mask: one dim
    ((_T(0), slice(None), _T([1, 2])), (None, 0, None), (0, 2), (1,)),
]


@pytest.mark.parametrize("index, dim_map, gathered, adv_dims", INDEXES)
def test_indexing_metadata_follows_where_torch_puts_each_dim(index, dim_map, gathered,
                                                             adv_dims):
    class Index(nn.Module):
        def forward(self, x):
            return x[index]

    x = torch.randn(4, 5, 6)
    node = _only(build_graph(Index(), x), OpType.SLICE)
    m = node.meta
    assert (m.dim_map, m.gathered, m.adv_dims) == (dim_map, gathered, adv_dims)
    assert m.advanced == bool(gathered)
    # oracle: index a tensor whose values are the coordinates along dim d; along its output
    # dim the result must run through the kept positions of d, constant along every other
    slices = {s.dim: range(s.start, s.stop, s.step) for s in m.slices}
    for d, od in enumerate(m.dim_map):
        if od is None:
            continue
        coord = torch.arange(x.shape[d]).view(
            [-1 if k == d else 1 for k in range(3)]).expand(x.shape)
        y = coord[index].movedim(od, -1).reshape(-1, node.out_shapes[0][od])
        assert (y == torch.tensor(list(slices.get(d, range(x.shape[d]))))).all()


def test_an_index_whose_layout_is_not_modelled_blocks_instead_of_misleading():
    class BoolScalar(nn.Module):
        def forward(self, x):
            return x[:, _T(True)]  # a 0-d bool adds a dim, as None does

    g = build_graph(BoolScalar(), torch.randn(4, 5))
    node = _only(g, OpType.SLICE)
    assert not isinstance(node.meta, SliceMeta)


class Shapes(nn.Module):
    def forward(self, x):  # (2, 12, 5)
        y = x.view(2, 3, -1, 5).permute(0, 3, 1, 2)
        return y.transpose(1, 2).flatten(1), y.expand(4, -1, -1, -1) if False else y


def test_reshape_permute_metadata():
    g = build_graph(Shapes(), torch.randn(2, 12, 5))
    view = next(n for n in g.nodes if n.target == "view")
    assert (view.meta.in_shape, view.meta.out_shape, view.meta.inferred) == (
        (2, 12, 5), (2, 3, 4, 5), 2)
    perm = next(n for n in g.nodes if n.target == "permute")
    assert perm.meta.perm == (0, 3, 1, 2)
    tr = next(n for n in g.nodes if n.target == "transpose")
    assert tr.meta.perm == (0, 2, 1, 3)


def test_residual_add_records_its_module_path():
    lm = demo_models.get_demo("resnet")
    torch.manual_seed(0)
    g = build_graph(lm.build(), lm.make_inputs("cpu"))
    add = g.node("layer1.0.add")
    assert add.op_type is OpType.ELEMENTWISE and add.module == "layer1.0"
    assert add.meta.op == "add"
    conv = g.node("layer1.0.conv1")
    assert conv.op_type is OpType.CONV and conv.module == "layer1.0.conv1"
    assert conv.params["weight"] == "layer1.0.conv1.weight"


def test_every_op_type_occurs_in_some_demo():
    seen = set()
    for demo in demo_models.DEMOS.values():
        if demo.name == "resnet50":
            continue
        torch.manual_seed(0)
        with torch.device("meta"):
            model = demo.build()
        seen |= {n.op_type for n in build_graph(model, demo.make_inputs("meta")).nodes}
    assert seen == set(OpType), set(OpType) - seen


def test_meta_device_tracing_uses_no_memory():
    demo = demo_models.get_demo("llama")
    with torch.device("meta"):
        model = demo.build(dim=4096, n_layers=2, n_heads=32, n_kv_heads=8, ffn_hidden=11008,
                           vocab=32000)
    g = build_graph(model, demo.make_inputs("meta"))
    assert g.info["outputs"] == {"output": [1, 16, 32000]}
    assert g.node("layers.1.attn.q_proj").param_shapes["weight"] == (4096, 4096)


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)  # called twice: shared weights
        self.head = nn.Linear(4, 2)

    def forward(self, batch, scale=1.0):
        with torch.no_grad():  # autograd tracing would see nothing here
            h = self.enc(batch["a"]) + self.enc(batch["b"]) * scale
        return {"logits": self.head(h), "aux": [h.mean()]}


def test_dict_inputs_outputs_shared_module_and_no_grad():
    x = {"a": torch.randn(3, 4), "b": torch.randn(3, 4)}
    g = build_graph(DictModel(), ((x,)), {"scale": 2.0})
    names = [n.name for n in g.nodes]
    assert "batch.a" in names and "batch.b" in names
    assert "enc" in names and "enc:1" in names
    assert g.node("enc:1").call == 1 and g.node("enc:1").params == g.node("enc").params
    assert {"output.logits", "output.aux[0]"} <= set(names)
    assert g.node("add").in_shapes == ((3, 4), (3, 4))


def test_hf_style_model_output_and_keyword_inputs():
    from dataclasses import dataclass

    @dataclass
    class Out:
        logits: torch.Tensor
        hidden: tuple

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, input_ids=None, attention_mask=None):
            h = self.emb(input_ids) * attention_mask[..., None]
            return Out(h.sum(-1), (h,))

    g = build_graph(M(), {"input_ids": torch.zeros(1, 3, dtype=torch.long),
                          "attention_mask": torch.ones(1, 3)})
    outs = [n.name for n in g.nodes if n.op_type is OpType.OUTPUT]
    assert outs == ["output.logits", "output.hidden[0]"]


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(4, 8, 3))

    def forward(self, x):
        return self.block(x)


def test_failing_forward_names_module_and_shapes():
    with pytest.raises(DepViewError) as err:
        build_graph(Broken(), torch.randn(1, 3, 16, 16))
    msg = str(err.value)
    assert "\n" not in msg
    assert "'block.1'" in msg and "Conv2d" in msg and "[1, 8, 14, 14]" in msg


def test_wrong_input_shape_is_one_clear_line():
    with pytest.raises(DepViewError, match=r"'fc1'.*\[1, 7\]"):
        m = nn.Sequential()
        m.add_module("fc1", nn.Linear(4, 2))
        build_graph(m, torch.randn(1, 7))


def test_hooks_removed_and_model_unchanged_after_trace():
    m = DictModel()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    build_graph(m, ({"a": torch.randn(1, 4), "b": torch.randn(1, 4)},))
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert not _global_hooks()
    with pytest.raises(DepViewError):
        build_graph(Broken(), torch.randn(1, 3, 16, 16))
    assert not _global_hooks()
    vit = demo_models.get_demo("vit").build()
    build_graph(vit, demo_models.get_demo("vit").make_inputs("cpu"))  # uses bare parameters
    assert not any(hasattr(t, "_depview_src") for t in [*vit.parameters(), *vit.buffers()])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def _global_hooks() -> list:
    from torch.nn.modules import module

    # (and torch's own bookkeeping of them, which its handles leave behind: then every
    # torch.compile'd module called later in the process warns of global hooks)
    return [*module._global_forward_hooks, *module._global_forward_pre_hooks,
            *module._global_forward_hooks_with_kwargs,
            *module._global_forward_hooks_always_called]


class KwBroken(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 2)

    def forward(self, x):
        return self.inner(input=x.t())


@pytest.mark.parametrize("given, said", [(None, "input 0 is None, not a tensor"),
                                         ("numpy", "input 0 is a numpy.ndarray, not a tensor"),
                                         ("list", "input 0 is a list, not a tensor")])
def test_an_input_that_is_not_a_tensor_is_named_in_one_line(given, said):
    x = torch.randn(1, 3, 8, 8)
    arg = {None: None, "numpy": x.numpy(), "list": x.tolist()}[given]
    m = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(DepViewError) as err:
        build_graph(m, (arg,))
    msg = str(err.value)
    assert said in msg and "with no tensor input" in msg and "\n" not in msg
    # torch's list of signatures that followed is not announced on the line
    assert not msg.endswith("expected one of:")


def test_inputs_given_in_order_to_a_forward_that_takes_them_by_name_say_so():
    class ByName(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, **inputs):
            return self.fc(inputs["x"])

    with pytest.raises(DepViewError) as err:
        build_graph(ByName(), torch.randn(1, 4))
    assert str(err.value).endswith("(its forward takes its inputs by name: give them as a "
                                   "dict, or as --input NAME=SHAPE)")
    assert any(n.name == "fc" for n in build_graph(ByName(), {"x": torch.randn(1, 4)}).nodes)
    with pytest.raises(DepViewError) as err:  # a forward that takes inputs in order: no hint
        build_graph(nn.Linear(4, 2), torch.randn(1, 5))
    assert "by name" not in str(err.value)


def test_a_failing_module_called_by_keyword_says_so():
    with pytest.raises(DepViewError, match=r"'inner' \(Linear\) with its inputs given by keyword"):
        build_graph(KwBroken(), torch.randn(1, 4))


class CallsOthers(nn.Module):
    """Calls a module that is not its submodule, and has another thread run its own ``fc`` and
    a whole other model in the middle of its forward: the trace's (global) hooks must see
    none of that."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.helpers = [nn.ReLU()]  # a plain list: not a registered submodule
        self.other = [nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))]
        self.other_out = None

    def forward(self, x):
        import threading

        def run():
            self.other_out = self.other[0](self.fc(torch.randn(2, 4)))

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        return self.helpers[0](self.fc(x))


def test_modules_outside_the_model_and_other_threads_stay_out_of_the_graph():
    m = CallsOthers()
    g = build_graph(m, torch.randn(1, 4))
    assert [(n.name, n.op_type.name) for n in g.nodes] == [
        ("x", "INPUT"), ("fc", "LINEAR"), ("relu", "ELEMENTWISE"), ("output", "OUTPUT")]
    assert m.other_out is not None and m.other_out.shape == (2, 4)
    assert not _global_hooks()


def test_cyclic_collector_is_left_as_it_was_found():
    import gc

    assert gc.isenabled()
    build_graph(DictModel(), ({"a": torch.randn(1, 4), "b": torch.randn(1, 4)},))
    assert gc.isenabled()
    with pytest.raises(DepViewError):
        build_graph(Broken(), torch.randn(1, 3, 16, 16))
    assert gc.isenabled()
    gc.disable()
    try:
        build_graph(DictModel(), ({"a": torch.randn(1, 4), "b": torch.randn(1, 4)},))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_module_types_cached_per_class_except_where_the_instance_decides():
    # two convs of one class: one depthwise, one not; the per-class cache must not merge them
    m = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1,
                                                                              groups=4))
    types = [n.op_type.name for n in build_graph(m, torch.randn(1, 4, 9, 9)).nodes
             if n.is_module]
    assert types == ["DEPTHWISE_CONV", "CONV", "DEPTHWISE_CONV"]


def test_leaf_named_members_match_named_parameters_and_buffers():
    from viewer.core.trace import _named

    lin = nn.Linear(3, 2)
    lin.again = lin.weight  # the same Parameter under two names: reported once
    lin.register_parameter("none", None)
    bn = nn.BatchNorm1d(4)
    for m in (lin, bn, nn.ReLU(), nn.MultiheadAttention(4, 2)):
        assert list(_named(m, "_parameters")) == list(m.named_parameters())
        assert list(_named(m, "_buffers")) == list(m.named_buffers())


class PlainTables(nn.Module):
    """Tensors kept as plain attributes: a public table (a source of its own, named by its
    path, as a non-persistent buffer is) and a private cache (a constant, as before)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.lin.table = torch.arange(4.0)
        self._cache = torch.ones(4)

    def forward(self, x):
        self.state = torch.zeros(x.shape[0], 4)  # (made by this forward: a fill, no table)
        return self.lin(x) + self.lin.table * self._cache + self.state


def test_a_plain_tensor_attribute_is_a_buffer_node_named_by_its_path():
    model = PlainTables()
    for _ in range(2):  # (the second time, the forward's own state is an attribute already)
        g = build_graph(model, (torch.randn(2, 4),))
        table = g.by_name["lin.table"]
        assert table.op_type is OpType.BUFFER and table.buffers == {"": "lin.table"}
        assert table.module == "lin" and not table.params
        consts = sorted((n.target, n.out_shapes[0]) for n in g.nodes
                        if n.op_type is OpType.CONSTANT)
        assert consts == [("constant", (4,)), ("zeros", (2, 4))]  # (the cache; the state)


class SameNames(nn.Module):
    """A layer named as the forward's argument (nn.Transformer tutorials' ``self.src`` beside
    ``forward(src, tgt)``)."""

    def __init__(self):
        super().__init__()
        self.x, self.fc = nn.Embedding(10, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.x(x))


def test_float_ids_are_told_to_be_integers():
    with pytest.raises(DepViewError, match=r"'indices' .* \(ids need an integer dtype: "
                                           r"--input SHAPE:int64\)$"):
        build_graph(SameNames(), (torch.zeros(1, 5),))


def test_an_input_named_as_a_layer_is_the_one_renamed():
    # the layer was the node "x_1", so groups were rooted at a name no module has, and
    # --override x_1=... was taken
    g = build_graph(SameNames(), (torch.randint(0, 10, (1, 5)),))
    assert g.by_name["input.x"].op_type is OpType.INPUT
    assert g.by_name["x"].module == "x" and "x_1" not in g.by_name


class Einsum(nn.Module):
    def __init__(self, equation: str):
        super().__init__()
        self.equation = equation

    def forward(self, *xs):
        return torch.einsum(self.equation, *xs)


@pytest.mark.parametrize("eq, shapes, terms, out", [
    ("bchw,c->bchw", [(1, 4, 3, 3), (4,)], ("bchw", "c"), "bchw"),
    ("ij,jk", [(2, 3), (3, 4)], ("ij", "jk"), "ik"),  # implicit output: letters used once
    ("...c,dc->...d", [(2, 5, 3), (4, 3)], ("01c", "dc"), "01d"),
    ("b i d, b j d -> b i j", [(2, 3, 4), (2, 5, 4)], ("bid", "bjd"), "bij"),
    ("...i,...i", [(2, 3, 4), (3, 4)], ("01i", "1i"), "01"),  # broadcast, right-aligned
])
def test_einsum_metadata_spells_out_the_equation(eq, shapes, terms, out):
    from viewer.core.meta import EinsumMeta

    g = build_graph(Einsum(eq), tuple(torch.randn(s) for s in shapes))
    node = _only(g, OpType.MATMUL)
    assert node.meta == EinsumMeta(eq, terms, out)
    assert meta_to_dict(node.meta)["kind"] == "einsum"


def test_pad_metadata_and_pad_modules():
    from viewer.core.meta import PadMeta

    class Pads(nn.Module):
        def __init__(self):
            super().__init__()
            self.zero = nn.ZeroPad2d((1, 0, 2, 0))

        def forward(self, x):
            return self.zero(torch.nn.functional.pad(x, (1, 2, 0, 0), mode="reflect"))

    g = build_graph(Pads(), torch.randn(1, 2, 4, 4))
    fn, mod = [n for n in g.nodes if n.op_type is OpType.SPATIAL]
    assert fn.meta == PadMeta("pad", (1, 2, 0, 0), "reflect") and fn.out_shapes == ((1, 2, 4, 7),)
    assert mod.name == "zero" and mod.attrs["padding"] == [1, 0, 2, 0]


def test_ops_along_a_dim_record_which_dims_they_mix_or_move():
    from viewer.core.meta import ElementwiseMeta

    class M(nn.Module):
        def forward(self, x):
            return torch.roll(x.cumsum(-1).flip(0, 2), 1) + torch.relu(x)

    g = build_graph(M(), torch.randn(2, 3, 4))
    metas = {n.target: n.meta for n in g.nodes if n.op_type is OpType.ELEMENTWISE}
    assert metas["cumsum"] == ElementwiseMeta("cumsum", mixes=(2,))
    assert metas["flip"] == ElementwiseMeta("flip", moves=(0, 2))
    assert metas["roll"] == ElementwiseMeta("roll", moves=(0, 1, 2))  # no dims: flattened
    assert metas["relu"] == ElementwiseMeta("relu")


def test_a_torchscript_submodule_is_opaque_not_a_crash():
    from viewer.core.prune import Pruner

    class Scripted(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = torch.jit.script(nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()))
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    model, x = Scripted().eval(), torch.randn(1, 3, 4, 4)
    g = build_graph(model, x)  # one atomic node: its ops run in TorchScript's interpreter
    b = g.by_name["b"]
    assert b.op_type is OpType.CUSTOMIZED and b.custom.opaque and "b.0" not in g.by_name
    assert g.predecessors(b.id) == [g.by_name["a"].id]
    assert g.successors(b.id) == [g.by_name["c"].id]
    p = Pruner(model, (x,))
    a = next(grp for grp in p.groups if grp.root == "a")  # blocked before any validation
    assert not a.prunable and "'b' is a TorchScript module" in p.reason(a)
    # its outputs start a group, blocked with the same reason (c's inputs were in none)
    (inner,) = [grp for grp in p.groups if grp.root.startswith("b")]
    assert inner.root == "b" and "'b' is a TorchScript module" in p.reason(inner)
    # a preview and a copy: TorchScript copies itself past deepcopy's memo, and its copies'
    # parameters came out as non-leaf clones, which failed the preview's requires_grad_
    plan = p.plan(0.5)
    assert p.preview(plan)["params"]["before"] == sum(q.numel() for q in model.parameters())
    copied = p.apply(plan).b
    assert all(q.is_leaf and q.requires_grad for q in copied.parameters())
    with pytest.raises(DepViewError, match="the model is a TorchScript module"):
        build_graph(torch.jit.script(model), x)


def _quantized(kind: str) -> nn.Module:
    """A small conv net quantized by torch.ao: dynamically (its Linear only), statically
    (``prepare`` + ``convert``: int8 convs and a Quantize stub), or prepared for QAT (float
    layers with fake quantization, not quantized)."""
    import torch.ao.quantization as Q

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.dq = Q.QuantStub(), Q.DeQuantStub()
            self.conv, self.relu = nn.Conv2d(3, 8, 3), nn.ReLU()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.dq(self.relu(self.conv(self.q(x)))).mean((2, 3)))

    net, x = Net().eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():  # (torch.ao.quantization is deprecated in favour of torchao)
        warnings.simplefilter("ignore")
        if kind == "dynamic":
            return Q.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
        net.qconfig = Q.get_default_qconfig("fbgemm") if kind == "static" \
            else Q.get_default_qat_qconfig("fbgemm")
        if kind == "qat":
            return Q.prepare_qat(net.train()).eval()
        prepared = Q.prepare(net)
        prepared(x)
        return Q.convert(prepared)


@pytest.mark.parametrize("kind,layer", [("dynamic", "'fc' (Linear"), ("static", "'q' (Quantize")])
def test_a_quantized_model_is_refused_in_one_line(kind, layer):
    # its packed weights are no parameters: the library found no groups and said nothing, and
    # the CLI's export failed on the dtypes in its state_dict ("unexpected AttributeError")
    with pytest.raises(DepViewError) as err:
        build_graph(_quantized(kind), torch.randn(2, 3, 8, 8))
    assert str(err.value).startswith(f"{layer} of torch.ao quantization) is quantized")
    assert "give the float model, and quantize it after pruning" in str(err.value)
    qat = _quantized("qat")  # fake quantization on float layers: traced as usual
    assert quantized_layer(qat) is None
    assert any(n.name == "conv" for n in build_graph(qat, torch.randn(2, 3, 8, 8)).nodes)


def test_a_float_model_made_ready_for_quantization_is_traced():
    # FloatFunctional (a residual add a quantizable ResNet keeps as a module) lives among
    # torch's quantized modules but computes in float: it was refused as quantized
    import torch.ao.nn.quantized as nnq

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
            self.skip, self.head = nnq.FloatFunctional(), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.stem(x)
            return self.head(self.skip.add(y, self.conv(y)))

    x = torch.randn(1, 3, 6, 6)
    assert quantized_layer(Block()) is None
    from viewer.core.prune import Pruner

    p = Pruner(Block().eval(), (x,))
    stream = next(g for g in p.groups if g.root == "stem")  # the add couples both branches
    assert {m.node_name for m in stream.members} >= {"stem", "conv", "head"}
    assert not p.reason(stream)


def test_tracing_inside_an_except_block_records_every_module():
    # the hooks tell a failing forward by a new exception, not by "an exception is being
    # handled": a caller's except block (and a forward's own) must not look like a failure
    class Fallback(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            try:
                raise KeyError("handled inside forward")
            except KeyError:
                return self.b(self.a(x))

    model, x = Fallback(), torch.randn(1, 4)
    expected = [n.name for n in build_graph(model, x).nodes]
    assert expected == ["x", "a", "b", "output"]
    try:
        raise ValueError("the caller is handling this")
    except ValueError:
        assert [n.name for n in build_graph(model, x).nodes] == expected


def test_traces_in_several_threads_at_once_give_the_graphs_they_give_alone():
    # the app traces in server threads: two sessions may trace, even the same model, at once
    import threading

    specs = [demo_models.get_demo(n) for n in ("resnet", "llama")]
    models = [(d.build(), d.make_inputs("cpu")) for d in specs]
    alone = [[(n.name, n.op_type, n.in_shapes) for n in build_graph(m, x).nodes]
             for m, x in models]
    jobs = [0, 1, 0, 1]  # two threads per model
    got: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def run(j):
        try:
            start.wait()
            for _ in range(5):
                m, x = models[jobs[j]]
                got[j] = [(n.name, n.op_type, n.in_shapes) for n in build_graph(m, x).nodes]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(j,)) for j in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [got[j] for j in range(len(jobs))] == [alone[i] for i in jobs]
    assert not _global_hooks()


def _plain(g) -> dict:
    d = g.to_dict()
    d["info"].pop("device")
    return d


@pytest.mark.parametrize("name", sorted(demo_models.DEMOS))
def test_recording_in_batches_gives_the_graph_recorded_op_by_op(name, monkeypatch):
    # on meta the tracer records ops in long batches after they ran, on a real device one by
    # one: both, and odd-sized batches on a real device, must give the same graph
    from viewer.core import trace

    demo = demo_models.get_demo(name)
    torch.manual_seed(0)
    one_by_one = _plain(build_graph(demo.build().eval(), demo.make_inputs("cpu")))
    with torch.device("meta"):
        model = demo.build().eval()
    assert _plain(build_graph(model, demo.make_inputs("meta"))) == one_by_one
    monkeypatch.setattr(trace, "_BATCH", 7)
    torch.manual_seed(0)
    assert _plain(build_graph(demo.build().eval(), demo.make_inputs("cpu"))) == one_by_one


class ChangesWhatItRecorded(nn.Module):
    """A forward that changes, after an op ran, what a late reader of that op would see: the
    list it concatenated, a tensor's shape (in place, or by ``out=``)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 1), nn.Conv2d(7, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        feats = [x]
        feats.append(self.c1(torch.cat(feats, 1)))  # DenseNet: cat, then append to the list
        z = self.c2(torch.cat(feats, 1)).mean((2, 3))
        z.unsqueeze_(0)
        z.squeeze_(0)
        w = z.clone()
        w[:, 0] = 1.0
        w.t_()
        w.t_()
        o = z[:, :0].clone()  # recorded (it reads z), then resized by out=
        torch.add(w, z, out=o)
        return self.fc(o)


def test_batched_recording_reads_lists_and_shapes_as_they_were_at_the_call(monkeypatch):
    from viewer.core import trace

    x = torch.randn(1, 3, 4, 4)
    one_by_one = _plain(build_graph(ChangesWhatItRecorded(), x))
    cats = [n for n in one_by_one["nodes"] if n["op_type"] == "concat"]
    assert [c["meta"]["sizes"] for c in cats] == [[3], [3, 4]]
    means = [n for n in one_by_one["nodes"] if n["target"] == "mean"]
    assert means[0]["out_shapes"] == [[1, 5]]
    assert [n["out_shapes"] for n in one_by_one["nodes"] if n["target"] == "clone"] \
        == [[[1, 5]], [[1, 0]]]
    monkeypatch.setattr(trace, "_BATCH", 100)
    assert _plain(build_graph(ChangesWhatItRecorded(), x)) == one_by_one
    with torch.device("meta"):
        model = ChangesWhatItRecorded()
    assert _plain(build_graph(model, x.to("meta"))) == one_by_one


def test_a_meta_result_is_reused_only_for_a_call_that_would_make_the_same_fresh_tensor():
    from viewer.core.trace import _UNCACHEABLE, _meta_key, _result_template

    def key(func, *args, **kwargs):
        return _meta_key(func, args, kwargs, [])

    i = torch.empty(2, 3, dtype=torch.long, device="meta")
    f = torch.empty(2, 3, device="meta")
    assert key(torch.mul, i, 2) == key(torch.mul, i, 2)
    # equal as Python values, different results: the argument's type is in the key
    assert len({key(torch.mul, i, 2), key(torch.mul, i, 2.0), key(torch.mul, i, True)}) == 3
    assert key(torch.mul, f, 2) != key(torch.mul, f.t().contiguous().t(), 2)  # strides
    assert key(torch.mul, f, 2) != key(torch.mul, f.half(), 2)
    assert key(torch.mul, f, 2) != key(torch.mul, nn.Parameter(f), 2)  # requires grad
    assert key(torch.sum, f, dim=0) != key(torch.sum, f, dim=1)
    assert key(torch.mul, torch.empty(2, 3), 2) is None  # values matter off meta
    assert key(torch.mul, f, object()) is None
    assert key(torch.zeros, 2, 3) is None  # no tensor: factories stay as they are
    with_grad = key(torch.mul, f, 2)
    with torch.no_grad():
        assert key(torch.mul, f, 2) != with_grad

    def template(func, *args):
        return _result_template(func(*args), [a for a in args if isinstance(a, torch.Tensor)])

    assert template(torch.mul, f, 2) == (None, [((2, 3), (3, 1), torch.float32)])
    assert template(torch.Tensor.contiguous, f) == (None, [0])  # returns its input
    assert template(torch.Tensor.float, f) == (None, [0])
    assert template(torch.Tensor.view, f, 6) is _UNCACHEABLE  # a view of its input
    assert template(torch.Tensor.view, f.unsqueeze(0), 6) is _UNCACHEABLE  # ... of its base
    # a view of a tensor the call made itself (meta's linear on 3-d input returns its addmm
    # result viewed: 2.5 ms a call) aliases nothing the caller holds: a fresh tensor is made
    assert template(lambda a: (a + 1).view(6), f) == (None, [((6,), (1,), torch.float32)])
    x3, w = torch.empty(2, 5, 3, device="meta"), torch.empty(4, 3, device="meta")
    assert template(torch.nn.functional.linear, x3, w) == (
        None, [((2, 5, 4), (20, 4, 1), torch.float32)])
    assert template(torch.max, f, 1) is _UNCACHEABLE  # a named tuple
    w = nn.Parameter(torch.empty(3, device="meta"))
    with torch.enable_grad():
        assert template(torch.mul, w, 2) is _UNCACHEABLE  # needs grad
    assert template(torch.Tensor.dim, f) is None  # not a tensor
    y = f + 1
    assert template(lambda _: (y, y), f) is _UNCACHEABLE  # one fresh tensor twice


@pytest.fixture
def tracers(monkeypatch):
    """The tracers of the traces a test makes, in order (kept at their first flush)."""
    from viewer.core import trace

    kept: list = []
    flush = trace._Tracer.flush

    def keep(self):
        kept.append(self)
        flush(self)

    monkeypatch.setattr(trace._Tracer, "flush", keep)
    return kept


class SameCallsAgain(nn.Module):
    """Calls whose results are their inputs, fresh tensors or views, each made twice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        for _ in range(2):
            y = torch.relu(self.fc(x))
            y.contiguous()  # returns y itself: y is now this op's value
            z = y.float() * 2  # y itself again
            nn.functional.relu(z, inplace=True)
            z = z.view(2, 4, 8).transpose(1, 2).contiguous().transpose(1, 2).reshape(8, 8)
            a, b = z.chunk(2, dim=1)
            x = torch.cat([b, a], 1) + y.mean(1, keepdim=True) + z
        return x


@pytest.mark.parametrize("model, make_x", [
    (SameCallsAgain, lambda device: torch.randn(8, 8, device=device)),
    (lambda: demo_models.get_demo("llama").build(),
     lambda device: demo_models.get_demo("llama").make_inputs(device)),
])
def test_meta_results_reused_give_the_graph_made_without_reuse(model, make_x, monkeypatch,
                                                              tracers):
    from viewer.core import trace

    with torch.device("meta"):
        torch.manual_seed(0)
        m = model().eval()
    x = make_x("meta")
    g = _plain(build_graph(m, x))
    assert tracers[-1].reused >= 4
    monkeypatch.setattr(trace, "_meta_key", lambda *a: None)  # every call runs
    assert _plain(build_graph(m, x)) == g
    assert tracers[-1].reused == 0
    torch.manual_seed(0)
    assert _plain(build_graph(model().eval(), make_x("cpu"))) == g


def test_meta_calls_inside_atomic_layers_and_across_traces_are_reused(tracers):
    """On meta torch's LayerNorm kernel is Python (1.6 ms a call in torch 2.13): inside an
    atomic layer too, a call made before with the same arguments reuses that result, and
    traces given one ``meta_results`` (validation's probes) reuse each other's. The graphs
    are the same, and a layer that raises leaves no mode of the trace behind."""
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8))
    x = torch.empty(2, 8, device="meta")
    results: dict = {}
    g = _plain(build_graph(m, x, meta_results=results))
    assert tracers[-1].reused == 2  # the second Linear's and LayerNorm's calls
    assert {k[0] for k in results} >= {F.linear, F.layer_norm}
    n = len(results)
    assert _plain(build_graph(m, x, meta_results=results)) == g
    assert tracers[-1].reused == 4 and len(results) == n
    assert _plain(build_graph(m, x)) == g  # a trace of its own starts empty
    with torch.device("meta"):
        bad = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(8))
    with pytest.raises(DepViewError, match="LayerNorm"):
        build_graph(bad, x, meta_results=results)
    assert torch._C._len_torch_function_stack() == 0
    assert _plain(build_graph(m, x, meta_results=results)) == g
    assert _plain(build_graph(m.to_empty(device="cpu"), torch.randn(2, 8))) == g


class GrowsItsInput(nn.Module):
    """A registered custom layer that reshapes the tensor it is given, in place, where the
    tracer cannot see it (inside an atomic module nothing is traced)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        x.unsqueeze_(0)
        return x[0] * self.scale.view(1, 4, 1, 1)


class CallsGrowsItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.grow = nn.Conv2d(3, 4, 1), GrowsItsInput()

    def forward(self, x):
        y = self.conv(x) * 2
        return self.grow(y) + 1


def test_batched_recording_flushes_before_a_custom_layer_that_may_reshape_its_input(
        monkeypatch):
    from viewer.core import trace
    from viewer.core.optypes import register_layer, unregister_layer

    register_layer(GrowsItsInput, in_dims={"scale": 0}, out_dims={"scale": 0},
                   passthrough=True)
    try:
        x = torch.randn(1, 3, 4, 4)
        one_by_one = _plain(build_graph(CallsGrowsItsInput(), x))
        mul = [n for n in one_by_one["nodes"] if n["target"] == "mul"][0]
        assert mul["out_shapes"] == [[1, 4, 4, 4]]
        monkeypatch.setattr(trace, "_BATCH", 100)
        assert _plain(build_graph(CallsGrowsItsInput(), x)) == one_by_one
        with torch.device("meta"):
            model = CallsGrowsItsInput()
        assert _plain(build_graph(model, x.to("meta"))) == one_by_one
    finally:
        unregister_layer(GrowsItsInput)


def test_build_graph_runs_in_eval_mode_and_restores_the_flags_even_on_error():
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(3, 4), bn)
    before = bn.running_mean.clone()
    build_graph(model, (torch.randn(5, 3),))
    assert torch.equal(bn.running_mean, before) and model.training and bn.training
    with pytest.raises(DepViewError):
        build_graph(model, (torch.randn(5, 2),))  # wrong width: the forward fails
    assert model.training and bn.training and torch.equal(bn.running_mean, before)
    model[0].eval()  # mixed flags: each module gets its own back
    build_graph(model, (torch.randn(5, 3),))
    assert model.training and bn.training and not model[0].training
    assert torch.equal(bn.running_mean, before)


class WritesBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(3))
        self.register_buffer("ranges", torch.zeros(1))
        self.register_buffer("count", torch.tensor(0))

    def forward(self, x):
        self.seen.add_(x.sum())  # in place
        self.ranges.resize_(2).fill_(7.0)  # a new shape, as fake quantization's scales take
        self.count = self.count + 1  # a new tensor
        return x * self.seen.sum()


def test_eval_mode_puts_back_the_buffers_a_forward_wrote():
    from viewer.core.trace import eval_mode

    m = WritesBuffers()
    objects = [m.seen, m.ranges, m.count]
    with eval_mode(m):
        m(torch.ones(2))
        m(torch.ones(2))
        assert m.seen.tolist() == [4.0] * 3 and int(m.count) == 2
    assert all(a is b for a, b in zip([m.seen, m.ranges, m.count], objects, strict=True))
    assert m.seen.tolist() == [0.0] * 3 and m.ranges.tolist() == [0.0] and int(m.count) == 0
    build_graph(m, (torch.ones(2),))
    assert m.seen.tolist() == [0.0] * 3 and int(m.count) == 0
    # a lazy layer's buffers are made by its first forward, which DepView runs: they stay
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d()).eval()
    with eval_mode(lazy):
        lazy(torch.randn(1, 3, 8, 8))
    assert lazy[1].running_var.shape == (4,) and torch.equal(lazy[1].running_var,
                                                              torch.ones(4))


class ExtendsItsTable(nn.Module):
    """Replaces its position table in the forward, as SeamlessM4T's conformer extends its
    ``pe``: the old tensor is freed at once unless something holds it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pe", torch.zeros(1, 2, 8), persistent=False)
        self.lin = nn.Linear(8, 8)
        self.old_alive: list[bool] = []

    def forward(self, x):
        old = weakref.ref(self.pe)
        self.pe = torch.zeros(1, x.shape[1], 8, device=x.device)
        self.old_alive.append(old() is not None)
        # (a tensor made after the old table may take its id: validation of SeamlessM4T saw
        # a decoder's constant named "speech_encoder.encoder.embed_positions.pe" in one trace
        # of five, and blocked a group for "the model runs other ops")
        return torch.cat([torch.zeros(1, 1, 8, device=x.device), self.lin(x) + self.pe], 1)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_buffer_the_forward_replaces_keeps_its_id_for_the_trace(device):
    # (on meta no buffer is kept by eval mode, which puts real ones back: the tracer's hold
    # is all there is)
    m = ExtendsItsTable().to(device).eval()
    m(torch.randn(1, 5, 8, device=device))
    g = build_graph(m, (torch.randn(1, 5, 8, device=device),))
    # the tracer holds the tensors it knows by id, so no other takes an id it knows
    assert m.old_alive == [False, True]
    assert [n.name for n in g.nodes] == ["x", "lin", "zeros", "add", "zeros_1", "cat", "output"]


def test_eval_mode_from_two_threads_keeps_the_model_in_eval_until_the_last_leaves():
    # before, the second call found the flags the first had cleared and held nothing; the
    # first, leaving while the second still ran, set train mode back under it
    import threading

    from viewer.core.trace import eval_mode

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))  # train mode
    seen: dict[str, bool] = {}
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with eval_mode(model):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with eval_mode(model):
            b_in.set()
            a_out.wait(10)  # the first call has left
            seen["training"] = model[1].training
            model(torch.randn(5, 3))  # BatchNorm in eval: its statistics stay
    before = model[1].running_mean.clone()
    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"training": False}
    assert torch.equal(model[1].running_mean, before)
    assert model.training and model[0].training and model[1].training


def test_writes_are_setitem_nodes_in_the_graph_json():
    import json

    class Writes(nn.Module):
        def forward(self, x):
            y = x * 2
            y[:, 2] = 0.0  # an index set
            y.view(2, -1)[:, 0].zero_()  # through a view of a view: region not followed
            return y + 1

    d = build_graph(Writes(), torch.randn(2, 6, 4)).to_dict()
    metas = {n["target"]: json.loads(json.dumps(n["meta"])) for n in d["nodes"]}
    assert metas["setitem"]["kind"] == "setitem" and metas["setitem"]["value"] is None
    assert metas["setitem"]["region"]["selects"] == [[1, 2]]
    assert metas["write"] == {"region": None, "value": 1, "index": [], "mask": 0,
                              "kind": "setitem"}


class OptionalMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, mask=None):
        return self.fc(x)


def test_an_optional_none_input_is_not_blamed_for_another_failure():
    with pytest.raises(DepViewError) as err:
        build_graph(OptionalMask(), (torch.randn(1, 7), None))
    assert "[1, 7]" in str(err.value) and "not a tensor" not in str(err.value)


def test_an_elementwise_op_keeps_the_plain_numbers_it_computes_with():
    # validation compares them with a pruned model's (a scale read from a width moves)
    class Scaled(nn.Module):
        def forward(self, x):
            return (x / 2.5).clamp(min=-1.0) + x.mul(3)

    g = build_graph(Scaled(), (torch.randn(2, 4),))
    scalars = {n.target: n.attrs.get("scalars") for n in g.nodes
               if n.op_type is OpType.ELEMENTWISE}
    assert scalars == {"div": (2.5,), "clamp": (-1.0,), "mul": (3,), "add": None}
    div = next(n for n in json.loads(json.dumps(g.to_dict()))["nodes"] if n["target"] == "div")
    assert div["attrs"] == {"scalars": [2.5]}  # (the graph JSON carries them)


def test_a_layer_input_read_for_its_shape_only_is_marked_and_its_view_passed_by():
    ids = torch.randint(0, 20, (2, 6))
    g = build_graph(EmbedsThenPositions(PositionsFromLength).eval(), (ids,))
    assert g.by_name["pos"].shape_only == (0,) and g.by_name["tok"].shape_only == ()
    assert g.shape_read == {g.by_name["getitem"].id}
    g = build_graph(EmbedsThenPositions(PositionsFromValues).eval(), (ids,))
    assert g.by_name["pos"].shape_only == () and not g.shape_read


def _cached(func):
    """Hugging Face's ``compile_compatible_method_lru_cache``: an lru_cache its wrapper
    closes over."""
    import functools

    cached = functools.lru_cache(maxsize=8)(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return cached(*args, **kwargs)

    return wrapper


class CachedTable(nn.Module):
    """A sine position table cached class-wide by its sizes, as RT-DETR's and DETR's are."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    @staticmethod
    @_cached
    def table(n: int, d: int, device) -> torch.Tensor:
        omega = 1.0 / (10000.0 ** (torch.arange(d // 2, device=device) / (d // 2)))
        out = torch.arange(n, dtype=torch.float32, device=device)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], 1)

    def forward(self, x):
        h = self.conv(x).flatten(2).transpose(1, 2)
        return h + self.table(h.shape[1], h.shape[2], h.device)


@_cached
def _centres(n: int, device) -> torch.Tensor:
    """Patch centres in [-1, 1], cached by a function of the module, as DINOv3's are."""
    return (torch.arange(0.5, n, device=device) / n * 2 - 1)[:, None]


class CachedCentres(CachedTable):
    def forward(self, x):
        h = self.conv(x).flatten(2).transpose(1, 2)
        return h * _centres(h.shape[1], h.device).cos()


@pytest.mark.parametrize("model", [CachedTable(), CachedCentres()], ids=["method", "function"])
def test_a_table_a_method_caches_is_traced_alike_every_time(model):
    # was: the first trace computed the table, the next took it from the cache (a constant
    # and none of its ops), so validation's probes saw other ops and blocked every group
    # (PP-DocLayout-V4 at its defaults: 0 of 95 groups prunable, 86 now; DINOv3's
    # module-level cache of patch centres: CHMv2 0 of 99)
    x = torch.randn(1, 3, 4, 4)
    model(x)  # (the user ran it first: the cache is warm)
    traces = [[(n.name, n.op_type) for n in build_graph(model, x).nodes] for _ in range(2)]
    assert traces[0] == traces[1]
    table_ops = {"div", "mul", "sub"} if isinstance(model, CachedCentres) else {"sin", "cat"}
    assert table_ops <= {name for name, _ in traces[0]}
    assert torch.equal(model(x), model(x))  # (and the cache still works for the model)


def test_a_torch_layer_subclass_returning_more_than_its_layer_is_looked_into_once_found():
    # its own forward returns (scores, ids): no LINEAR rule says where the ids' values go.
    # The trace that meets it builds again looking into it; later traces look at once
    calls = []

    class Picker(nn.Linear):
        def forward(self, x):
            calls.append(1)
            scores = super().forward(x)
            return scores, scores.argmax(-1)

    class Plain(nn.Linear):  # returns one tensor, as its layer: stays one node
        def forward(self, x):
            return super().forward(x) * 2

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.pick, self.plain = Picker(4, 3), Plain(4, 4)

        def forward(self, x):
            scores, ids = self.pick(self.plain(x))
            return scores, ids

    model, x = Model().eval(), torch.randn(2, 4)
    g = build_graph(model, x)
    assert len(calls) == 2
    assert "pick" not in g.by_name and g.node("pick.linear").op_type is OpType.MATMUL
    assert g.node("pick.argmax").module == "pick"
    assert g.node("plain").op_type is OpType.LINEAR and g.node("plain").own_forward == "Plain"
    build_graph(model, x)
    assert len(calls) == 3


class _InterruptedInDispatch(nn.Module):
    """What a Ctrl-C inside torch's dispatch looks like: the interrupt unwinds, and torch's
    mode stack fails on the way out with an error of its own."""

    def forward(self, x):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("trying to pop from empty mode stack") from None


def test_a_ctrl_c_during_the_trace_is_an_interrupt_not_a_model_error():
    # it was "model forward failed in ...: RuntimeError: trying to pop from empty mode
    # stack", exit 2, as if the model were broken
    with pytest.raises(KeyboardInterrupt):
        build_graph(_InterruptedInDispatch(), (torch.randn(1, 2),))
