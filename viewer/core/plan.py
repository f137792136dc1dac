"""What a plan is: the units each group loses, the stored sizes that follow, and the
names a user ignores (``NAME``, ``NAME:in``, ``NAME:out``, ``NAME:cell``; a NAME may be a
wildcard pattern, ``*.attn``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from .errors import DepViewError
from .graph import Graph, Node
from .groups import Group, Member
from .handlers import cell_port

IMPORTANCE = ("l1", "l2", "bn", "random", "taylor", "usage")
#: criteria that run the model on a batch (the example inputs unless one is given)
READS_BATCH = ("taylor", "usage")
#: criteria that score some groups by L1 instead (``plan.settings["scored_by_l1"]`` lists
#: them): the criterion's name in words, and what such a group has not (one, several)
FALLS_BACK = {"bn": ("BN scale", "a norm layer", "a norm layer"),
              "taylor": ("Taylor", "a gradient reaching it", "a gradient reaching them"),
              "usage": ("usage", "a router picking its units", "a router picking their units")}


def l1_fallback_text(importance: str, fell: list | None, n_scored: int | None = None,
                     label: str | None = None) -> str:
    """What the ``bn`` or ``usage`` importance did for the groups it cannot score (``fell``):
    it scored them by L1 magnitude. ``n_scored``: how many groups were scored in all;
    ``label``: how the criterion is named (its words in :data:`FALLS_BACK` by default).

    >>> l1_fallback_text("bn", [3, 5, 8])
    'BN scale: 3 groups have no norm layer and were scored by L1'
    >>> l1_fallback_text("usage", [1, 2], n_scored=2)
    'usage: no group has a router picking its units: all 2 were scored by L1'
    """
    n = len(fell or [])
    if not n or importance not in FALLS_BACK:
        return ""
    words, one, many = FALLS_BACK[importance]
    label = words if label is None else label
    if n == n_scored:
        return (f"{label}: the group has no {one[2:]} and was scored by L1" if n == 1 else
                f"{label}: no group has {one}: all {n} were scored by L1")
    return f"{label}: {n} group{'s' if n > 1 else ''} {'has' if n == 1 else 'have'} " \
           f"no {(one if n == 1 else many)[2:]} and {'was' if n == 1 else 'were'} scored by L1"


@dataclass
class Plan:
    """Which units of which groups go. ``removed[group_id] = sorted unit ids``."""

    removed: dict[int, list[int]]
    settings: dict = field(default_factory=dict)
    scores: dict[int, list[float]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)  # group id -> why it was left alone

    def to_dict(self) -> dict:
        return {"settings": self.settings,
                "removed": {str(k): v for k, v in self.removed.items()},
                "skipped": {str(k): v for k, v in self.skipped.items()}}

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())


@dataclass(frozen=True)
class SizeAttr:
    """A module attribute that a traced shape op read a fixed size from: GPT-2's
    ``split_size`` (``split(self.split_size)``), BLOOM's ``head_dim`` (``view(b, s,
    self.num_heads, 3, self.head_dim)``). Pruning that dim must set the attribute to the new size,
    or the pruned model splits or reshapes by the old one. Found by validation, never guessed:
    see :meth:`Pruner.validate_groups`. The new value is the new size of ``tensor`` (``size``
    before pruning) divided by ``parts``. With ``sizes``, the attribute is a list (or tuple)
    of a split's part sizes, ``torch.split(x, self.splits, 1)``: each becomes its part's kept
    width."""

    module: str  #: module path
    attr: str
    node: int  #: the split or reshape node
    tensor: tuple[int, int, int]  #: the tensor dim whose size it is: (node, port, dim)
    size: int
    parts: int = 1
    sizes: tuple[int, ...] = ()  #: a split's part sizes, when the attribute holds them all
    #: the attribute is a list or tuple holding the size as its item ``index``
    #: (``normalized_shape = (hidden,)``, ``nn.Unflatten``'s ``unflattened_size = (C, H, W)``)
    boxed: bool = False
    index: int = 0
    #: the size is that of positions ``[lo, hi)`` of ``tensor``'s dim (a slice's bound or
    #: width, Phi-3's ``qkv[..., :query_pos]``), not the whole dim: the new value counts the
    #: kept ones there
    span: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return f"{self.module}.{self.attr}" if self.module else self.attr


IGNORE_SIDES = ("in", "out", "cell")  # what an ignore protects: NAME:in, NAME:out, NAME:cell

SIDE_WORDS = {"in": "inputs", "out": "outputs", "cell": "cell units"}


def parse_ignore(items) -> set[tuple[str, str]]:
    """``["fc", "layer1.0.conv1:out"]`` -> {("fc", "in"), ("fc", "out"), ("fc", "cell"),
    ("layer1.0.conv1", "out")}: a bare name ignores every side (``cell``: the cell units of an
    LSTM with ``proj_size``, see :func:`ignore_side`)."""
    out: set[tuple[str, str]] = set()
    if isinstance(items, str):
        items = [items]  # one name, not its letters
    if items is not None and not isinstance(items, Iterable):
        raise DepViewError(f"ignore is a list of layer names, got {items!r}")
    for it in items or ():
        if not isinstance(it, str):
            raise DepViewError(f"ignore is a list of layer names, got {it!r} in it")
        name, sep, side = it.rpartition(":")
        if not sep or side not in IGNORE_SIDES:  # (a reused layer's calls are "fc:1")
            name, side = it, ""
        out |= {(name, s) for s in ([side] if side else IGNORE_SIDES)}
    return out


def ignore_strings(ignore: set[tuple[str, str]]) -> list[str]:
    """The ignores as :func:`parse_ignore` reads them back, sorted: a name ignored on every
    side is written bare (``plan.json``'s ``settings.ignore``)."""
    sides: dict[str, set[str]] = defaultdict(set)
    for name, side in ignore:
        sides[name].add(side)
    out: list[str] = []
    for name, s in sides.items():
        out += [name] if s >= set(IGNORE_SIDES) else [f"{name}:{side}" for side in s]
    return sorted(out)


def ignore_side(m: Member, node: Node, group: Group | None = None,
                graph: Graph | None = None) -> str:
    """The side of member ``m`` (of ``node``, in ``group``) an ignore names: "in" for its input
    channels, "cell" for an LSTM's cell units (``c_n``'s port, :func:`handlers.cell_port`: an
    LSTM with ``proj_size``), "out" for its other outputs. A bare parameter's (given its
    ``group`` and the ``graph``): "out" when the group holds the output of an op reading it
    (a weight's rows through ``F.linear``, a bias, a table, a layer scale), else "in" (its
    columns, which read the op's inputs)."""
    if m.side == "in":
        return "in"
    if m.side == "param":
        if group is None or graph is None:
            return "out"
        readers = {e.target for e in graph.consumers.get((m.node, 0), ())}
        return "out" if not readers or any(nid in readers for nid, _, _ in group.tensors) \
            else "in"
    return "cell" if m.port and m.port == cell_port(node) else "out"


def is_ignored(m: Member, side: str, ignore: set[tuple[str, str]]) -> bool:
    """Is ``side`` of member ``m`` ignored: its node or module named, or a module holding it
    (``layer1.0`` protects ``layer1.0.conv1``)?"""
    if (m.node_name, side) in ignore or (m.module, side) in ignore:
        return True
    parts = m.module.split(".")
    return any((".".join(parts[:i]), side) in ignore for i in range(1, len(parts)))


def is_pattern(name: str) -> bool:
    """Does a layer name hold a wildcard (``*.mlp``, ``layer?.0``)?"""
    return "*" in name or "?" in name


def match_pattern(pattern: str, names: Iterable[str]) -> list[str]:
    """The outermost of ``names`` that ``pattern`` matches, sorted (``*`` spans dots, as in
    :func:`fnmatch.fnmatchcase`; a module holding a match already covers it):
    ``*.attn*`` over {h.0.attn, h.0.attn.c_attn, h.1.attn} -> [h.0.attn, h.1.attn]."""
    hits = {n for n in names if n and fnmatchcase(n, pattern)}
    return sorted(n for n in hits if not any(".".join(n.split(".")[:i]) in hits
                                             for i in range(1, n.count(".") + 1)))


def within(path: str, names: set[str]) -> bool:
    """Is ``path`` one of ``names``, or inside one (``layer1.0.conv1`` within {"layer1"})?"""
    parts = path.split(".")
    return any(".".join(parts[:i]) in names for i in range(1, len(parts) + 1))
