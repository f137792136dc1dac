"""Example inputs for a Hugging Face vision-language model given none: token ids with one
image's tokens in them, and the image (noise of the vision tower's size). Token ids alone run
the text model only, leaving the vision tower unseen, so unpruned.

The image takes the form the model's forward asks for: ``pixel_values`` of one image
(LLaVA, Gemma 3, PaliGemma, InternVL; InstructBLIP with ``qformer_input_ids``), the patches
of an image grid with ``image_sizes`` (LLaVA-NeXT), flattened patches on a ``(frames, h, w)``
grid with ``image_grid_thw`` (Qwen2-VL and its kin, GLM-4V) and ``mm_token_type_ids`` where
the forward reads them, patches with their places in ``image_position_ids`` (Gemma 4), or
one tile with its aspect ratio (Mllama). The image token count is what the model makes
features of: asked of its ``get_image_features``, and corrected from the error Hugging Face
raises when tokens and features do not match ("tokens: 16, features: 4"); a flattened
patch's width, from torch's error when the patch embedding reads another.
"""

from __future__ import annotations

import inspect
import re

import torch
from torch import nn

from .text import error_line
from .trace import arg_names

#: tries of the model on an image before giving up (each fixes one thing its error names)
TRIES = 5
#: "Image features and image tokens do not match, tokens: 512, features: 16"
_COUNTS = re.compile(r"tokens:?\s*(\d+),?\s*features:?\s*(\d+)")
#: a flattened patch of another width than the patch embedding's (ERNIE 4.5 VL's patches
#: have no frames: 3 x 8 x 8 numbers, not 2 x 3 x 8 x 8)
_WIDTH = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x")
#: LLaVA-NeXT splitting its pixel values into each image's grid patches
_PATCHES = re.compile(r"split_sizes to sum exactly to (\d+) \(input tensor's size at "
                      r"dimension 0\), but got split_sizes=\[(\d+)\]")


class NoImageInputsError(ValueError):
    """The model ran on no image DepView made (the message says why)."""


def image_token(cfg) -> int | None:
    """The id of the token a vision-language config puts image features at, if any."""
    return next((v for k in ("image_token_id", "image_token_index")
                 if isinstance(v := getattr(cfg, k, None), int)
                 and not isinstance(v, bool)), None)


def wants_image(model: nn.Module) -> bool:
    """Does ``model`` read token ids and an image, with an image token in its config?"""
    cfg = getattr(model, "config", None)
    return {"input_ids", "pixel_values"} <= set(arg_names(model)) and \
        image_token(cfg) is not None and getattr(cfg, "vision_config", None) is not None


def image_text_inputs(model: nn.Module, gen: torch.Generator, run=None) -> dict:
    """Keyword inputs ``model`` runs on: token ids holding one image's tokens between two
    text tokens on each side, the image, and what else its forward needs to read it.
    ``run(model, inputs)`` runs it (by default under ``no_grad``). Raises
    :class:`NoImageInputsError` when it runs on none of what is tried."""
    if not wants_image(model):
        raise NoImageInputsError("it reads no image with image tokens")
    cfg, params = model.config, set(arg_names(model))
    token, vision = image_token(cfg), cfg.vision_config
    pixels, extra = _image(vision, params, gen)
    if "qformer_input_ids" in params:  # (InstructBLIP's Q-Former reads text too)
        extra["qformer_input_ids"] = torch.ones(1, 4, dtype=torch.long)
    hidden = getattr(getattr(cfg, "text_config", cfg), "hidden_size", 0) or 1
    n = _feature_count(model, pixels, extra) or next(
        (v for k in ("mm_tokens_per_image", "image_seq_length", "num_query_tokens")
         if isinstance(v := getattr(cfg, k, None), int) and v > 0), 1)
    run = run or _run
    failure = "no try"
    for _ in range(TRIES):
        x = {"input_ids": torch.tensor([[1, 1] + [token] * n + [1, 1]]),
             "pixel_values": pixels, **extra}
        if "mm_token_type_ids" in params:  # (multimodal RoPE: 1 at image tokens)
            x["mm_token_type_ids"] = (x["input_ids"] == token).long()
        if "aspect_ratio_ids" in params:  # (every token attends to the image's one tile)
            x["cross_attention_mask"] = torch.ones(1, n + 4, 1, 1, dtype=torch.long)
        try:
            run(model, x)
            return x
        except Exception as exc:  # (its error names what to change, or it is the last)
            failure = error_line(exc)
            text = str(exc)
            counts, patches, width = (r.search(text) for r in (_COUNTS, _PATCHES, _WIDTH))
            if "expected 5, got 4" in text and pixels.dim() == 4:  # images per sample
                pixels = pixels[:, None]
            elif patches and pixels.dim() in (4, 5):  # as many grid patches as it asks for
                pixels = torch.randn(1, int(patches.group(2)), *pixels.shape[-3:],
                                     generator=gen)
            elif width and pixels.dim() == 2 and [int(width.group(1)), int(
                    width.group(2))] == list(pixels.shape) and int(width.group(3)) and \
                    pixels.shape[1] % int(width.group(3)) == 0:  # flattened patches
                pixels = torch.randn(pixels.shape[0], int(width.group(3)), generator=gen)
            elif isinstance(exc, TypeError) and "image_sizes" in params and \
                    "image_sizes" not in extra:  # (None where the sizes were wanted)
                extra = {**extra, "image_sizes": torch.tensor([list(pixels.shape[-2:])])}
            elif counts and (n_new := _recount(n, int(counts.group(1)),
                                               int(counts.group(2)), hidden)):
                n = n_new
            else:
                break
    raise NoImageInputsError(failure[:200])


def _recount(n: int, tokens: int, features: int, hidden: int) -> int | None:
    """The image token count after ``n`` tokens met ``features`` features, where Hugging Face
    counted ``tokens`` (both in one unit: tokens, or numbers of tokens x width). Equal counts
    that still failed counted the features in numbers and the tokens as tokens (LLaVA:
    "tokens: 512, features: 512" for 16 tokens of a 32-wide model). None: no count fits."""
    if tokens and features * n % tokens == 0 and features * n // tokens not in (n, 0):
        return features * n // tokens
    if tokens == features and n % hidden == 0 and n // hidden:
        return n // hidden
    return None


def _image(vision, params: set[str], gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """One image as the forward takes it, and the keyword inputs that describe it."""
    channels = next((v for k in ("num_channels", "in_channels", "in_chans")
                     if isinstance(v := getattr(vision, k, None), int)), 3)
    if "image_grid_thw" in params and isinstance(getattr(vision, "patch_size", None), int):
        # flattened patches on a (1 frame, h, w) grid of 2 x 2 merged patches
        merge = getattr(vision, "spatial_merge_size", 1) or 1
        frames = getattr(vision, "temporal_patch_size", 1) or 1
        side, patch = 2 * merge, vision.patch_size
        return (torch.randn(side * side, channels * frames * patch * patch, generator=gen),
                {"image_grid_thw": torch.tensor([[1, side, side]])})
    if "image_position_ids" in params and isinstance(getattr(vision, "patch_size", None), int):
        # Gemma 4: the patches of one image and their (x, y) places, a 2 x 2 grid of what
        # its pooler makes one token of
        pool = getattr(vision, "pooling_kernel_size", 1) or 1
        side, patch = 2 * pool, vision.patch_size
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        return (torch.randn(1, side * side, channels * patch * patch, generator=gen),
                {"image_position_ids": torch.stack([xs.flatten(), ys.flatten()], -1)[None]})
    size = getattr(vision, "image_size", None)
    size = size[0] if isinstance(size, (list, tuple)) and size else size
    size = size if isinstance(size, int) and size > 0 else 224
    pixels = torch.randn(1, channels, size, size, generator=gen)
    if "aspect_ratio_ids" in params:  # Mllama: one image of one tile, its aspect ratio 1:1
        return pixels[:, None, None], {"aspect_ratio_ids": torch.tensor([[1]]),
                                       "aspect_ratio_mask": torch.tensor([[[1]]])}
    return pixels, {}


def _feature_count(model: nn.Module, pixels: torch.Tensor, extra: dict) -> int | None:
    """How many features ``get_image_features`` makes of the image (per-image tensors of
    (tokens, width), or one (images, tokens, width)); None when it cannot say."""
    get = getattr(model, "get_image_features", None) or \
        getattr(getattr(model, "model", None), "get_image_features", None)
    if get is None:
        return None
    own = next((p.dtype for p in model.parameters() if p.is_floating_point()), pixels.dtype)
    try:
        takes = set(inspect.signature(get).parameters)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = get(pixel_values=pixels.to(own),  # (a model run in bfloat16)
                      **{k: v for k, v in extra.items() if k in takes})
    except Exception:  # (a guess to start from: the forward's error corrects it)
        return None
    out = getattr(out, "pooler_output", None) if not isinstance(
        out, (torch.Tensor, list, tuple)) else out
    parts = list(out) if isinstance(out, (list, tuple)) else [out]
    if not parts or not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in parts):
        return None
    return sum(t.shape[:-1].numel() for t in parts) or None


def _run(model: nn.Module, inputs: dict) -> None:
    with torch.no_grad():
        model(**inputs)
