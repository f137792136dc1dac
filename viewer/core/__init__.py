"""The torch-only core: op types, tracing, groups, pruning, export. Never imports Dash."""

from .errors import DepViewError
from .export import check_dir, export_dir, load_pruned
from .graph import Edge, Graph, Node
from .groups import Group, all_groups, group_of
from .optypes import OpGroup, OpType, classify, register_layer, unregister_layer
from .plan import Plan
from .prune import Pruner
from .spec import LoadedModel, load_model
from .trace import build_graph

__all__ = [
    "DepViewError", "Edge", "Graph", "Node", "OpGroup", "OpType", "classify", "register_layer",
    "unregister_layer", "LoadedModel", "load_model", "build_graph", "Group", "all_groups",
    "group_of", "Plan", "Pruner", "export_dir", "load_pruned", "check_dir",
]
