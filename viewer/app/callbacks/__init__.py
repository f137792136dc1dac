"""Callbacks, one module per feature. Each module holds plain functions (the logic, called
by tests without a browser) and a ``register(app, store)`` that wires them to components."""

from . import export, graph, inspect, model, prune

__all__ = ["export", "graph", "inspect", "model", "prune"]
