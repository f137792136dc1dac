"""The torch-only core: op types, tracing, groups, pruning, export. Never imports Dash."""

from .errors import DepViewError
from .graph import Edge, Graph, Node
from .optypes import OpGroup, OpType, classify, register_layer, unregister_layer
from .spec import LoadedModel, load_model
from .trace import build_graph

__all__ = [
    "DepViewError", "Edge", "Graph", "Node", "OpGroup", "OpType", "classify", "register_layer",
    "unregister_layer", "LoadedModel", "load_model", "build_graph",
]
