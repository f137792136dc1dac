"""Every model type of the installed ``transformers`` for a task (causal LM by default), each
from one small config (not a test): a regression check for changes to grouping and
validation.

Run from the repository root (needs ``transformers``; nothing is downloaded)::

    python benchmarks/type_sweep.py --json after.json                 # every causal LM (~7 min)
    python benchmarks/type_sweep.py --types llama,falcon,inkling_text   # some of them
    python benchmarks/type_sweep.py --task image-classification       # another auto class
    python benchmarks/type_sweep.py --task object-detection           # (also semantic-
                                  # segmentation, depth-estimation, video-classification)
    python benchmarks/type_sweep.py --task image-text-to-text         # VLMs, with an image
    python benchmarks/type_sweep.py --json after.json --compare before.json

Each type in the task's mapping (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, ...) is built with
``AutoConfig.for_model(type, **SMALL)`` plus the task's keys, or with its own small config
where it takes other keys (``OWN``: lists per stage, sub-configs), random weights; run on
its main input (8 token ids, and 4 decoder ids for an encoder-decoder; a 3x32x32 image; the
audio DepView guesses for a model directory), its groups validated, pruned at 0.5 with L1
and verified. A row has the groups, the prunable ones, the units removed, the parameters
after and masked equivalence's verdict (``ok``; ``exact ok``: the exact groups alone, when
an inexact one was pruned; ``skip``; ``FAILED``); or the first line of the error. Some types
do not build from a generic config (sizes it leaves at their large defaults, checks it
fails): those rows are errors of the config, the same on every commit. ``--compare`` prints
the types whose rows differ from an earlier ``--json`` file: run it before and after a
change. The process's address space is limited (``--limit-gb``, default 8): a type whose
defaults are huge fails to allocate instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import logging
import os
import resource
import signal
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: one config for every architecture (the keys a type does not know are ignored or kept)
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=120, max_position_embeddings=64, head_dim=8)
SEQ2SEQ = dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, encoder_layers=2,
               decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
               encoder_ffn_dim=64, decoder_ffn_dim=64)
#: vision-language models: a small vision tower beside a small text model (their defaults
#: are full-size towers, over the sweep's memory limit). Built for causal LM, their token
#: ids hold no image token, so the tower is built but not run; the image-text-to-text task
#: gives them an image
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, vocab_size=120, max_position_embeddings=64)

#: a speech encoder's sub-config (Whisper-style keys, and the others' names for the same sizes)
AUDIO = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
             hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, head_dim=8)

#: the task's mapping of model types (in transformers' modeling_auto), its Auto class, and
#: what its config adds to SMALL
TASKS = {
    "causal-lm": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM", {}),
    "masked-lm": ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM", {}),
    "seq2seq-lm": ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM",
                   SEQ2SEQ),
    "image-classification": ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
                             "AutoModelForImageClassification",
                             dict(image_size=32, patch_size=8, num_channels=3, num_labels=10)),
    "audio-classification": ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
                             "AutoModelForAudioClassification", dict(num_labels=10)),
    "semantic-segmentation": ("MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
                              "AutoModelForSemanticSegmentation",
                              dict(image_size=32, patch_size=8, num_channels=3, num_labels=10)),
    "depth-estimation": ("MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
                         "AutoModelForDepthEstimation",
                         dict(image_size=32, patch_size=8, num_channels=3)),
    # vision-language models given an image (its tokens in the ids, see vlm_inputs): a small
    # vision tower and text model, the image token inside the small vocabulary
    "image-text-to-text": ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
                           "AutoModelForImageTextToText",
                           dict(vision_config=VISION, text_config=TEXT, image_token_id=110,
                                image_token_index=110, projection_dim=32)),
    "video-classification": ("MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES",
                             "AutoModelForVideoClassification",
                             dict(image_size=32, crop_size=32, patch_size=8, num_frames=4,
                                  frames_per_clip=4, tubelet_size=2, num_labels=10)),
    "zero-shot-image-classification": ("MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES",
                                       "AutoModel",
                                       dict(vision_config=VISION, text_config=TEXT,
                                            projection_dim=32)),
    "speech-seq2seq": ("MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "AutoModelForSpeechSeq2Seq",
                       dict(SEQ2SEQ, num_mel_bins=16, max_source_positions=32,
                            max_target_positions=64)),
    "time-series-classification": ("MODEL_FOR_TIME_SERIES_CLASSIFICATION_MAPPING_NAMES", None,
                                   dict(context_length=32, patch_length=8, patch_stride=8,
                                        num_input_channels=3, d_model=32, ffn_dim=64,
                                        num_layers=2, num_targets=10)),
    "image-to-image": ("MODEL_FOR_IMAGE_TO_IMAGE_MAPPING_NAMES", "AutoModelForImageToImage",
                       dict(image_size=32)),
    "object-detection": ("MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
                         "AutoModelForObjectDetection",
                         dict(image_size=32, patch_size=8, num_channels=3, num_labels=10,
                              d_model=32, encoder_layers=1, decoder_layers=1,
                              encoder_attention_heads=4, decoder_attention_heads=4,
                              encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10)),
}

#: multi-head latent attention (DeepSeek-V2/V3 and kin): small ranks and rope dims, a few
#: small experts; ``head_dim`` is the rope part's, as their configs set it
MLA = dict(SMALL, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
           v_head_dim=8, head_dim=4, n_routed_experts=4, num_experts_per_tok=2,
           moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
           topk_group=1)

#: hybrid linear- and full-attention decoders (Qwen3-Next, Qwen3.5, Kimi Linear, Ling): one
#: layer of each, small linear-attention heads
HYBRID = dict(layer_types=["linear_attention", "full_attention"], linear_num_value_heads=4,
              linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8)

#: a small ResNet backbone given as a sub-config (not timm's, which is not installed)
RESNET = dict(model_type="resnet", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
              depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage4"])
#: DETR and kin: the ResNet above, one encoder and one decoder layer, 10 queries
DETR = dict(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=RESNET,
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10)
#: RT-DETR (v1, v2) on its own small ResNet, three feature levels; v2 with two decoder layers
#: (with one, its config ties the box heads of layers that do not exist)
RT_DETR = dict(backbone_config=dict(RESNET, model_type="rt_detr_resnet",
                                    out_features=["stage2", "stage3", "stage4"]),
               use_pretrained_backbone=False, d_model=32, encoder_hidden_dim=32,
               encoder_in_channels=[32, 64, 128], decoder_in_channels=[32, 32, 32],
               encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=1, decoder_layers=1,
               encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10,
               decoder_n_points=2, hidden_expansion=0.5)
#: D-FINE and DEIMv2 on a small HGNetV2, two decoder layers, 10 queries; a 64x64 image (the
#: queries are chosen among the anchors of its feature levels: 84 there). The generic keys
#: make their configs fail a layer-type check
HGNET = dict(model_type="hgnet_v2", stem_channels=[3, 16, 16], embedding_size=16,
             stage_in_channels=[16, 32, 64, 128], stage_mid_channels=[16, 16, 32, 32],
             stage_out_channels=[32, 64, 128, 128], stage_num_blocks=[1, 1, 1, 1],
             stage_numb_of_layers=[2, 2, 2, 2], hidden_sizes=[32, 64, 128, 128],
             depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"])
D_FINE = dict(backbone_config=HGNET, encoder_in_channels=[64, 128, 128], encoder_hidden_dim=32,
              encoder_ffn_dim=64, encoder_attention_heads=4, d_model=32, num_queries=10,
              decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, decoder_layers=2,
              decoder_attention_heads=4, decoder_n_points=2, lqe_hidden_dim=16, num_labels=10,
              image_size=64)
#: PP-DocLayout V2 (a small reading-order encoder) and V3 (four feature levels: its masks read
#: the first), on D-FINE's small sizes, each class with a threshold
PP_DOCLAYOUT = dict({k: v for k, v in D_FINE.items() if k != "lqe_hidden_dim"},
                    class_thresholds=[0.5] * 10, class_order=list(range(10)),
                    global_pointer_head_size=16)
#: the PP-OCRv5 server detector's intra-class blocks (their config has no default): 1x1
#: convs around 7/5/3-long vertical, horizontal and square kernels that keep the size
INTRACLASS = dict(reduce_channel=[1, 1, 0], return_channel=[1, 1, 0], **{
    f"{shape}_{kind}ratio": [k, 1, p] for kind, n in (("long", 7), ("mid", 5), ("short", 3))
    for shape, k, p in (("vertical_long_to_small_conv", [n, 1], [n // 2, 0]),
                        ("horizontal_small_to_long_conv", [1, n], [0, n // 2]),
                        ("symmetric_conv_long", [n, n], [n // 2, n // 2]))})
#: LW-DETR and RF-DETR: a windowed ViT (DINOv2 for RF-DETR) of 4 layers at 64x64, its 8x8
#: patches in 2x2 windows; their default configs leave the projector empty (LW-DETR) or
#: want a 560x560 image (RF-DETR: both prune at their defaults too, by hand)
WINDOWED = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=64,
                patch_size=8, out_features=["stage1", "stage2", "stage3", "stage4"])
XDETR = dict(d_model=32, decoder_ffn_dim=64, decoder_layers=2, decoder_self_attention_heads=4,
             decoder_cross_attention_heads=4, decoder_n_points=2, num_queries=10, group_detr=2,
             num_labels=10, image_size=64)
#: a ViT of 4 layers, each of whose outputs a dense-prediction neck reads
VIT4 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            image_size=32, patch_size=8)

#: Depth Anything (and its prompted kin) on the ViT above as a DINOv2 backbone
DEPTH_ANYTHING = dict(backbone_config=dict(VIT4, model_type="dinov2",
                                            out_indices=[1, 2, 3, 4],
                                            reshape_hidden_states=False),
                       reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 32, 32],
                       fusion_hidden_size=16, head_hidden_size=16, patch_size=8)

#: types whose config takes other keys (lists per stage, a sub-config): their own small
#: config, in place of SMALL and the task's keys
OWN = {
    **{t: DETR for t in ("detr", "conditional_detr", "dab-detr", "table-transformer")},
    "rt_detr": RT_DETR,
    "rt_detr_v2": dict(RT_DETR, decoder_layers=2),
    "d_fine": D_FINE,
    "deimv2": D_FINE,
    "pp_doclayout_v2": dict(PP_DOCLAYOUT, reading_order_config=dict(
        hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
        coordinate_size=11, shape_size=10, num_classes=10)),
    "pp_doclayout_v3": dict(PP_DOCLAYOUT, backbone_config=dict(
        HGNET, out_features=["stage1", "stage2", "stage3", "stage4"]), x4_feat_dim=32,
        mask_feature_channels=[16, 16], num_prototypes=8),
    "pp_ocrv5_server_det": dict(intraclass_block_config=INTRACLASS,
                                scale_factor_list=[1, 2, 4, 8], kernel_list=[3, 2, 2],
                                image_size=64),
    "lw_detr": dict(XDETR, backbone_config=dict(
        WINDOWED, model_type="lw_detr_vit", pretrain_image_size=64, window_block_indices=[0, 2],
        num_windows=4, num_windows_side=2), projector_scale_factors=[1.0],
        projector_in_channels=[32, 32, 32, 32], projector_out_channels=32, num_feature_levels=1),
    "rf_detr": dict(XDETR, backbone_config=dict(
        WINDOWED, model_type="rf_detr_dinov2", num_windows=2, window_block_indexes=[0, 2]),
        intermediate_size=64),
    # (three feature levels; a 64x64 image, as GroupNorm needs more than one value per
    # channel at the smallest)
    "deformable_detr": dict(DETR, backbone_config=dict(RESNET, out_features=[
        "stage2", "stage3", "stage4"]), decoder_layers=2, encoder_n_points=2,
        decoder_n_points=2, num_feature_levels=3, image_size=64),
    "yolos": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=[32, 32], patch_size=8,
                  num_detection_tokens=5),
    "dpt": dict(VIT4, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 32, 32],
                fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], head_hidden_size=16,
                use_auxiliary_head=False),
    "glpn": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                 num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
                 mlp_ratios=[2, 2], decoder_hidden_size=16),
    **{t: DEPTH_ANYTHING for t in ("depth_anything", "prompt_depth_anything")},
    # (its patches are crops of the image, 16x16 of a 64x64 one, each read by a small DINOv2)
    "depth_pro": dict(patch_size=16, image_size=64, intermediate_hook_ids=[3, 1],
                      intermediate_feature_dims=[16, 16], scaled_images_feature_dims=[32, 32, 16],
                      fusion_hidden_size=16, **{f"{k}_model_config": dict(
                          VIT4, model_type="dinov2", image_size=16, patch_size=4)
                          for k in ("image", "patch", "fov")}),
    "bit": dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                num_groups=8),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                   groups_width=8),
    "convnext": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
    "convnextv2": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
    "swin": dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                 window_size=4),
    "swinv2": dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                   num_heads=[2, 4], window_size=4),
    "donut-swin": dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                       num_heads=[2, 4], window_size=4),
    "hiera": dict(image_size=[64, 64], embed_dim=16, depths=[1, 1, 1, 1],
                  num_heads=[1, 2, 4, 8], num_query_pool=2),
    "levit": dict(image_size=32, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4],
                  depths=[1, 1, 1], key_dim=[8, 8, 8]),
    "pvt": dict(image_size=32, num_encoder_blocks=2, depths=[1, 1],
                sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32],
                num_attention_heads=[1, 2], patch_sizes=[4, 2],
                strides=[4, 2], mlp_ratios=[2, 2]),
    "pvt_v2": dict(image_size=32, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                   hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                   strides=[4, 2], mlp_ratios=[2, 2]),
    "segformer": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                      hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                      strides=[4, 2], mlp_ratios=[2, 2]),
    "mobilevitv2": dict(image_size=64),
    "esm": dict(SMALL, pad_token_id=1),
    "eurobert": dict(SMALL, pad_token_id=0),
    "modernbert": dict(SMALL, pad_token_id=0),
    "mobilebert": dict(SMALL, embedding_size=32, intra_bottleneck_size=32),
    "squeezebert": dict(SMALL, embedding_size=32),
    "funnel": {**{k: v for k, v in SMALL.items() if k != "num_hidden_layers"},
               "block_sizes": [1, 1], "num_decoder_layers": 1},
    "marian": dict(SMALL, **SEQ2SEQ, pad_token_id=0, decoder_start_token_id=0),
    # (its decoder's layers and sparse layers have defaults of their own: 12, 3)
    "switch_transformers": dict(SMALL, **SEQ2SEQ, num_decoder_layers=2,
                                num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
                                num_experts=4),
    # (axial position embeddings whose factors make hidden_size and the length; chunks no
    # longer than the 8 tokens)
    "reformer": dict(hidden_size=32, num_attention_heads=4, attention_head_size=8,
                     feed_forward_size=64, vocab_size=120, axial_pos_embds_dim=[16, 16],
                     axial_pos_shape=[8, 8], max_position_embeddings=64,
                     attn_layers=["local", "lsh"], local_attn_chunk_length=4,
                     lsh_attn_chunk_length=4, num_buckets=2),
    **{t: MLA for t in ("deepseek_v2", "deepseek_v3", "glm4_moe_lite", "longcat_flash",
                        "minicpm3", "sarvam_mla", "youtu", "axk1")},
    # (a rotary part wider than the heads by default)
    **{t: dict(SMALL, rotary_dim=4) for t in ("codegen", "gptj")},
    # (one global and one local attention layer: its list of types is per pair of layers)
    "gpt_neo": dict(SMALL, attention_types=[[["global", "local"], 1]], num_layers=2),
    # state-space mixers: heads x head dim = expand x hidden size, one group, a small state
    "mamba2": dict(SMALL, num_heads=8, head_dim=8, n_groups=1, state_size=8),
    **{t: dict(SMALL, mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8,
               **kw) for t, kw in (("bamba", dict(attn_layer_indices=[1])),
                                   ("granitemoehybrid", dict(layer_types=["mamba",
                                                                          "attention"])))},
    "zamba2": dict(SMALL, layers_block_type=["mamba", "hybrid"], mamba_d_state=8,
                   mamba_headdim=8, n_mamba_heads=8, mamba_ngroups=1, num_mem_blocks=1),
    "jamba": dict(SMALL, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                  expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=4, num_experts=4),
    "recurrent_gemma": dict(SMALL, block_types=["recurrent", "attention"], lru_width=32,
                            attention_window_size=8),
    "gemma3": dict(vision_config=VISION, text_config=TEXT, mm_tokens_per_image=4),
    # (4 layers, the last 2 sharing the first 2's keys and values; small per-layer inputs,
    # LAuReL and AltUp; no activation sparsity)
    "gemma3n_text": dict(SMALL, num_hidden_layers=4, layer_types=["sliding_attention",
                                                                  "full_attention"] * 2,
                         num_kv_shared_layers=2, hidden_size_per_layer_input=8,
                         vocab_size_per_layer_input=120, laurel_rank=4,
                         activation_sparsity_pattern=[0.0] * 4, altup_num_inputs=2,
                         intermediate_size=[64] * 4),
    # (its expert count has no default: the router's weight could not be made)
    "dots1": dict(SMALL, n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=16,
                  num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1),
    "lfm2_moe": dict(SMALL, layer_types=["conv", "full_attention"], num_dense_layers=1,
                     num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    "llama4": dict(vision_config=dict(VISION, vision_output_dim=32, projector_input_dim=32,
                                      projector_output_dim=32),
                   text_config=dict(TEXT, intermediate_size_mlp=64, num_local_experts=2)),
    "mllama": dict(vision_config=dict(VISION, num_global_layers=1, intermediate_layers_indices=[0],
                                      vision_output_dim=64),
                   text_config=dict(TEXT, cross_attention_layers=[1], pad_token_id=0)),
    "qwen3_5": dict(vision_config=dict(VISION, depth=2, out_hidden_size=32),
                    text_config=dict(TEXT, **HYBRID)),
    # (its attention and experts take sub-configs; qkv clipping left unset fails a clamp)
    "dbrx": dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=120,
                 attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(ffn_hidden_size=64, moe_num_experts=4, moe_top_k=2)),
    # encoder-decoders of two Gemma configs (T5Gemma 2's encoder also reads images)
    "t5gemma": dict(encoder=dict(TEXT, pad_token_id=0), decoder=dict(TEXT, pad_token_id=0),
                    vocab_size=120, pad_token_id=0),
    "t5gemma2": dict(encoder=dict(text_config=dict(TEXT, pad_token_id=0), vision_config=VISION,
                                  mm_tokens_per_image=4),
                     decoder=dict(TEXT, pad_token_id=0), vocab_size=120, pad_token_id=0),
    # speech LLMs built for seq2seq LM: a small audio encoder beside a small text model (built
    # but not run: the sweep gives token ids only)
    **{t: dict(audio_config=AUDIO, text_config=dict(TEXT, pad_token_id=0))
       for t in ("qwen2_audio", "voxtral", "audioflamingo3", "glmasr", "qwen3_asr",
                 "omniasr")},
    # hybrids of linear and full attention: with two layers, both were linear, and the causal
    # mask of the full-attention layers they build found no such layer
    "qwen3_5_text": dict(SMALL, **HYBRID),
    **{t: dict(SMALL, **HYBRID, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
               shared_expert_intermediate_size=16) for t in ("qwen3_5_moe_text", "qwen3_next")},
    **{t: dict(MLA, **HYBRID, pad_token_id=0, mlp_layer_types=["dense", "sparse"],
               num_experts=4, num_experts_per_token=2, linear_head_dim=8, linear_num_heads=4,
               **kw)
       for t, kw in (("kimi_linear", {}),
                     ("bailing_hybrid", dict(layer_group_size=2, num_expert_group=1,
                                             expert_swiglu_limit_list=[0, 0],
                                             share_expert_swiglu_limit_list=[0, 0],
                                             num_nextn_predict_layers=0)))},
    # (heads per stage: num_attention_heads would set them all to one int)
    "swin2sr": dict(image_size=32, patch_size=1, embed_dim=32, depths=[2, 2], num_heads=[4, 4],
                    window_size=4, mlp_ratio=2.0),
    # (its config refuses num_hidden_layers, which num_layers sets)
    "prophetnet": dict(hidden_size=32, vocab_size=120, max_position_embeddings=64,
                       encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
                       decoder_attention_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                       ngram=2),
    **{t: dict(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=32, patch_size=8),
               text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, vocab_size=120))
       for t in ("clip", "metaclip_2", "siglip")},
}

#: vision-language models on a patch grid (their forward takes ``image_grid_thw``): a small
#: vision tower under each of their names for its sizes, its merger's output the text
#: model's width, and a multimodal RoPE that fits the text model's 8-wide heads
GRID = dict(vision_config=dict(VISION, embed_dim=32, depth=2, num_heads=4, out_hidden_size=32,
                               mlp_ratio=2, temporal_patch_size=2, spatial_merge_size=2,
                               deepstack_visual_indexes=[1]),
            text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=1e4,
                                                        mrope_section=[2, 1, 1],
                                                        mrope_interleaved=True)))

#: what a type's config needs for one task only
TASK_OWN = {
    # (the UPerNet head reads 4 layers' outputs)
    **{(t, "semantic-segmentation"): dict(VIT4, out_indices=[1, 2, 3, 4],
                                          use_auxiliary_head=False, pool_scales=[1, 2])
       for t in ("beit", "data2vec-vision")},
    ("reformer", "causal-lm"): dict(is_decoder=True),
    # (one tile of one aspect ratio; its cross-attention layer among the two; a pad id of
    # the full-size vocabulary otherwise)
    ("mllama", "image-text-to-text"): dict(
        image_token_index=110,
        vision_config=dict(VISION, max_num_tiles=1, supported_aspect_ratios=[[1, 1]],
                           intermediate_layers_indices=[1], num_global_layers=1,
                           vision_output_dim=64),
        text_config=dict(TEXT, cross_attention_layers=[1], pad_token_id=0)),
    # (their own configs above, for causal LMs, keep the full-size vocabulary's image token)
    ("qwen3_5", "image-text-to-text"): dict(image_token_id=110),
    # (and Llama 4's pixel shuffle makes 4 x 32 wide tokens, which its adapter's MLP reads
    # at the vision tower's intermediate size)
    ("llama4", "image-text-to-text"): dict(
        image_token_index=110, vision_config=dict(OWN["llama4"]["vision_config"],
                                                  intermediate_size=128)),
    ("qwen3_5_moe", "image-text-to-text"): dict(text_config=dict(
        GRID["text_config"], **HYBRID, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, shared_expert_intermediate_size=16)),
    # (its image and audio embedders, not run on token ids, otherwise keep their defaults:
    # 870M parameters, at the edge of the 8 GB limit)
    ("phi4_multimodal", "causal-lm"): dict(
        SMALL, pad_token_id=0, vision_config=VISION,
        audio_config=dict(hidden_size=32, intermediate_size=64, num_blocks=2,
                          num_attention_heads=4, ext_pw_out_channel=32,
                          depthwise_separable_out_channel=32, nemo_conv_channels=32)),
    # (their audio encoders, not run here, otherwise keep their 640M-parameter defaults)
    **{(t, "image-text-to-text"): dict(audio_config=dict(AUDIO, output_dim=32))
       for t in ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker")},
    # (its vision attention's kv heads and head size have defaults of their own)
    ("gemma4", "image-text-to-text"): dict(vision_config=dict(VISION, num_key_value_heads=4,
                                                              head_dim=8)),
    # (an image's grid of patches: the one 32x32 resolution, not the 336-pixel defaults)
    **{(t, "image-text-to-text"): dict(image_grid_pinpoints=[[32, 32]])
       for t in ("llava_next", "llava_next_video", "llava_onevision")},
    # (their speech encoder reads stacked frames, as wav2vec2-BERT's: no Whisper spectrogram)
    **{(t, "speech-seq2seq"): dict(num_mel_bins=None) for t in ("seamless_m4t",
                                                                "seamless_m4t_v2")},
    # (a tubelet's frames, height and width; VideoPrism's temporal embeddings take one a frame)
    ("vivit", "video-classification"): dict(tubelet_size=[2, 8, 8]),
    ("videoprism_vision_model", "video-classification"): dict(tubelet_size=[1, 8, 8]),
    # (its head's sizes have no defaults)
    ("sapiens2", "semantic-segmentation"): dict(head_config=dict(upsample_out_channels=[16, 16],
                                                                 conv_out_channels=[16])),
    # (the decoder of an encoder-decoder: its layer count is decoder_layers, 12 by default)
    **{(t, "causal-lm"): SEQ2SEQ for t in ("bart", "bigbird_pegasus", "blenderbot",
                                           "blenderbot-small", "mbart", "mvp", "pegasus",
                                           "plbart", "whisper")},
    # (its latents otherwise keep their defaults, 256 x 1280 in 26 self-attention layers:
    # minutes a type; its image classifier's preprocessor makes d_model 512)
    ("perceiver", "masked-lm"): dict(num_latents=16, d_latents=32, d_model=32, num_blocks=1,
                                     num_self_attends_per_block=2, num_self_attention_heads=4,
                                     num_cross_attention_heads=4),
    ("perceiver", "image-classification"): dict(num_latents=16, d_latents=32, d_model=512,
                                                num_blocks=1, num_self_attends_per_block=2,
                                                num_self_attention_heads=4,
                                                num_cross_attention_heads=4),
}


def text_image_inputs(model, torch) -> dict:
    """8 token ids and one image of the vision tower's size (noise): a CLIP-style model
    scores the image against the text."""
    from viewer.core.spec import _image_input

    image = _image_input(model.config, any_size=True)
    return {"input_ids": torch.randint(3, 100, (1, 8)), image[0]: torch.randn(image[1])}


def vlm_inputs(model, torch) -> dict:
    """Token ids with one image's tokens in them, and the image, as DepView makes them for a
    vision-language model directory given no inputs (:mod:`viewer.core.vlminputs`)."""
    from viewer.core.vlminputs import NoImageInputsError, image_text_inputs

    try:
        return image_text_inputs(model, torch.Generator().manual_seed(0))
    except NoImageInputsError as exc:
        raise ValueError(f"no image it runs on: {exc}") from None


def example_inputs(model, torch) -> dict:
    """Inputs for the model's main input name: 8 token ids (and 4 decoder ids for an
    encoder-decoder), a 3x32x32 image (the config's size when it has a small one), or the
    audio DepView guesses for a model directory (one second at 16 kHz, or a spectrogram
    where the model reads one)."""
    cfg, name = model.config, model.main_input_name
    if name == "input_ids" or name == "inputs" and "MaskedLM" in type(model).__name__:
        x = {name: torch.randint(3, 100, (1, 8))}  # ("inputs": Perceiver's)
        if cfg.is_encoder_decoder:
            x["decoder_input_ids"] = torch.randint(3, 100, (1, 4))
        return x
    from viewer.core.spec import _hf_input_candidates, _video_input

    if name in ("pixel_values", "pixel_values_videos") and (video := _video_input(cfg, name)):
        return {name: torch.randn(video[1])}  # one clip, as DepView guesses for a directory
    if name in ("pixel_values", "inputs"):  # ("inputs": Perceiver's)
        size = getattr(cfg, "image_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        size = size if isinstance(size, int) and size <= 64 else 32
        return {name: torch.randn(1, getattr(cfg, "num_channels", 3), size, size)}
    # audio and time series: what DepView guesses for a model directory given no inputs
    first = next(iter(_hf_input_candidates(model)), None)
    if name in ("input_values", "input_features", "past_values") and first:
        return {n: torch.randint(3, 100, shape) if dtype == "int64" else torch.randn(shape)
                for n, shape, dtype in first}  # (decoder ids: an encoder-decoder's)
    raise ValueError(f"no example inputs for main input {name!r}")


class _TimeoutError(BaseException):
    """A type's time is up. Not an Exception: validation takes a probe's exception for the
    probe's failure and goes on with the next probe."""


def _verdict(verification: dict) -> str:
    from viewer.core.verify import masked_note

    if masked_note(verification):  # (what makes prune and check exit 1)
        return "FAILED"
    me = verification.get("masked_equivalence") or {}
    return "ok" if me.get("ok") else \
        "exact ok" if (me.get("exact_groups") or {}).get("ok") else "skip"


def run_one(model_type: str, tf, torch, seconds: int, task: str = "causal-lm",
            free: tuple[str, ...] = ()) -> dict:
    from transformers.models.auto import modeling_auto

    from viewer.core.errors import DepViewError
    from viewer.core.prune import Pruner

    row: dict = {}
    late = []
    stage = "config"  # where it stopped: the sweep's config, its inputs, or DepView

    def alarm(*_args):
        late.append(True)
        raise _TimeoutError

    # once late, again every second: a raise that lands where torch's C++ dispatch turns it
    # into something a caller swallows (seen with Perceiver: it ran on for minutes) is
    # raised again until it gets out
    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        mapping, auto, extra = TASKS[task]
        small = OWN[model_type] if model_type in OWN else {**SMALL, **extra}
        classes = getattr(modeling_auto, mapping)[model_type]
        if task == "image-text-to-text" and "image_grid_thw" in inspect.signature(getattr(
                tf, classes[0] if isinstance(classes, tuple) else classes).forward).parameters:
            # (a type's own sub-config keys win: Qwen3.5's hybrid text layers)
            small = {**small, **{k: {**v, **small.get(k, {})} for k, v in GRID.items()}}
        # (a copy: a config may write into the sub-config dicts it is given, and those are
        # shared: Qwen3-VL's left its vision model type in VISION for Gemma 3 after it)
        small = copy.deepcopy({**small, **TASK_OWN.get((model_type, task), {})})
        try:
            cfg = tf.AutoConfig.for_model(model_type, **small)
        except Exception:  # noqa: BLE001 (head_dim a property: Falcon, ...)
            cfg = tf.AutoConfig.for_model(model_type, **{k: v for k, v in small.items()
                                                         if k != "head_dim"})
        if getattr(cfg, "num_labels", 10) != 10:
            cfg.num_labels = 10
        if isinstance(classes, tuple) and not cfg.architectures:  # (from_config needs one)
            cfg.architectures = [classes[0]]

        def build(cfg):  # (no auto class for time series: the mapping's class itself)
            return (getattr(tf, auto).from_config(cfg) if auto else
                    getattr(tf, classes)(cfg)).eval()

        torch.manual_seed(0)
        try:
            model = build(cfg)
        except AssertionError as exc:  # a pad id of the full-size vocabulary
            if "Padding_idx" not in str(exc):
                raise
            cfg.pad_token_id = 0
            torch.manual_seed(0)
            model = build(cfg)
        if getattr(cfg, "languages", None) and hasattr(model, "set_default_language"):
            model.set_default_language(cfg.languages[0])  # (X-MOD's adapters: one language)
        stage = "inputs"  # (a plain forward: these fail without DepView)
        inputs = vlm_inputs(model, torch) if task == "image-text-to-text" else \
            text_image_inputs(model, torch) if task == "zero-shot-image-classification" else \
            example_inputs(model, torch)
        if task != "image-text-to-text":  # (that task's inputs were found by running it)
            with torch.no_grad():
                model(**inputs)
        stage = "DepView"
        try:
            p = Pruner(model, inputs, free_outputs=free)
        except DepViewError as exc:  # (a type without those outputs: none free)
            if "is not an output" not in str(exc):
                raise
            p = Pruner(model, inputs)
        p.validate_groups()
        row["groups"] = len(p.groups)
        row["prunable"] = sum(1 for g in p.groups if not p.reason(g))
        plan = p.plan(0.5)
        row["removed"] = sum(len(v) for v in plan.removed.values())
        pruned = p.apply(plan)
        row["masked"] = _verdict(p.verify(pruned, plan))
        row["params"] = sum(t.numel() for t in pruned.parameters())
    except _TimeoutError:
        row["error"] = f"timeout after {seconds} s"
    except Exception as exc:  # noqa: BLE001 (a row says what went wrong; the sweep goes on)
        from viewer.core.memory import out_of_memory

        first = (str(exc).strip().splitlines() or [""])[0]
        # (the size that failed varies from run to run: not a change to compare)
        short = any(out_of_memory(e) for e in (exc, exc.__cause__) if e is not None)
        row["error"] = "out of memory under the address limit" if short else \
            f"{type(exc).__name__}: {first[:160]}"
        row["stage"] = stage
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if late:  # (whatever it finished with ran past a swallowed timeout)
        row = {"error": f"timeout after {seconds} s", "stage": stage}
    return row


def _line(name: str, row: dict) -> str:
    if "error" in row:
        where = f" ({row['stage']})" if "stage" in row else ""
        return f"{name:<28} error{where}: {row['error']}"
    return (f"{name:<28} groups {row['prunable']:>3}/{row['groups']:<3} removed "
            f"{row['removed']:>6}  params after {row['params']:>10,}  masked {row['masked']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="causal-lm",
                    help="which auto class's model types (default: causal-lm)")
    ap.add_argument("--types", help="comma-separated model types (default: every one)")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--compare", help="an earlier --json file: print the rows that differ")
    ap.add_argument("--limit-gb", type=int, default=8, help="address-space limit (0: none)")
    ap.add_argument("--free-output", action="append", default=[], metavar="NAME",
                    help="an output whose width may change, where a type has it (as "
                         "prune's --free-output)")
    ap.add_argument("--seconds", type=int, default=300,
                    help="time limit per type (a type still running then is a timeout row)")
    args = ap.parse_args(argv)
    if args.limit_gb:
        resource.setrlimit(resource.RLIMIT_AS, (args.limit_gb << 30, args.limit_gb << 30))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    import transformers as tf
    from transformers.models.auto import modeling_auto

    known = sorted(getattr(modeling_auto, TASKS[args.task][0]))
    types = known if not args.types else args.types.split(",")
    unknown = [t for t in types if t not in known]
    if unknown:
        print(f"error: unknown model type(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    before = json.loads(Path(args.compare).read_text()) if args.compare else None
    print(f"transformers {tf.__version__}, torch {torch.__version__}, {len(types)} types",
          flush=True)
    rows = {}
    for name in types:
        rows[name] = run_one(name, tf, torch, args.seconds, args.task, tuple(args.free_output))
        # (what a failed type left in reference cycles: after the speech types that ran out
        # of memory building, Whisper's first convolution could not get its oneDNN buffers)
        gc.collect()
        print(_line(name, rows[name]), flush=True)
    pruned = [r for r in rows.values() if "error" not in r]
    verdicts = {v: sum(r["masked"] == v for r in pruned) for v in ("ok", "exact ok", "skip",
                                                                 "FAILED")}
    stages = {s: sum(r.get("stage") == s for r in rows.values())
              for s in ("config", "inputs", "DepView")}
    print(f"{len(pruned)}/{len(rows)} built and pruned; masked equivalence: "
          + ", ".join(f"{n} {v}" for v, n in verdicts.items())
          + f"; stopped at the sweep's config {stages['config']}, its inputs "
            f"{stages['inputs']}, in DepView {stages['DepView']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if before is not None:
        def same(a, b):  # (earlier runs did not say where a row stopped)
            return {k: v for k, v in a.items() if k != "stage"} == \
                {k: v for k, v in b.items() if k != "stage"}

        changed = [n for n in rows if n in before and not same(before[n], rows[n])]
        for n in changed:
            print(f"changed {n}:\n  before {_line(n, before[n])}\n  after  {_line(n, rows[n])}")
        print(f"{len(changed)} of {sum(n in before for n in rows)} compared rows changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
