"""Demo models for DepView: small plain-torch models that together exercise every hard
structure the dependency tracer and the structural pruner have to handle.

Use :data:`DEMOS` (insertion ordered) or :func:`get_demo`::

    demo = get_demo("resnet")
    torch.manual_seed(0)
    model = demo.build().eval()
    out = model(*demo.make_inputs("cpu"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .cnn import build_cnn
from .densenet import build_densenet
from .llama import build_llama
from .mobilenet import build_mobilenet
from .moe import build_moe
from .norms import build_norms
from .resnet import build_resnet, build_resnet50
from .rnn import build_rnn
from .shufflenet import build_shufflenet
from .slicing import build_slicing
from .swin import build_swin
from .unet import build_unet
from .vit import build_vit
from .yolo import build_yolo

__all__ = ["DEMOS", "Demo", "get_demo"]

InputSpec = tuple[tuple[int, ...], str]

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


@dataclass(frozen=True)
class Demo:
    """A registered demo model.

    ``build(**kwargs)`` returns a fresh model (kwargs override the defaults; the caller seeds
    ``torch.manual_seed`` for deterministic weights). ``make_inputs(device)`` returns the
    example inputs as a tuple, deterministic across calls.
    """

    name: str
    description: str
    build: Callable[..., nn.Module]
    input_specs: tuple[InputSpec, ...]
    make_inputs: Callable[[torch.device | str], tuple[torch.Tensor, ...]]
    output_layer: str | None = None


def _input_maker(
    specs: tuple[InputSpec, ...], seed: int = 0, high: int | None = None
) -> Callable[[torch.device | str], tuple[torch.Tensor, ...]]:
    """Inputs from ``specs``: float32 ~ N(0, 1); int64 uniform in ``[0, high)``.

    Tensors come from a seeded CPU generator and are then moved to ``device``; on ``"meta"``
    they are created directly on meta.
    """
    for _, dtype in specs:
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported input dtype {dtype!r}")
        if dtype == "int64" and high is None:
            raise ValueError("int64 inputs need an upper bound 'high'")

    def make_inputs(device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        dev = torch.device(device)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = []
        for shape, dtype in specs:
            if dev.type == "meta":
                t = torch.empty(shape, dtype=_DTYPES[dtype], device="meta")
            elif dtype == "int64":
                t = torch.randint(0, high, shape, generator=gen, device="cpu").to(dev)
            else:
                t = torch.randn(shape, generator=gen, device="cpu").to(dev)
            out.append(t)
        return tuple(out)

    return make_inputs


def _demo(
    name: str,
    description: str,
    build: Callable[..., nn.Module],
    specs: tuple[InputSpec, ...],
    output_layer: str | None,
    high: int | None = None,
) -> Demo:
    return Demo(name, description, build, specs, _input_maker(specs, high=high), output_layer)


_IMG32: tuple[InputSpec, ...] = (((1, 3, 32, 32), "float32"),)

DEMOS: dict[str, Demo] = {
    d.name: d
    for d in (
        _demo(
            "cnn",
            "Plain CNN: conv-BN-ReLU-maxpool x3, flatten, two Linears.",
            build_cnn,
            _IMG32,
            "fc",
        ),
        _demo(
            "resnet",
            "Small ResNet: BasicBlock residual adds, 1x1 projection shortcuts.",
            build_resnet,
            _IMG32,
            "fc",
        ),
        _demo(
            "resnet50",
            "ResNet-50 shape: Bottleneck blocks (3, 4, 6, 3), 1000 classes.",
            build_resnet50,
            (((1, 3, 224, 224), "float32"),),
            "fc",
        ),
        _demo(
            "densenet",
            "DenseNet: growing torch.cat([x, new], 1) dense blocks, transitions.",
            build_densenet,
            _IMG32,
            "fc",
        ),
        _demo(
            "shufflenet",
            "ShuffleNetV2: chunk/cat split units, channel shuffle, depthwise.",
            build_shufflenet,
            _IMG32,
            "fc",
        ),
        _demo(
            "mobilenet",
            "MobileNetV3-like: inverted residuals, depthwise, SE gates, groups=2.",
            build_mobilenet,
            _IMG32,
            "fc",
        ),
        _demo(
            "unet",
            "U-Net: ConvTranspose2d upsampling and skip concatenation.",
            build_unet,
            _IMG32,
            "head",
        ),
        _demo(
            "vit",
            "Tiny ViT: cls-token concat, pos embedding, MultiheadAttention, layer scale.",
            build_vit,
            _IMG32,
            "head",
        ),
        _demo(
            "rnn",
            "Text classifier: Embedding -> LSTM -> GRU -> last step -> Linear.",
            build_rnn,
            (((1, 12), "int64"),),
            "fc",
            high=100,
        ),
        _demo(
            "norms",
            "GroupNorm, InstanceNorm2d(affine), per-channel and single PReLU.",
            build_norms,
            _IMG32,
            "fc",
        ),
        _demo(
            "slicing",
            "Channel cuts: unbind, x[:, :C] slices, uneven split, tensor_split, unfold patches.",
            build_slicing,
            _IMG32,
            "fc",
        ),
        _demo(
            "llama",
            "Llama decoder: RMSNorm, GQA with RoPE, SDPA, SwiGLU, lm_head.",
            build_llama,
            (((1, 16), "int64"),),
            "lm_head",
            high=256,
        ),
        _demo(
            "moe",
            "Mixture of experts: a router's top-2 of 8 experts, histc counts, grouped_mm.",
            build_moe,
            (((1, 16), "int64"),),
            "lm_head",
            high=128,
        ),
        _demo(
            "swin",
            "Tiny Swin: window attention with relative bias, roll shifts, merging.",
            build_swin,
            _IMG32,
            "head",
        ),
        _demo(
            "yolo",
            "YOLOv8-style detector: C2f chunk/cat, SPPF, FPN/PAN neck, DFL head, anchors.",
            build_yolo,
            (((1, 3, 64, 64), "float32"),),
            None,
        ),
    )
}


def get_demo(name: str) -> Demo:
    """Return the demo called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return DEMOS[name]
    except KeyError:
        known = ", ".join(DEMOS)
        raise ValueError(f"unknown demo model {name!r}; known: {known}") from None
