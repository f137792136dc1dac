"""A pruned copy's config describes it: built from it, the model is the pruned one."""

import copy
import os

import pytest
import torch
from torch import nn

from viewer.core.export import export_dir
from viewer.core.forward import run
from viewer.core.materialize import attr_changes
from viewer.core.modelconfig import build_from_config, config_note, fit_config
from viewer.core.prune import Pruner
from viewer.core.trees import flatten


class Config:
    """A config object as a model class takes one (duck-typed: any attributes)."""

    def __init__(self, width: int = 16, hidden: int = 32, layers: int = 2, table: bool = False):
        self.width, self.hidden, self.layers, self.table = width, hidden, layers, table


class Block(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.hidden_size = config.hidden  # never read: pruning leaves it stale
        self.fc1 = nn.Linear(config.width, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class ConfigNet(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.inp = nn.Linear(8, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.out = nn.Linear(config.width, 3)
        if config.table:  # made from the config, not saved: a rebuild makes it afresh
            self.register_buffer("scale", torch.linspace(0.5, 1.5, config.width),
                                 persistent=False)

    def forward(self, x):
        x = self.inp(x)
        if self.config.table:
            x = x * self.scale
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def _config_pruner(config: Config | None = None) -> tuple[nn.Module, Pruner]:
    torch.manual_seed(0)
    model = ConfigNet(config or Config()).eval()
    return model, Pruner(model, (torch.randn(2, 8),))


def _uneven(p: Pruner):
    """A plan that cuts the two blocks' hidden layers to different widths."""
    first = next(g.id for g in p.groups if g.root == "blocks.0.fc1")
    return p.plan(0.5, overrides={first: 0.25})


def _pruned(config: Config, **plan):
    model, p = _config_pruner(config)
    return model, p, p.apply(p.plan(0.5, **plan))


def _outputs(model, inputs):
    return [t for _, t in flatten(run(model, inputs))]


def _own_memory(model: nn.Module) -> nn.Module:
    """``model`` with its tensors copied into memory of its own: ``from_pretrained`` maps the
    safetensors file, whose tensors are not 64-byte aligned, and CPU kernels then round the
    last bit differently (BERT's outputs by 5e-10) from the same values."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
    return model


def _built_from_config(pruned: nn.Module) -> nn.Module:
    """What ``from_pretrained`` does: the class built from the config, the weights loaded."""
    built = type(pruned)(pruned.config).eval()
    built.load_state_dict(pruned.state_dict())
    return built


def test_fit_config_sets_the_sizes_a_rebuild_gives_the_pruned_shapes():
    model, p, pruned = _pruned(Config())
    assert p.config_fit == {"changed": {"width": 8, "hidden": 16}}
    assert (pruned.config.width, pruned.config.hidden) == (8, 16)
    # the loaded model and its config are never changed
    assert model.config is not pruned.config and (model.config.width, model.config.hidden) == (
        16, 32)
    assert model.inp.out_features == 16
    built = _built_from_config(pruned)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in pruned.state_dict().items()}
    x = (torch.randn(2, 8),)
    assert torch.equal(_outputs(built, x)[0], _outputs(pruned, x)[0])
    # the attribute pruning left stale now says what a rebuild says; plan.json records all
    assert [b.hidden_size for b in pruned.blocks] == [16, 16]
    changes = attr_changes(model, pruned)
    assert changes[""] == {"config.width": 8, "config.hidden": 16}
    assert changes["blocks.0"] == {"hidden_size": 16}


def test_fit_config_leaves_a_config_that_cannot_describe_layers_of_different_widths():
    _, p = _config_pruner()
    pruned = p.apply(_uneven(p))
    assert pruned.blocks[0].fc1.out_features != pruned.blocks[1].fc1.out_features
    reason = p.config_fit["reason"]
    assert reason.startswith("no values of Config's sizes rebuild the pruned model: with the "
                             "closest (")
    assert "blocks.0.fc1.weight would be" in reason or "blocks.1.fc1.weight would be" in reason
    # a long closest config is cut after 4 sizes (D-FINE's changed 24: a wall of text)
    from viewer.core.modelconfig import _listed

    sizes = {f"s{i}": i for i in range(6)}
    assert _listed(sizes, 4) == "s0=0, s1=1, s2=2, s3=3, and 2 more"
    assert _listed(sizes) == _listed(sizes, 6) == "s0=0, s1=1, s2=2, s3=3, s4=4, s5=5"
    assert (pruned.config.width, pruned.config.hidden) == (16, 32)  # left as it was
    assert [b.hidden_size for b in pruned.blocks] == [32, 32]


def test_fit_config_is_kept_only_if_the_rebuilt_model_computes_the_same():
    # the shapes fit, but a rebuild makes the stream's scale table afresh for 8 channels,
    # where the pruned model kept 8 of the 16-channel table: not the same model
    model, p, pruned = _pruned(Config(table=True))
    assert pruned.scale.shape == (8,)
    assert p.config_fit["reason"].startswith("a model built from Config with the pruned sizes "
                                             "(width=8, hidden=16) does not compute what")
    assert pruned.config.width == 16
    cfg = Config(width=8, hidden=16, table=True)
    built = type(pruned)(cfg).eval()
    built.load_state_dict(pruned.state_dict())
    x = (torch.randn(2, 8),)
    assert not torch.equal(_outputs(built, x)[0], _outputs(pruned, x)[0])


def test_fit_config_says_when_the_class_does_not_rebuild_from_its_config():
    torch.manual_seed(0)
    model = ConfigNet(Config()).eval()
    model.out = nn.Linear(16, 5)  # a head swapped after building: the config does not say so
    p = Pruner(model, (torch.randn(2, 8),))
    pruned = p.apply(p.plan(0.5))
    assert p.config_fit["reason"] == (
        "ConfigNet(Config) does not rebuild the model it was pruned from, so no config can "
        "describe the pruned one (a layer changed after it was built, or an earlier round "
        "whose config was left as it was)")
    assert pruned.config.width == 16


def test_models_without_a_config_are_not_fitted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    p = Pruner(model, (torch.randn(2, 8),))
    p.apply(p.plan(0.5))
    assert p.config_fit is None
    assert fit_config(model, model) is None


def test_a_config_the_class_is_not_built_from_is_not_fitted_or_mentioned():
    class Holder(nn.Module):  # keeps settings in self.config, built without arguments
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = Holder().eval()
    p = Pruner(model, (torch.randn(2, 8),))
    pruned = p.apply(p.plan(0.5))
    assert pruned.a.out_features == 8 and p.config_fit is None
    assert config_note(p.config_fit) == ""


def test_build_from_config_keeps_the_random_state_and_returns_none_on_failure():
    state = torch.random.get_rng_state()
    built = build_from_config(ConfigNet, Config())
    assert built.inp.weight.is_meta and torch.equal(torch.random.get_rng_state(), state)
    assert build_from_config(ConfigNet, Config(width=-1)) is None


def test_export_writes_the_fitted_config_and_drops_an_earlier_one(tmp_path):
    import json

    class JsonConfig(Config):
        def to_json_string(self):
            return json.dumps(vars(self))

    _, p = _config_pruner(JsonConfig())
    plan = p.plan(0.5)
    src = {"spec": "in-process", "kwargs": {}, "inputs": [], "seed": 0}
    out = export_dir(p, plan, p.apply(plan), tmp_path / "x", src, pt2=False)
    report = json.loads((out / "report.json").read_text())
    assert report["config"] == {"written": True, "file": "config.json",
                                "changed": {"width": 8, "hidden": 16}}
    data = json.loads((out / "config.json").read_text())
    assert data["width"] == 8 and data["architectures"] == ["ConfigNet"]
    # a plan the config cannot describe: no config.json (the earlier one is removed)
    plan = _uneven(p)
    out = export_dir(p, plan, p.apply(plan), tmp_path / "x", src, pt2=False)
    report = json.loads((out / "report.json").read_text())
    assert not report["config"]["written"]
    assert report["config"]["reason"].startswith("no values of JsonConfig's sizes")
    assert not (out / "config.json").exists()
    # a copy whose config nobody fitted is checked, not trusted: left out too
    plan = p.plan(0.5)
    out = export_dir(p, plan, p.apply(plan, config=False), tmp_path / "x", src, pt2=False)
    report = json.loads((out / "report.json").read_text())
    assert report["config"] == {"written": False, "reason": "its JsonConfig does not rebuild "
                                "it (21 tensor shapes or layer attributes differ)"}


def test_hf_gpt2_heads_are_told_apart_by_running_the_rebuilt_model():
    # GPT-2's n_embd alone rebuilds every pruned shape (its head_dim = n_embd / n_head
    # follows), but as 4 heads of 4 where the pruned model runs 2 heads of 8: only the
    # forward check tells them apart
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                             n_positions=32, bos_token_id=0, eos_token_id=0))
    inputs = {"input_ids": torch.randint(0, 100, (1, 8))}
    p = Pruner(model.eval(), inputs)
    pruned = p.apply(p.plan(0.5))
    assert p.config_fit == {"changed": {"n_embd": 16, "n_head": 2}}
    assert (model.config.n_embd, model.config.n_head) == (32, 4)
    assert [(b.attn.embed_dim, b.attn.num_heads) for b in pruned.transformer.h] == [(16, 2)] * 2
    want = _outputs(pruned, inputs)[0]
    assert torch.equal(_outputs(_built_from_config(pruned), inputs)[0], want)
    pruned.config.n_head = 4  # the shapes-only answer
    assert not torch.equal(_outputs(_built_from_config(pruned), inputs)[0], want)


def test_a_head_dim_the_config_leaves_implied_is_set_when_the_stream_loses_channels():
    # MixtralConfig's head_dim is None (hidden_size / heads): a stream pruned 16 -> 12 with
    # its 2 heads of 8 kept whole had "no values of MixtralConfig's sizes" (hidden_size=12
    # alone makes heads of 6), though head_dim=8 rebuilds it
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tr.MixtralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, vocab_size=60,
                           num_local_experts=2, num_experts_per_tok=1)
    assert cfg.head_dim is None
    model = tr.MixtralForCausalLM(cfg).eval()
    inputs = {"input_ids": torch.randint(1, 60, (1, 8))}
    p = Pruner(model, inputs)
    gid = {g.root: g.id for g in p.groups}
    pruned = p.apply(p.plan(0.0, overrides={gid["model.embed_tokens"]: 0.25}))
    assert p.config_fit == {"changed": {"hidden_size": 12, "head_dim": 8}}
    assert model.config.head_dim is None  # (the original's config is not touched)
    want = _outputs(pruned, inputs)[0]
    assert torch.equal(_outputs(_built_from_config(pruned), inputs)[0], want)
    # a search that finds nothing (one layer's experts narrower than the other's) puts the
    # head_dim it tried back as it was
    uneven = p.apply(p.plan(0.0, overrides={gid["model.layers.0.mlp.experts.down_proj"]: 0.5}))
    assert "reason" in p.config_fit and uneven.config.head_dim is None


def test_a_head_dim_a_config_never_had_is_written_and_its_export_reloads(tmp_path):
    # Phi3Config has no head_dim attribute at all: the fit set one, and plan.json's
    # "config.head_dim" was refused on reload as "not a public scalar attribute"
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")
    from viewer.core.export import load_pruned

    torch.manual_seed(0)
    model = tr.Phi3ForCausalLM(tr.Phi3Config(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    assert "head_dim" not in vars(model.config)
    inputs = {"input_ids": torch.randint(3, 60, (1, 8))}
    p = Pruner(model, inputs)
    stream = next(g for g in p.groups if g.root == "model.embed_tokens")
    plan = p.plan(0.0, overrides={stream.id: 0.25})
    pruned = p.apply(plan)
    assert p.config_fit == {"changed": {"hidden_size": 12, "head_dim": 8}}
    out = export_dir(p, plan, pruned, tmp_path / "out", pt2=False)
    assert torch.equal(_outputs(load_pruned(out), inputs)[0], _outputs(pruned, inputs)[0])
    # a fit whose head_dim is what hidden_size / heads gives anyway leaves it out
    p = _tiny_lm(tr.Phi3ForCausalLM, tr.Phi3Config(
        vocab_size=60, hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=64, max_position_embeddings=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2))
    p.apply(p.plan(0.5))
    assert p.config_fit == {"changed": {"hidden_size": 32, "intermediate_size": 32,
                                        "num_attention_heads": 4, "num_key_value_heads": 2}}


def test_heads_and_kv_heads_that_only_fit_together_are_found_together():
    # StableLM's head size is hidden_size / heads: hidden_size=16 alone rebuilt every shape
    # (4 heads of 4), fewer heads alone or fewer kv heads alone upset the k/v shapes, and
    # the search stopped at "no values of StableLmConfig's sizes" (2 heads of 8, 1 kv head)
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")
    p = _tiny_lm(tr.StableLmForCausalLM, tr.StableLmConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=60, partial_rotary_factor=0.5))
    pruned = p.apply(p.plan(0.5))
    assert p.config_fit["changed"] == {"hidden_size": 16, "intermediate_size": 32,
                                       "num_attention_heads": 2, "num_key_value_heads": 1}
    want = _outputs(pruned, p.inputs)[0]
    assert torch.equal(_outputs(_built_from_config(pruned), p.inputs)[0], want)


def _tiny_lm(cls, config) -> Pruner:
    """The pruner of ``cls(config)`` (seeded weights, eval mode) on 8 token ids."""
    torch.manual_seed(0)
    return Pruner(cls(config).eval(), {"input_ids": torch.randint(3, 60, (1, 8))})


def test_a_config_its_own_class_refuses_is_not_written_and_the_export_reloads(tmp_path):
    """Llama with head_dim 8 pruned to hidden_size 23 rebuilds from a config saying so, but
    LlamaConfig refuses it (23 is no multiple of 4 heads): from_pretrained of that config.json
    failed, and so did load_pruned of an in-process export. Now no config.json, the reason
    said, and the export reloads from the original's config and the plan."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")
    from viewer.core.export import load_pruned
    from viewer.core.modelconfig import refusal

    torch.manual_seed(0)
    model = tr.LlamaForCausalLM(tr.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)).eval()
    odd = copy.deepcopy(model.config)
    odd.hidden_size = 30
    if not refusal(odd):
        pytest.skip("this transformers does not validate a config's sizes")
    inputs = (torch.randint(0, 100, (1, 16)),)
    p = Pruner(model, inputs)
    plan = p.plan(0.3, "l1")
    pruned = p.apply(plan)
    assert pruned.model.norm.weight.shape[0] % 4  # (a width no count of heads divides)
    why = p.config_fit["reason"]
    assert why.startswith("LlamaConfig refuses the sizes that rebuild the pruned model (") \
        and "is not a multiple of the number of attention heads" in why, why
    assert "\n" not in why and pruned.config.hidden_size == 32  # (left as it was)
    out = export_dir(p, plan, pruned, tmp_path / "e")
    assert not (out / "config.json").exists()
    again = load_pruned(out)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 pruned.state_dict().values(), strict=True))


def _staged() -> Config:
    cfg = Config()
    cfg.widths = (8, 16, 32)  # a tuple: stays one
    return cfg


class StagedNet(nn.Module):
    """Widths per stage in a list, as Hugging Face's vision configs give them."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Conv2d(3, w[0], 3)
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU())
                                    for a, b in zip(w, w[1:], strict=False))
        self.head = nn.Linear(w[-1], 3)

    def forward(self, x):
        x = self.stem(x)
        for s in self.stages:
            x = s(x)
        return self.head(x.mean((2, 3)))


def test_fit_config_sets_items_of_a_list_of_widths_and_plan_json_gives_them_back():
    from viewer.core.export import reshape_like_plan

    torch.manual_seed(0)
    model = StagedNet(_staged()).eval()
    p = Pruner(model, (torch.randn(1, 3, 8, 8),))
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert p.config_fit == {"changed": {"widths": [4, 8, 16]}}
    assert pruned.config.widths == (4, 8, 16) and model.config.widths == (8, 16, 32)
    x = (torch.randn(1, 3, 8, 8),)
    assert torch.equal(_outputs(_built_from_config(pruned), x)[0], _outputs(pruned, x)[0])
    changes = attr_changes(model, pruned)
    assert changes[""] == {"config.widths": [4, 8, 16]}
    # what load_pruned does with plan.json: the original rebuilt, then reshaped by it
    again = reshape_like_plan(StagedNet(_staged()), {"tensors": p.kept(plan), "attrs": changes})
    assert again.config.widths == (4, 8, 16)  # (a tuple, as the model held it)


def test_hf_vision_classifiers_get_their_widths_per_stage_fitted():
    # ResNet (embedding_size and hidden_sizes, bottlenecks of a quarter of each), Swin
    # (embed_dim doubled per stage, num_heads per stage), PVT v2 (its classifier reads
    # config.hidden_sizes[-1]): whole configs from_pretrained builds
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    models = {
        "resnet": (tr.ResNetForImageClassification(tr.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_labels=5)),
            {"embedding_size": 8, "hidden_sizes": [8, 16, 32]}),
        "swin": (tr.SwinForImageClassification(tr.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
            window_size=4, num_labels=5)), {"embed_dim": 8, "num_heads": [1, 2]}),
        # PVT v2 b0's stages: mlp_ratios stay (8, 8, 4, 4) as both widths halve; the search
        # first took mlp_ratios.1 = 4 (it halved the MLP before hidden_sizes.1 did) and
        # kept it, and no config was written
        "pvt_v2": (tr.PvtV2ForImageClassification(tr.PvtV2Config(
            image_size=32, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
            hidden_sizes=[32, 64, 160, 256], num_attention_heads=[1, 2, 5, 8],
            patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], mlp_ratios=[8, 8, 4, 4],
            num_labels=5)), {"hidden_sizes": [16, 32, 80, 128]}),
    }
    x = {"pixel_values": torch.randn(1, 3, 32, 32)}
    for name, (model, want) in models.items():
        p = Pruner(model.eval(), x)
        pruned = p.apply(p.plan(0.5))
        assert p.config_fit == {"changed": want}, name
        built = type(pruned)(pruned.config).eval()
        built.load_state_dict(pruned.state_dict())
        assert torch.equal(_outputs(built, x)[0], _outputs(pruned, x)[0]), name


def test_each_pruned_copy_keeps_what_its_own_apply_did_to_the_config():
    # the app's sessions share a stage's Pruner: the last apply's config_fit may be another's
    model, p = _config_pruner()
    uneven = p.apply(_uneven(p))
    even = p.apply(p.plan(0.5))
    assert p.config_fit_of(uneven)["reason"].startswith("no values of Config's sizes")
    assert p.config_fit_of(even) == p.config_fit == {"changed": {"width": 8, "hidden": 16}}
    assert p.config_fit_of(model) is None


def test_a_real_rebuild_draws_no_weights_makes_its_buffers_and_leaves_other_threads_alone():
    # the forward check builds a model for real only for the buffers it does not save; its
    # weights are replaced by the pruned ones, so drawing them (most of a big model's build)
    # is skipped, in this thread only
    import threading

    from viewer.core.modelconfig import _NoRandomFill

    built = build_from_config(ConfigNet, Config(table=True), "cpu")
    assert not built.inp.weight.is_meta
    assert torch.equal(built.scale, torch.linspace(0.5, 1.5, 16))
    state = torch.random.get_rng_state()
    with _NoRandomFill():
        nn.Linear(64, 64)  # kaiming_uniform_ and uniform_: nothing drawn
    assert torch.equal(torch.random.get_rng_state(), state)
    out = {}

    def other():
        torch.manual_seed(1)
        out["w"] = nn.Linear(8, 8).weight.detach().clone()

    with _NoRandomFill():
        t = threading.Thread(target=other)
        t.start()
        t.join()
    torch.manual_seed(1)
    assert torch.equal(out["w"], nn.Linear(8, 8).weight)


class PairNet(nn.Module):
    """A model whose config holds the config of a part (a vision-language model's
    ``text_config``): the part is built from that one."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.enc = ConfigNet(config.inner)  # 8 -> inner.width -> 3
        self.fc = nn.Linear(8, config.width)
        self.out = nn.Linear(config.width, 2)

    def forward(self, x):
        return self.enc(x), self.out(torch.relu(self.fc(x)))


def _pair() -> Config:
    cfg = Config(width=16)
    cfg.inner = Config(width=12, hidden=24)
    return cfg


def test_fit_config_sets_the_sizes_of_a_config_it_holds():
    from viewer.core.export import reshape_like_plan

    torch.manual_seed(0)
    model = PairNet(_pair()).eval()
    x = (torch.randn(2, 8),)
    p = Pruner(model, x)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert p.config_fit == {"changed": {"width": 8, "inner.width": 6, "inner.hidden": 12}}
    assert pruned.enc.config is pruned.config.inner  # (the part's own config, fitted too)
    assert (model.config.width, model.config.inner.width) == (16, 12)  # the original's kept
    for a, b in zip(_outputs(_built_from_config(pruned), x), _outputs(pruned, x), strict=True):
        assert torch.equal(a, b)
    changes = attr_changes(model, pruned)
    assert changes[""] == {"config.width": 8}
    assert changes["enc"] == {"config.width": 6, "config.hidden": 12}
    again = reshape_like_plan(PairNet(_pair()), {"tensors": p.kept(plan), "attrs": changes})
    assert (again.config.width, again.config.inner.width, again.config.inner.hidden) == \
        (8, 6, 12)
    # a sub-config's sizes are candidates after the config's own
    from viewer.core.modelconfig import _candidates, size_keys

    keys = size_keys(model.config)
    assert keys == {"width": 16, "hidden": 32, "layers": 2, "inner.width": 12,
                    "inner.hidden": 24, "inner.layers": 2}
    nesting = [k.count(".") for k, _ in _candidates(keys, {(16, 8), (12, 6)})]
    assert nesting == sorted(nesting) and nesting[0] == 0 and nesting[-1] == 1


def test_hf_llava_text_config_is_fitted_and_from_pretrained_builds_the_pruned_model(tmp_path):
    """Its language model pruned (the vision tower and the projector, whose width the config
    ties to the text model's, kept whole): ``text_config``'s sizes set, config.json written."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tr.LlavaConfig(
        text_config=tr.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=120, bos_token_id=0, eos_token_id=0,
                                   pad_token_id=0),
        vision_config=tr.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          image_size=32, patch_size=8),
        image_token_index=100, vision_feature_layer=-1)
    model = tr.LlavaForConditionalGeneration(cfg).eval()
    ids = torch.cat([torch.full((1, 16), 100), torch.randint(1, 99, (1, 6))], 1)
    x = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32)}
    p = Pruner(model, x)
    keep = {g.id: 0.0 for g in p.groups if not p.reason(g)
            and g.root.startswith(("model.vision_tower", "model.multi_modal_projector"))}
    plan = p.plan(0.5, overrides=keep)
    pruned = p.apply(plan)
    assert p.config_fit == {"changed": {"text_config.intermediate_size": 32,
                                        "text_config.num_attention_heads": 2,
                                        "text_config.num_key_value_heads": 1}}
    out = export_dir(p, plan, pruned, tmp_path / "llava")
    again = _own_memory(tr.LlavaForConditionalGeneration.from_pretrained(out).eval())
    assert torch.equal(_outputs(again, x)[0], _outputs(pruned, x)[0])


class Wrapper(nn.Module):
    """A module of yours around a model built from a config (it holds none itself)."""

    def __init__(self):
        super().__init__()
        self.body = ConfigNet(Config())
        self.tail = nn.Linear(8, 2)

    def forward(self, x):
        return self.body(x * 2), self.tail(x)


def test_the_config_of_a_part_is_fitted_on_what_that_part_computes(tmp_path):
    import json

    torch.manual_seed(0)
    model = Wrapper().eval()
    x = (torch.randn(2, 8),)
    p = Pruner(model, x)
    plan = p.plan(0.5)
    pruned = p.apply(plan)
    assert p.config_fit == {"modules": {"body": {"changed": {"width": 8, "hidden": 16}}}}
    assert (pruned.body.config.width, model.body.config.width) == (8, 16)
    assert config_note(p.config_fit) == "body's config sizes set to width=8, hidden=16"
    built = _built_from_config(pruned.body)
    assert torch.equal(built(x[0] * 2), pruned.body(x[0] * 2))
    assert attr_changes(model, pruned)["body"] == {"config.width": 8, "config.hidden": 16}
    out = export_dir(p, plan, pruned, tmp_path / "w", {})
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["written"] is False and not (out / "config.json").exists()
    assert report["config"]["modules"] == p.config_fit["modules"]
    # a settings object of yours as the wrapper's config (not one it is built from): the
    # part's is fitted still
    import types

    model.config = types.SimpleNamespace(lr=0.1, width=16)
    pc = Pruner(model, x)
    pc.apply(pc.plan(0.5))
    assert pc.config_fit == {"modules": {"body": {"changed": {"width": 8, "hidden": 16}}}}
    del model.config
    # a part the example inputs never reach says so; one reached gets fitted still
    model.forward = lambda x: (model.body.out(torch.zeros(2, 16)), model.tail(x))
    p2 = Pruner(model, x)
    assert p2.fit_config(model, search=False) == {"modules": {"body": {
        "reason": "the example inputs never reach it"}}}


def test_hf_model_inside_a_module_of_yours_gets_its_config_fitted_for_save_pretrained(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    tr = pytest.importorskip("transformers")

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tr.LlamaModel(tr.LlamaConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
            self.head = nn.Linear(32, 3)

        def forward(self, ids):
            return self.head(self.backbone(input_ids=ids).last_hidden_state[:, -1])

    torch.manual_seed(0)
    model = Classifier().eval()
    ids = torch.randint(0, 100, (1, 8))
    p = Pruner(model, (ids,))
    pruned = p.apply(p.plan(0.5))
    assert p.config_fit == {"modules": {"backbone": {"changed": {
        "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
        "num_key_value_heads": 1}}}}
    pruned.backbone.save_pretrained(tmp_path / "bb")
    again = _own_memory(tr.LlamaModel.from_pretrained(tmp_path / "bb").eval())
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).last_hidden_state,
                           pruned.backbone(input_ids=ids).last_hidden_state)


def test_a_fit_that_cannot_run_the_pruned_model_is_a_reason_never_an_error():
    import copy

    def boom(*_a, **_k):
        raise RuntimeError("boom")

    model, p = _config_pruner()
    broken = copy.deepcopy(p.apply(p.plan(0.5)))
    broken.forward = boom
    assert p.fit_config(broken) == {"reason": "fitting the config failed: RuntimeError: boom"}
    torch.manual_seed(0)
    wrapper = Wrapper().eval()
    pw = Pruner(wrapper, (torch.randn(2, 8),))
    broken = copy.deepcopy(pw.apply(pw.plan(0.5)))
    broken.forward = boom  # the forward that would show what the part computes
    assert pw.fit_config(broken) == {"reason": "fitting the config failed: RuntimeError: boom"}
    broken = copy.deepcopy(pw.apply(pw.plan(0.5)))
    broken.body.forward = boom  # the part itself
    assert pw.fit_config(broken)["reason"] == "fitting the config failed: RuntimeError: boom"


def test_a_real_rebuild_still_draws_what_rejection_sampling_loops_on():
    """torch's trunc_normal_ (a ViT's init) redraws until every value is inside its bounds;
    with its draws skipped, a tensor's leftover memory (here: 1e9) kept it looping for ever
    (a reload of a ViT hung). Its draws are made; other fills are still skipped."""
    import threading

    from viewer.core.modelconfig import _NoRandomFill

    t, other = torch.full((1000,), 1e9), torch.full((1000,), 7.0)
    done = {}

    def init():
        with _NoRandomFill():
            torch.nn.init.trunc_normal_(t, a=-2.0, b=2.0)
            torch.nn.init.normal_(other)
        done["ok"] = True

    worker = threading.Thread(target=init, daemon=True)  # (a regression must not hang the run)
    worker.start()
    worker.join(30)
    assert done.get("ok"), "trunc_normal_ never returned"
    assert t.abs().max() <= 2.0 and t.std() > 0.5  # drawn, within its bounds
    assert (other == 7.0).all()  # skipped
