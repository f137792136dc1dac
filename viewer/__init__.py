"""DepView: see a PyTorch model as a typed dependency graph and prune it structurally.

    >>> import viewer
    >>> lm = viewer.load_model("demo:resnet")
    >>> g = viewer.build_graph(lm.model, lm.inputs)
    >>> pruner = viewer.Pruner(lm.model, lm.inputs, graph=g, output_layers=lm.output_layers)
    >>> model = viewer.load_pruned("out/")   # an export directory, rebuilt without pickle
"""

from .core import (
    DepViewError,
    Graph,
    Group,
    LoadedModel,
    OpGroup,
    OpType,
    Plan,
    Pruner,
    all_groups,
    build_graph,
    check_dir,
    classify,
    export_dir,
    group_of,
    load_model,
    load_pruned,
    register_layer,
    unregister_layer,
)

__all__ = [
    "DepViewError", "Graph", "Group", "LoadedModel", "OpGroup", "OpType", "Plan", "Pruner",
    "all_groups", "build_graph", "check_dir", "classify", "export_dir", "group_of",
    "load_model", "load_pruned", "register_layer", "unregister_layer",
]
