"""Tests for the demo_models registry and every demo model."""

from __future__ import annotations

import pytest
import torch

import demo_models
from demo_models import DEMOS, Demo, get_demo

# Hand-written expected output shapes for the default build() and make_inputs().
EXPECTED_OUTPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "cnn": (1, 10),
    "resnet": (1, 10),
    "resnet50": (1, 1000),
    "densenet": (1, 10),
    "shufflenet": (1, 10),
    "mobilenet": (1, 10),
    "unet": (1, 2, 32, 32),
    "vit": (1, 10),
    "rnn": (1, 4),
    "norms": (1, 10),
    "slicing": (1, 10),
    "llama": (1, 16, 256),
    "moe": (1, 16, 128),
    "swin": (1, 10),
    "yolo": (1, 12, 84),  # 4 box coordinates + 8 classes, 8x8 + 4x4 + 2x2 anchors
}

EXPECTED_OUTPUT_LAYERS: dict[str, str | None] = {
    "cnn": "fc",
    "resnet": "fc",
    "resnet50": "fc",
    "densenet": "fc",
    "shufflenet": "fc",
    "mobilenet": "fc",
    "unet": "head",
    "vit": "head",
    "rnn": "fc",
    "norms": "fc",
    "slicing": "fc",
    "llama": "lm_head",
    "moe": "lm_head",
    "swin": "head",
    "yolo": None,  # its head's last convs reach the output: no layer to name
}

LLAMA_7B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden=11008, vocab=32000)

_DTYPES = {"float32": torch.float32, "int64": torch.int64}

NAMES = list(EXPECTED_OUTPUT_SHAPES)


def _build(demo: Demo, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return demo.build(**kwargs).eval()


def test_registry_names_and_order() -> None:
    assert list(DEMOS) == NAMES
    for name, demo in DEMOS.items():
        assert isinstance(demo, Demo)
        assert demo.name == name
        assert demo.description and "\n" not in demo.description
        assert get_demo(name) is demo


def test_unknown_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown demo model 'nope'; known: cnn, resnet"):
        get_demo("nope")


def test_demo_is_frozen() -> None:
    with pytest.raises(AttributeError):
        DEMOS["cnn"].name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_forward_cpu(name: str) -> None:
    demo = get_demo(name)
    model = _build(demo)
    inputs = demo.make_inputs("cpu")
    assert isinstance(inputs, tuple)
    assert len(inputs) == len(demo.input_specs)
    for t, (shape, dtype) in zip(inputs, demo.input_specs, strict=True):
        assert tuple(t.shape) == shape
        assert t.dtype == _DTYPES[dtype]
        assert t.device.type == "cpu"
    with torch.no_grad():
        out = model(*inputs)
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == EXPECTED_OUTPUT_SHAPES[name]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_inputs_deterministic(name: str) -> None:
    demo = get_demo(name)
    a = demo.make_inputs("cpu")
    torch.manual_seed(123)  # the global RNG must not matter
    b = demo.make_inputs(torch.device("cpu"))
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["rnn", "llama", "moe"])
def test_token_inputs_in_vocab(name: str) -> None:
    (tokens,) = get_demo(name).make_inputs("cpu")
    vocab = (
        _build(get_demo(name))
        .get_submodule("embedding" if name == "rnn" else "embed_tokens")
        .num_embeddings
    )
    assert tokens.min() >= 0 and tokens.max() < vocab


@pytest.mark.parametrize("name", NAMES)
def test_build_deterministic(name: str) -> None:
    demo = get_demo(name)
    sd_a = _build(demo).state_dict()
    sd_b = _build(demo).state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key
    if name != "resnet50":
        sd_c = _build(demo, seed=1).state_dict()
        assert any(sd_a[k].is_floating_point() and not torch.equal(sd_a[k], sd_c[k]) for k in sd_a)


@pytest.mark.parametrize("name", NAMES)
def test_forward_meta(name: str) -> None:
    demo = get_demo(name)
    with torch.device("meta"):
        model = demo.build().eval()
    assert all(p.device.type == "meta" for p in model.parameters())
    inputs = demo.make_inputs("meta")
    assert all(t.device.type == "meta" for t in inputs)
    if name == "moe":  # torch's meta grouped_mm takes bf16 only; the tracer's stand-in runs
        with pytest.raises(RuntimeError, match="BF16"):
            model(*inputs)
        from viewer.core.trace import build_graph, output_nodes

        (out,) = output_nodes(build_graph(model, inputs))
        assert out.in_shapes[0] == EXPECTED_OUTPUT_SHAPES[name]
        return
    out = model(*inputs)
    assert out.device.type == "meta"
    assert tuple(out.shape) == EXPECTED_OUTPUT_SHAPES[name]


@pytest.mark.parametrize("name", NAMES)
def test_output_layer(name: str) -> None:
    demo = get_demo(name)
    assert demo.output_layer == EXPECTED_OUTPUT_LAYERS[name]
    if demo.output_layer is None:
        return
    with torch.device("meta"):
        model = demo.build()
    layer = model.get_submodule(demo.output_layer)
    assert isinstance(layer, torch.nn.Module)
    out_features = getattr(layer, "out_features", None) or getattr(layer, "out_channels", None)
    assert out_features == EXPECTED_OUTPUT_SHAPES[name][-1 if name in ("llama", "moe") else 1]


def test_build_kwargs_override() -> None:
    torch.manual_seed(0)
    model = get_demo("resnet").build(layers=(1, 1, 1), width=8, bottleneck=True)
    out = model.eval()(*get_demo("resnet").make_inputs("cpu"))
    assert tuple(out.shape) == (1, 10)
    assert model.fc.in_features == 8 * 4 * 4  # last stage width 32, bottleneck expansion 4
    llama = get_demo("llama").build(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab=64)
    assert len(llama.layers) == 1
    assert llama.lm_head.out_features == 64


def test_resnet50_shape() -> None:
    with torch.device("meta"):
        model = get_demo("resnet50").build()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's count
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def test_llama_causal() -> None:
    demo = get_demo("llama")
    model = _build(demo)
    (tokens,) = demo.make_inputs("cpu")
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_llama_7b_on_meta() -> None:
    demo = get_demo("llama")
    with torch.device("meta"):
        model = demo.build(**LLAMA_7B)
    assert not any(p.device.type == "cpu" for p in model.parameters())
    assert not any(b.device.type == "cpu" for b in model.buffers())
    assert len(model.layers) == 32
    assert model.layers[0].attn.k_proj.out_features == 8 * 128
    out = model(*demo.make_inputs("meta"))
    assert out.device.type == "meta"
    assert tuple(out.shape) == (1, 16, 32000)


def test_public_api() -> None:
    assert set(demo_models.__all__) == {"DEMOS", "Demo", "get_demo"}
