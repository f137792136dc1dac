"""Example inputs for vision-language models (viewer/core/vlminputs.py): real Hugging Face
architectures from tiny configs, each run on the image and image tokens made for it."""

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")

from viewer.core.vlminputs import (  # noqa: E402
    NoImageInputsError,
    _recount,
    image_text_inputs,
    wants_image,
)

TEXT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=64)


def _llava():
    vis = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
               intermediate_size=64, image_size=32, patch_size=8,
               model_type="clip_vision_model")
    cfg = transformers.LlavaConfig(text_config=dict(TEXT, model_type="llama"),
                                   vision_config=vis, image_token_id=110,
                                   vision_feature_layer=-1)
    return transformers.LlavaForConditionalGeneration(cfg).eval()


def test_llava_gets_one_image_and_as_many_image_tokens_as_it_makes_features():
    torch.manual_seed(0)
    model = _llava()
    seen = []

    def run(m, x):
        seen.append(x)
        with torch.no_grad():
            return m(**x)

    x = image_text_inputs(model, torch.Generator().manual_seed(0), run)
    assert set(x) == {"input_ids", "pixel_values"} and x["pixel_values"].shape == (1, 3, 32, 32)
    # 16 patches of a 32x32 image: counted by its get_image_features, right the first time
    assert int((x["input_ids"] == 110).sum()) == 16 and x["input_ids"].shape == (1, 20)
    assert len(seen) == 1
    again = image_text_inputs(model, torch.Generator().manual_seed(0))
    assert all(torch.equal(x[k], again[k]) for k in x)  # (seeded: an export reloads them)


def test_qwen2_vl_gets_flattened_patches_on_a_grid_and_its_token_types():
    torch.manual_seed(0)
    vis = dict(embed_dim=32, hidden_size=32, depth=1, num_heads=4, mlp_ratio=2, patch_size=8,
               temporal_patch_size=2, spatial_merge_size=2)
    rope = dict(rope_type="default", rope_theta=1e4, mrope_section=[2, 1, 1])
    cfg = transformers.Qwen2VLConfig(text_config=dict(TEXT, rope_parameters=rope),
                                     vision_config=vis, image_token_id=110)
    model = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    x = image_text_inputs(model, torch.Generator().manual_seed(0))
    # 4 x 4 patches of 3 x 2 x 8 x 8 numbers, merged 2 x 2: 4 image tokens
    assert x["pixel_values"].shape == (16, 384) and x["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((x["input_ids"] == 110).sum()) == 4
    assert torch.equal(x["mm_token_type_ids"], (x["input_ids"] == 110).long())


def test_counts_from_hugging_face_errors():
    assert _recount(576, 576, 16, 32) == 16  # tokens and features in one unit
    assert _recount(512, 512, 512, 32) == 16  # features counted in numbers (LLaVA)
    assert _recount(16, 512, 512, 32) is None  # (16 tokens of 32 numbers each, right)
    assert _recount(16, 16, 16, 32) is None  # the same count: nothing to change


def test_a_model_that_runs_on_no_image_says_why_and_a_text_model_wants_none():
    torch.manual_seed(0)
    model = _llava()

    def refuse(_m, _x):
        raise RuntimeError("the vision tower is broken\nmore")

    with pytest.raises(NoImageInputsError, match="^RuntimeError: the vision tower is broken$"):
        image_text_inputs(model, torch.Generator(), refuse)
    text = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TEXT)).eval()
    assert wants_image(model) and not wants_image(text)
    with pytest.raises(NoImageInputsError, match="reads no image"):
        image_text_inputs(text, torch.Generator())


def test_gemma4_gets_patches_with_their_places():
    torch.manual_seed(0)
    vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
               num_attention_heads=4, num_key_value_heads=4, head_dim=8, image_size=32,
               patch_size=8)
    cfg = transformers.AutoConfig.for_model("gemma4", text_config=TEXT, vision_config=vis,
                                            image_token_id=110)
    model = transformers.AutoModelForImageTextToText.from_config(cfg).eval()
    x = image_text_inputs(model, torch.Generator().manual_seed(0))
    k = cfg.vision_config.pooling_kernel_size  # (3: 3 x 3 patches pool to one token)
    assert x["pixel_values"].shape == (1, 4 * k * k, 3 * 8 * 8)
    assert x["image_position_ids"][0, :3].tolist() == [[0, 0], [1, 0], [2, 0]]
    assert int((x["input_ids"] == 110).sum()) == 4


def test_instructblip_gets_text_for_its_q_former_too():
    torch.manual_seed(0)
    cfg = transformers.InstructBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, encoder_hidden_size=32, vocab_size=120),
        text_config=dict(TEXT, model_type="llama"), num_query_tokens=4, image_token_index=110)
    model = transformers.InstructBlipForConditionalGeneration(cfg).eval()
    x = image_text_inputs(model, torch.Generator().manual_seed(0))
    assert x["qformer_input_ids"].shape == (1, 4) and int((x["input_ids"] == 110).sum()) == 4


def test_flattened_patches_take_the_width_their_patch_embedding_reads():
    # Cosmos 3 edge's (and ERNIE 4.5 VL's) patches have no frames: 3 x 8 x 8 numbers, not
    # the 2 x 3 x 8 x 8 its config's temporal_patch_size says; torch's error names the width
    from types import SimpleNamespace

    class Grid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            vision = SimpleNamespace(patch_size=8, temporal_patch_size=2, spatial_merge_size=2,
                                     in_channels=3)
            self.config = SimpleNamespace(image_token_id=7, vision_config=vision)
            self.embed = torch.nn.Linear(3 * 8 * 8, 4)

        def forward(self, input_ids, pixel_values, image_grid_thw):
            features = self.embed(pixel_values).reshape(-1, 16)  # 2 x 2 patches to a token
            tokens = int((input_ids == 7).sum())
            if tokens != len(features):  # (as Hugging Face says it)
                raise ValueError(f"Image features and image tokens do not match, tokens: "
                                 f"{tokens}, features: {len(features)}")
            return features

    x = image_text_inputs(Grid().eval(), torch.Generator().manual_seed(0))
    assert x["pixel_values"].shape == (16, 192) and int((x["input_ids"] == 7).sum()) == 4
