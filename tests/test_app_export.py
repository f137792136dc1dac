"""Downloads: the checkpoint zip reloads without pickle; graph and groups JSON."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from viewer.app.callbacks import export as cb
from viewer.app.callbacks.model import load_entry
from viewer.app.callbacks.prune import apply_round
from viewer.app.state import SessionStore
from viewer.core.errors import DepViewError

export = pytest.importorskip("viewer.core.export")
SETTINGS = {"importance": "l1", "ratio": 0.4, "global_": False, "round_to": 1}


@pytest.fixture
def store():
    s = SessionStore()
    load_entry(s, "sid", "demo:cnn")
    return s


def _reload(data: bytes, tmp_path):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(tmp_path)
    return export.load_pruned(tmp_path)


def test_checkpoint_needs_an_applied_round(store):
    with pytest.raises(DepViewError, match="apply a pruning round first"):
        cb.checkpoint_zip(store, "sid")


def test_checkpoint_zip_reloads_to_the_pruned_model(store, tmp_path):
    apply_round(store, "sid", SETTINGS)
    data, name = cb.checkpoint_zip(store, "sid")
    assert name == "demo-cnn-pruned-round1.zip"
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert {"model.safetensors", "plan.json", "report.json"} <= names
    model = _reload(data, tmp_path)
    pruned = store.session("sid").stage.model
    x = store.session("sid").base.inputs
    with torch.no_grad():
        assert torch.allclose(model(*x), pruned(*x), atol=1e-6)


def test_two_rounds_export_composes_the_history(store, tmp_path):
    apply_round(store, "sid", SETTINGS)
    apply_round(store, "sid", {**SETTINGS, "ratio": 0.3})
    data, name = cb.checkpoint_zip(store, "sid")
    assert name.endswith("round2.zip")
    plan = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("plan.json"))
    assert len(plan["rounds"]) == 2
    model = _reload(data, tmp_path)
    pruned = store.session("sid").stage.model
    x = store.session("sid").base.inputs
    with torch.no_grad():
        assert torch.allclose(model(*x), pruned(*x), atol=1e-6)


def test_graph_and_groups_json(store):
    text, name = cb.graph_json(store, "sid")
    g = json.loads(text)
    assert name == "demo-cnn-graph.json" and len(g["nodes"]) == 18 and "op_types" in g
    text, name = cb.groups_json(store, "sid")
    groups = json.loads(text)["groups"]
    assert name == "demo-cnn-groups.json"
    assert all({"id", "members", "reason", "prunable"} <= set(r) for r in groups)
    assert any(not r["prunable"] and r["reason"] for r in groups)  # the output layer
