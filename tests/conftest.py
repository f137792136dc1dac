"""Shared fixtures: demo models are built once per test session."""

from __future__ import annotations

import os
import shutil
from functools import cache

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CNN_DEMOS = ["cnn", "resnet", "densenet", "shufflenet", "mobilenet", "unet", "norms", "slicing",
             "yolo"]
ALL_DEMOS = CNN_DEMOS + ["vit", "rnn", "llama", "moe", "swin"]


@cache
def _pruner(name: str):
    from viewer.core.prune import Pruner
    from viewer.core.spec import load_model

    lm = load_model(f"demo:{name}")
    return lm, Pruner(lm.model, lm.inputs, output_layers=lm.output_layers)


@pytest.fixture
def demo_pruner():
    """``demo_pruner("resnet") -> (LoadedModel, Pruner)``, cached across tests (read-only)."""
    return _pruner


FUSED_QKV = """
import torch

class Fused(torch.nn.Module):
    # GPT-2's pattern: a fused q/k/v projection split by a size stored on the module
    def __init__(self):
        super().__init__()
        self.split_size = 8
        self.qkv = torch.nn.Linear(8, 24)
        self.out = torch.nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.qkv(x).split(self.split_size, dim=-1)
        return x + self.out(q * k + v)
"""


@pytest.fixture
def fused_spec(tmp_path) -> str:
    """The spec of a model file (input ``2x8``) whose split size is a module attribute: an
    export of it reloads only if that attribute follows the pruning."""
    (tmp_path / "fused.py").write_text(FUSED_QKV)
    return f"{tmp_path / 'fused.py'}:Fused"


def file_session(folder, source: str, inputs: tuple[str, ...], cls: str = "M", sid: str = "sid"):
    """An app session store with a model file written into ``folder`` (a class ``cls`` in
    ``model.py``) loaded into session ``sid``: what a user's ``--model file.py:M`` gives."""
    from viewer.app.callbacks.model import load_entry
    from viewer.app.state import ModelEntry, SessionStore

    (folder / "model.py").write_text(source)
    spec = f"{folder / 'model.py'}:{cls}"
    store = SessionStore([ModelEntry(spec, inputs=inputs)])
    load_entry(store, sid, spec)
    return store


@pytest.fixture(scope="session", autouse=True)
def _browser_tmpdir(tmp_path_factory):
    """Chromium started by chromedriver and stopped by ``quit()`` leaves its singleton socket
    folder (``org.chromium.Chromium.*``) in TMPDIR, one per browser: point the browsers this
    session starts at a folder under pytest's own temporary root, which pytest prunes."""
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("browser-tmp"))
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old


def pytest_setup_options():
    """Chrome options for dash[testing]'s dash_duo: headless Debian chromium, no network."""
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1400,900"):
        opts.add_argument(flag)
    if shutil.which("chromium"):
        opts.binary_location = shutil.which("chromium")
    return opts


class MaskedLogits(torch.nn.Module):
    """A pointer network's output: logits of visited positions masked to -inf (the CLI test
    writes this class's source to a model file)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 16), torch.nn.Linear(16, 6)

    def forward(self, x):
        logits = self.fc2(torch.relu(self.fc1(x)))
        mask = torch.zeros(6, dtype=torch.bool)
        mask[0] = True
        return torch.log_softmax(logits.masked_fill(mask, float("-inf")), -1)


def save_tiny_llama(folder, dtype=torch.float32, **save_kwargs):
    """A one-layer Llama (4 query heads, 2 kv heads) saved as ``save_pretrained`` writes it."""
    import transformers as tf

    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )).to(dtype).save_pretrained(folder, **save_kwargs)
    return folder


#: a model file (``net.py:Net``) that returns its feature map beside its logits: the group of
#: its one conv reaches both outputs (blocked, unless ``features`` is made free)
TWO_OUTPUTS_FILE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        f = torch.relu(self.stem(x))
        return {"logits": self.head(f.mean((2, 3))), "features": f}
"""


def validated(cls, *shape):
    """A model of ``cls`` (seeded), an input of ``shape`` and its Pruner, validated."""
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(*shape)
    from viewer.core.prune import Pruner

    p = Pruner(model, (x,))
    p.validate_groups()
    return model, x, p


def tiny_pruner():
    """Linear(4, 8), ReLU, Linear(8, 5) and its Pruner: one prunable group of 8 units."""
    from viewer.core.prune import Pruner

    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))
    return Pruner(m.eval(), (torch.randn(2, 4),))


class FeaturesAndLogits(nn.Module):
    """A backbone that returns its feature map beside its logits (as a detector returns
    its hidden states beside its boxes)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(16, 8, 1))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        f = self.stem(x)
        f = f + self.block(f)
        return {"logits": self.head(f.mean((2, 3))), "features": f}


class TiedLM(nn.Module):
    """An embedding and an LM head sharing one weight (GPT-2's wte and lm_head)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


class TiedWidthNet(nn.Module):
    def __init__(self, attention: type, c: int, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(5, c)
        self.blocks = nn.ModuleList(attention(c) for _ in range(layers))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, 2 * c), nn.ReLU(),
                                                nn.Linear(2 * c, c)) for _ in range(layers))
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.embed(x)
        for attn, mlp in zip(self.blocks, self.mlps, strict=True):
            x = x + attn(x)
            x = x + mlp(x)
        return self.head(x)


#: a model of lazy layers, whose weights take their shapes at the first forward
LAZY_FILE = """
import torch
from torch import nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.LazyLinear(16), nn.LazyLinear(4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))
"""


class PositionsFromLength(nn.Embedding):
    """BART's learned position embedding: its own forward reads its input's length only."""

    def forward(self, x):
        return super().forward(torch.arange(x.shape[1]).expand(x.shape[0], -1))


class PositionsFromValues(nn.Embedding):
    """An embedding whose own forward reads its input's values (rounded to indices)."""

    def forward(self, x):
        return super().forward(x.abs().long() % self.num_embeddings)


class EmbedsThenPositions(nn.Module):
    def __init__(self, positions: type):
        super().__init__()
        self.tok, self.pos = nn.Embedding(20, 8), positions(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        emb = self.tok(ids)
        return self.head(emb + self.pos(emb[:, :, -1]))  # (as BART's encoder calls it)

