"""DepView: see a PyTorch model as a typed dependency graph and prune it structurally.

    >>> import viewer
    >>> lm = viewer.load_model("demo:resnet")
    >>> g = viewer.build_graph(lm.model, lm.inputs)
"""

from .core import (
    DepViewError,
    Graph,
    LoadedModel,
    OpGroup,
    OpType,
    build_graph,
    classify,
    load_model,
    register_layer,
    unregister_layer,
)

__all__ = [
    "DepViewError", "Graph", "LoadedModel", "OpGroup", "OpType", "build_graph", "classify",
    "load_model", "register_layer", "unregister_layer",
]
