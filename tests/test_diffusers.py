"""Hugging Face diffusers models built from small configs (no download), named by a spec as a
user would: a UNet's GroupNorms straddle the skip concat (groups of 6 over 32 + 16
channels), and its down- and upsamplers assert their input width against a size they
store."""

from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

diffusers = pytest.importorskip("diffusers")

from viewer.core.errors import DepViewError  # noqa: E402
from viewer.core.export import export_dir, load_pruned  # noqa: E402
from viewer.core.prune import Pruner  # noqa: E402
from viewer.core.spec import load_model  # noqa: E402

UNET = {"sample_size": 16, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
        "block_out_channels": [16, 32], "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}


def test_diffusers_unet_prunes_every_group_but_its_output_exactly_and_reloads(tmp_path,
                                                                             monkeypatch):
    probes = Counter()
    real = Pruner._run_probe

    def counting(self, plan, gs, sets=None):
        probes[gs[0].root if len(gs) == 1 else None] += 1
        return real(self, plan, gs, sets)

    monkeypatch.setattr(Pruner, "_run_probe", counting)
    lm = load_model("diffusers:UNet2DModel", kwargs=UNET, inputs=["1x3x16x16", "1:int64"])
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    blocked = {g.root: p.reason(g) for g in p.groups if p.reason(g)}
    # diffusers' Attention holds six ints equal to its width that its forward never reads:
    # not tried, its first groups took 19 and 47 probes (4 each now; 154 in all -> 58)
    assert max(n for root, n in probes.items() if root and ".attentions." in root) <= 4
    # only the output conv, and value projections whose whole heads the query's group prunes
    assert {r for r, why in blocked.items() if not why.startswith("as whole heads")} == \
        {"conv_out"}
    # a value projection's whole-heads retry overlaps its query's, which pruned them first:
    # it yields unprobed (one probe, its own failure; three before)
    taken = [r for r, why in blocked.items() if why.startswith("as whole heads")]
    assert taken and all(probes[r] <= 1 for r in taken), {r: probes[r] for r in taken}
    sets = {s for g in p.groups for s in p.sets(g)}
    assert {"down_blocks.0.downsamplers.0.channels", "up_blocks.0.upsamplers.0.channels"} <= sets
    plan = p.plan(0.5, "l1")
    # the stem's group has two units (its GroupNorm groups straddle concats), and unit 0 is
    # all an upsampler's output holds in it: unit 1 goes, whatever their importance
    stem = next(g for g in p.groups if g.root == "conv_in")
    assert stem.n_units == 2 and plan.removed[stem.id] == [1]
    pruned = p.apply(plan)
    down = pruned.down_blocks[0].downsamplers[0]
    assert down.channels == down.conv.in_channels == pruned.conv_in.out_channels < 16
    assert lm.model.down_blocks[0].downsamplers[0].channels == 16  # the original is untouched
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["ok"], v
    export_dir(p, plan, pruned, tmp_path / "out", lm.source)
    model = load_pruned(tmp_path / "out")  # rebuilt from the spec, the attributes set again
    assert model.down_blocks[0].downsamplers[0].channels == down.channels
    for k, t in load_file(str(tmp_path / "out" / "model.safetensors")).items():
        assert torch.equal(model.state_dict()[k], t), k


def test_diffusers_vae_attention_joins_q_and_v_of_each_block_and_sets_nothing_unread():
    # v's head dim is computed from k's width (head_dim = key.shape[-1] // heads): each of
    # q's and v's groups breaks the other alone. They join within their own block, the
    # encoder's apart from the decoder's, and set no attribute: the six ints of diffusers'
    # Attention equal to its width are never read by its forward
    torch.manual_seed(0)
    m = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
        norm_num_groups=8, layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2).eval()
    p = Pruner(m, (torch.randn(1, 3, 16, 16),))
    p.validate_groups()  # (a join takes its first group's place in the list)
    by_root = {g.root: g for g in p.groups}
    for part in ("encoder", "decoder"):
        q, v = (by_root[f"{part}.mid_block.attentions.0.to_{x}"] for x in "qv")
        assert not p.reason(q) and p.sets(q) == []
        assert p.reason(v).startswith(f"pruned with group #{q.id} ")
        assert {mm.node_name for mm in q.members} >= {f"{part}.mid_block.attentions.0.to_v"}
    plan = p.plan(0.5, "l1")
    pruned = p.apply(plan)
    assert pruned.encoder.mid_block.attentions[0].to_v.out_features == 16
    v = p.verify(pruned, plan)
    assert v["forward"] and v["masked_equivalence"]["exact_groups"]["ok"], v


def test_a_diffusers_model_directory_prunes_and_reloads(tmp_path):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**UNET)
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    folder = str(tmp_path / "pipe" / "unet")
    lm = load_model(folder, inputs=["1x3x16x16", "1:int64"])
    assert type(lm.model) is diffusers.UNet2DModel and lm.description == "UNet2DModel from unet"
    sd = unet.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in lm.model.state_dict().items())
    meta = load_model(folder, inputs=["1x3x16x16", "1:int64"], device="meta")
    assert all(p.is_meta for p in meta.model.parameters())
    p = Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    out = export_dir(p, plan, pruned, tmp_path / "e", lm.source, pt2=False)
    again = load_pruned(out)
    with torch.no_grad():
        assert torch.equal(pruned(*lm.inputs).sample, again(*lm.inputs).sample)
    # what is not a model directory, or cannot be one, says what to do instead
    for spec, kw, msg in (
            (str(tmp_path / "pipe"), {}, r"is a diffusers pipeline: name one of its models' "
                                         r"directories \(unet\)"),
            (folder, {}, "needs example inputs: its UNet2DModel reads inputs DepView cannot "
                         "guess"),
    ):
        with pytest.raises(DepViewError, match=msg):
            load_model(spec, **kw)
    cfg = tmp_path / "pipe" / "unet" / "config.json"
    cfg.write_text(cfg.read_text().replace('"norm_num_groups": 8', '"norm_num_groups": 4')
                   .replace("16,", "8,"))  # block_out_channels [16, 32] -> [8, 32]
    with pytest.raises(DepViewError, match=r"loading .* failed: RuntimeError: size mismatch "
                                           r"for conv_in.weight: .* \(and \d+ more problems\)"):
        load_model(folder, inputs=["1x3x16x16", "1:int64"])
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(DepViewError, match=r"holds a PEFT adapter, not a model: merge it"):
        load_model(str(tmp_path / "adapter"))
