"""Hugging Face sweep: small models of many architectures, pruned and reloaded (not a test).

Run from the repository root (needs ``transformers``; nothing is downloaded)::

    python benchmarks/hf_sweep.py                      # every model below
    python benchmarks/hf_sweep.py --models gpt2,llava  # some of them
    python benchmarks/hf_sweep.py --json out.json      # also write the rows as JSON

Each model is built in-process from a small config (random weights, ``HF_HUB_OFFLINE=1``),
traced and pruned at ``--ratio`` (0.5) with the L1 importance. A row says how many groups
are prunable, the parameters before and after, the apply time (the config search included),
what happened to the config (``fit``: the sizes set, or why the config was left), and then
for the in-process export (``export_dir`` with no source, without ``model.pt2``): whether
``load_pruned`` rebuilt it bit-exact (the same outputs on the example inputs, compared with
``torch.equal``) and whether ``check`` passed, and, when a ``config.json`` was written,
whether ``from_pretrained`` of the directory gives the same outputs too. Its tensors are
copied first: ``from_pretrained`` maps the safetensors file, whose tensors are not 64-byte
aligned, and CPU kernels then round the last bit differently from the same values (BERT's
outputs by 1e-9).

A model that fails to build, trace or prune gets a row with the error; the script goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _models(tf, torch):
    """name -> factory of (model, example inputs)."""
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=120)
    ids = torch.randint(1, 99, (1, 8))
    img = {"pixel_values": torch.randn(1, 3, 32, 32)}

    def decoder(cls, ccls, **kw):
        return lambda: (cls(ccls(**{**small, **kw})), {"input_ids": ids})

    def vision(cls, ccls, **kw):
        return lambda: (cls(ccls(**kw)), img)

    def seq2seq(cls, cfg):
        return lambda: (cls(cfg), {"input_ids": ids, "decoder_input_ids": ids})

    def llava():
        cfg = tf.LlavaConfig(
            text_config=tf.LlamaConfig(**small, num_key_value_heads=2, pad_token_id=0),
            vision_config=tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             image_size=32, patch_size=8),
            image_token_index=100, vision_feature_layer=-1)
        x = torch.cat([torch.full((1, 16), 100), torch.randint(1, 99, (1, 6))], 1)
        return (tf.LlavaForConditionalGeneration(cfg),
                {"input_ids": x, "pixel_values": torch.randn(1, 3, 32, 32)})

    bert = dict(small, max_position_embeddings=64)
    return {
        "gpt2": lambda: (tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4,
                                                        vocab_size=120)), {"input_ids": ids}),
        "llama": decoder(tf.LlamaForCausalLM, tf.LlamaConfig, num_key_value_heads=2),
        "mistral": decoder(tf.MistralForCausalLM, tf.MistralConfig, num_key_value_heads=2),
        "qwen2": decoder(tf.Qwen2ForCausalLM, tf.Qwen2Config, num_key_value_heads=2),
        "phi3": decoder(tf.Phi3ForCausalLM, tf.Phi3Config, num_key_value_heads=2,
                        pad_token_id=0),
        "gemma": decoder(tf.GemmaForCausalLM, tf.GemmaConfig, num_key_value_heads=2,
                         head_dim=8),
        # Falcon-7B: multi-query attention fused into one query_key_value, rotary
        "falcon": lambda: (tf.FalconForCausalLM(tf.FalconConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=120)),
            {"input_ids": ids}),
        "opt": lambda: (tf.OPTForCausalLM(tf.OPTConfig(
            hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=120, word_embed_proj_dim=32)), {"input_ids": ids}),
        "bert-cls": decoder(tf.BertForSequenceClassification, tf.BertConfig,
                            max_position_embeddings=64),
        "bert-base": decoder(tf.BertModel, tf.BertConfig, max_position_embeddings=64),
        "t5": seq2seq(tf.T5ForConditionalGeneration, tf.T5Config(
            d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=120,
            decoder_start_token_id=0)),
        "bart": seq2seq(tf.BartForConditionalGeneration, tf.BartConfig(
            d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=1,
            decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            vocab_size=120, max_position_embeddings=64)),
        "encoder-decoder": seq2seq(tf.EncoderDecoderModel,
                                   tf.EncoderDecoderConfig.from_encoder_decoder_configs(
                                       tf.BertConfig(**bert), tf.BertConfig(
                                           **bert, is_decoder=True,
                                           add_cross_attention=True))),
        "llava": llava,
        "mamba2": lambda: (tf.Mamba2ForCausalLM(tf.Mamba2Config(
            hidden_size=32, num_heads=8, head_dim=8, expand=2, state_size=8, n_groups=1,
            num_hidden_layers=2, vocab_size=120, chunk_size=8)), {"input_ids": ids}),
        "jamba": lambda: (tf.JambaForCausalLM(tf.JambaConfig(
            **small, num_key_value_heads=2, mamba_d_state=8, mamba_expand=2, mamba_dt_rank=4,
            num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
            expert_layer_period=2, expert_layer_offset=1, use_mamba_kernels=False)),
            {"input_ids": ids}),
        "zamba2": lambda: (tf.Zamba2ForCausalLM(tf.Zamba2Config(
            **{**small, "num_attention_heads": 4}, num_key_value_heads=4, mamba_d_state=8,
            mamba_headdim=8, n_mamba_heads=8, layers_block_type=["mamba", "hybrid"],
            hybrid_layer_ids=[1], use_mem_rope=False)), {"input_ids": ids}),
        "vit": vision(tf.ViTForImageClassification, tf.ViTConfig, hidden_size=32,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8),
        "resnet": vision(tf.ResNetForImageClassification, tf.ResNetConfig, embedding_size=16,
                         hidden_sizes=[16, 32], depths=[1, 1]),
        "convnext": vision(tf.ConvNextForImageClassification, tf.ConvNextConfig,
                           hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
        "swin": vision(tf.SwinForImageClassification, tf.SwinConfig, image_size=32,
                       patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                       window_size=4),
        "segformer": vision(tf.SegformerForImageClassification, tf.SegformerConfig,
                            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                            hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                            patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2]),
    }


def _same(a, b, torch, flatten) -> bool:
    x, y = [t for _, t in flatten(a)], [t for _, t in flatten(b)]
    return len(x) == len(y) and all(u.shape == v.shape and torch.equal(u, v)
                                    for u, v in zip(x, y, strict=True))


def _from_dir(model, dtype: str, folder: Path, torch, run: str | None = None):
    """``model`` saved in ``dtype`` as ``save_pretrained`` writes it, then loaded back as
    ``prune DIR [--dtype RUN]`` loads it (inputs guessed): (model, inputs, source)."""
    from viewer.core.spec import load_model

    model.to(getattr(torch, dtype)).save_pretrained(folder)
    lm = load_model(str(folder), dtype=run)
    return lm.model, lm.inputs, lm.source


def run_one(name: str, factory, ratio: float, tf, torch, from_dir: str | None = None,
            run_dtype: str | None = None) -> dict:
    from viewer.core.export import check_dir, export_dir, load_pruned
    from viewer.core.forward import run
    from viewer.core.prune import Pruner
    from viewer.core.trees import flatten

    row: dict = {"model": name}
    torch.manual_seed(0)
    saved = Path(tempfile.mkdtemp(prefix="depview-sweep-dir-")) / name
    try:
        model, x = factory()
        model.eval()
        source = None
        if from_dir:
            model, x, source = _from_dir(model, from_dir, saved, torch, run_dtype)
            row["inputs"] = source["inputs"]
        p = Pruner(model, x)
        row["groups"] = f"{sum(not p.reason(g) for g in p.groups)}/{len(p.groups)}"
        plan = p.plan(ratio, "l1")
        t0 = time.perf_counter()
        pruned = p.apply(plan)
        row["apply_s"] = round(time.perf_counter() - t0, 2)
        row["params"] = [sum(t.numel() for t in m.parameters()) for m in (model, pruned)]
        fit = p.config_fit_of(pruned) or {}
        row["fit"] = fit.get("changed") if "changed" in fit else fit.get("reason")
        out = Path(tempfile.mkdtemp(prefix="depview-sweep-"))
        try:
            export_dir(p, plan, pruned, out, source, pt2=False)
            want = run(pruned, x)
            reloaded = load_pruned(out)
            row["reload_equal"] = _same(run(reloaded, x), want, torch, flatten)
            row["check_ok"] = bool(check_dir(out)["ok"])
            report = json.loads((out / "report.json").read_text())
            me = report["verification"].get("masked_equivalence") or {}
            me = me if "ok" in me else me.get("exact_groups") or me
            row["masked"] = ("FAILED" if me.get("ok") is False else "skipped" if "ok" not in me
                             else "ok in float32" if me.get("in_float32") else "ok")
            if from_dir:
                row["written"] = (report.get("dtype") or {}).get("written", "float32")
            if (out / "config.json").is_file():
                cls = getattr(tf, json.loads((out / "config.json").read_text())
                              ["architectures"][0])
                again = cls.from_pretrained(out).eval()
                with torch.no_grad():  # (see the module docstring)
                    for t in [*again.parameters(), *again.buffers()]:
                        t.data = t.data.clone()
                if from_dir:  # its weights as stored: those of the reload, in that dtype
                    mine = reloaded.to(again.dtype).state_dict()
                    row["from_pretrained_equal"] = again.dtype == getattr(
                        torch, row["written"]) and all(
                        torch.equal(v, mine[k]) for k, v in again.state_dict().items())
                else:
                    row["from_pretrained_equal"] = _same(run(again, x), want, torch, flatten)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    except Exception as exc:  # a row, and the next model
        row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    finally:
        shutil.rmtree(saved.parent, ignore_errors=True)
    return row


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ", ".join(f"{k}={w}" for k, w in v.items())
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--from-dir", default=None, choices=["float32", "bfloat16", "float16"],
                    help="save each model with save_pretrained in this dtype and load the "
                         "directory as a SPEC (inputs guessed) instead of in-process")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16"],
                    help="with --from-dir: run each model in this dtype (--dtype of prune)")
    args = ap.parse_args(argv)
    if args.dtype and not args.from_dir:
        print("error: --dtype needs --from-dir (the model is loaded as prune loads it)",
              file=sys.stderr)
        return 2
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(ROOT))
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch
    import transformers as tf

    tf.utils.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    models = _models(tf, torch)
    names = [n for n in args.models.split(",") if n] or list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; known: {', '.join(models)}",
              file=sys.stderr)
        return 2
    print(f"transformers {tf.__version__}, torch {torch.__version__}, ratio {args.ratio}"
          + (f", each saved as {args.from_dir} and loaded as a directory" if args.from_dir
             else "") + (f", run in {args.dtype}" if args.dtype else ""))
    rows = []
    for name in names:
        r = run_one(name, models[name], args.ratio, tf, torch, args.from_dir, args.dtype)
        rows.append(r)
        if "error" in r:
            print(f"{name:16} ERROR {r['error']}", flush=True)
            continue
        before, after = r["params"]
        print(f"{name:16} groups {r['groups']:>6}  params {before:>7,} -> {after:>7,}  "
              f"apply {r['apply_s']:5.2f} s  reload {'ok' if r['reload_equal'] else 'DIFF'}"
              f"  check {'ok' if r['check_ok'] else 'FAILED'}  masked {r['masked']}"
              + (f"  from_pretrained {'ok' if r['from_pretrained_equal'] else 'DIFF'}"
                 if "from_pretrained_equal" in r else "")
              + (f"  inputs {' '.join(r['inputs'])}  written {r['written']}"
                 if args.from_dir else "")
              + f"\n{'':16} config: {_cell(r['fit'])[:150]}", flush=True)
    ok = [r for r in rows if r.get("reload_equal") and r.get("check_ok")]
    fitted = [r for r in rows if "from_pretrained_equal" in r]
    print(f"{len(ok)}/{len(rows)} reload bit-exact and pass check; {len(fitted)} wrote a "
          f"config.json, {sum(r['from_pretrained_equal'] for r in fitted)} of them "
          "from_pretrained-equal")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
