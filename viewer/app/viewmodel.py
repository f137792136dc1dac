"""The view-model: a core :class:`~viewer.core.graph.Graph` turned into Cytoscape elements.

:func:`build_view` is the one place that decides what is drawn: one node per op, one compound
node per module (``data.parent`` nests them as the module hierarchy does), a collapsed module
as a single summary node, edges labelled with tensor shapes, and ``preset`` positions from a
layered (Sugiyama) layout computed here with python-igraph — in-browser layouts die on large
graphs. Pure: no Dash import, no torch calls; the app caches results per (graph, collapse set).

    >>> view = build_view(graph, collapsed={"layer1"})
    >>> view.rep[graph.node("layer1.0.conv1").id]     # drawn inside the collapsed module
    'g5c1d09e2_m3'

Element ids are CSS-safe (``n12`` for node 12, ``m3`` for a module, ``e_n4_m3`` for the edge
between two drawn elements) so the stylesheet can address them with ``#id`` selectors;
highlighting changes only the stylesheet. Every id starts with the graph's
:func:`structure_tag`: Cytoscape patches an element it already holds under the same id, and it
cannot move a node to another parent box or an edge to other ends that way (nor keep a node
whose old parent box goes away). So two graphs of different structure share no id, and the
browser replaces the drawing whole; a pruned copy of a model (same ops, new widths) keeps its
ids, and the drawing is patched in place. An edge's id names its two ends, so collapsing a
module never reuses an edge id for other ends either.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from viewer.core.graph import Graph, Node
from viewer.core.groups import in_channel_dim, out_channel_dim
from viewer.core.optypes import STYLES, OpGroup, OpType

X_GAP = 200  #: px between Sugiyama columns
Y_GAP = 84  #: px between layers
MAX_NAME = 26  #: longest node name drawn before it is shortened with an ellipsis
DEFAULT_MAX_VISIBLE = 400  #: past this many drawn nodes a page gets slow: collapse modules



@dataclass(frozen=True)
class View:
    """What the browser draws for one graph and one set of collapsed modules.

    ``rep[node_id]`` is the element drawing that node (itself, or its outermost collapsed
    module); ``tensor_edges[(node_id, port)]`` the edge elements carrying that tensor;
    ``module_ids[path]`` the element id of each module (drawn or not).
    """

    elements: list[dict]
    rep: dict[int, str]
    tensor_edges: dict[tuple[int, int], tuple[str, ...]]
    module_ids: dict[str, str]
    collapsed: frozenset[str]
    types: dict[str, int] = field(default_factory=dict)  #: op type value -> node count
    boxes: tuple[str, ...] = ()  #: the box each graph node is drawn in (:func:`drawn_boxes`)

    @cached_property
    def data(self) -> dict[str, dict]:
        """element id -> its ``data`` dict."""
        return {e["data"]["id"]: e["data"] for e in self.elements}

    @cached_property
    def path_of(self) -> dict[str, str]:
        """module element id -> module path."""
        return {eid: path for path, eid in self.module_ids.items()}

    @property
    def n_nodes(self) -> int:
        """Drawn nodes that are not expanded compound boxes."""
        return sum(1 for e in self.elements
                   if "source" not in e["data"] and not e["data"].get("compound"))

    def elements_of(self, node_ids: Iterable[int]) -> list[str]:
        """Element ids drawing the given graph nodes (deduplicated, in order)."""
        return list(dict.fromkeys(self.rep[i] for i in node_ids if i in self.rep))


# --------------------------------------------------------------------------------------------
# The module hierarchy.


def container_of(node: Node) -> str:
    """The module path a node is drawn inside: a module node sits in its parent module, a
    functional op in the module whose forward ran it (``""`` is the root, not drawn)."""
    if node.is_module:
        return node.module.rpartition(".")[0]
    return node.module


def drawn_boxes(graph: Graph) -> list[str]:
    """The module box each node is drawn in, by node id: :func:`container_of`, except that
    a module whose ops run at separate times (a norm called after the embedding and again
    at the end, a block a loop calls at two depths) gets a box per call: ``norm`` and
    ``norm:1``, ``blocks.0:1.attn`` inside the second. One box held both calls, stretched
    from the first to the last, and every module beside it was pushed aside: a shared norm's
    box spanned the page.

    A call ends where an op outside the module runs; nodes are in the order the ops ran, so
    calls with nothing in between (ALBERT's shared layer, called once per depth) stay one
    box. A source (parameter, buffer, constant) breaks no call: it joins the box of the next
    op of its module (made when first read, it comes right before its reader), else the
    last one before it.

        >>> [drawn_boxes(graph)[graph.node(n).id] for n in ("norm.mul", "norm.mul_2")]
        ['norm', 'norm:1']
    """
    nodes = graph.nodes
    out = [""] * len(nodes)
    calls: dict[str, int] = {}  # box without its own call -> index of its current call
    open_: list[str] = []  # the ancestors of the last op's container, outermost first
    last: dict[str, str] = {}  # module path -> its box at the last op
    before: dict[int, str] = {}  # source -> its module's box at the last op before it
    for n in nodes:
        if n.op_type in OpGroup.SOURCES:
            before[n.id] = last.get(container_of(n), "")
            continue
        box, chain = "", ancestors(container_of(n))
        for depth, path in enumerate(chain):
            part = path.rpartition(".")[2]
            base = f"{box}.{part}" if box else part  # (calls counted within the parent's)
            if depth >= len(open_) or open_[depth] != path:
                calls[base] = calls[base] + 1 if base in calls else 0
                del open_[depth:]
                open_.append(path)
            box = f"{base}:{calls[base]}" if calls[base] else base
            last[path] = box
        del open_[len(chain):]
        out[n.id] = box
    if before:
        nxt: dict[str, str] = {}  # module path -> its box at the next op (scanning back)
        for n in reversed(nodes):
            path = container_of(n)
            if n.id in before:
                out[n.id] = nxt.get(path) or before[n.id] or path
            elif out[n.id]:
                for p, b in zip(ancestors(path), ancestors(out[n.id]), strict=True):
                    nxt[p] = b
    return out


def module_path(box: str) -> str:
    """The module a box of :func:`drawn_boxes` draws: ``blocks.0:1.attn`` -> ``blocks.0.attn``.

        >>> module_path("blocks.0:1.attn")
        'blocks.0.attn'
    """
    if ":" not in box:
        return box
    return ".".join(part.rpartition(":")[0] if part.rpartition(":")[2].isdigit() else part
                    for part in box.split("."))


def selected_layer(selection: dict | None) -> str | None:
    """The name a selection's ignore boxes act on: an op's name, or the module a selected
    box draws (every call of it: ``norm`` for the box ``norm:1``)."""
    sel = selection or {}
    name = sel.get("name")
    if sel.get("kind") == "module" and isinstance(name, str):
        return module_path(name)
    return name


def ancestors(path: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]`` (outermost first); ``""`` -> ``[]``."""
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def module_tree(graph: Graph, boxes: list[str] | None = None) -> dict[str, list[int]]:
    """Every module box (:func:`drawn_boxes`) that contains drawn nodes -> ids of all nodes
    inside it (at any depth), sorted by path."""
    boxes = drawn_boxes(graph) if boxes is None else boxes
    inside: dict[str, list[int]] = defaultdict(list)
    for n in graph.nodes:
        for p in ancestors(boxes[n.id]):
            inside[p].append(n.id)
    return dict(sorted(inside.items()))


def structure_tag(graph: Graph, boxes: list[str] | None = None) -> str:
    """A short tag of what decides the drawing's elements: the ops (name, type, the module
    drawn around them) and the edges, not the tensor shapes. Graphs that differ in any of these
    get different tags; a pruned copy of a model (only widths change) gets the same one.

        >>> structure_tag(graph)
        'g5c1d09e2'
    """
    h = hashlib.blake2b(digest_size=4)
    boxes = drawn_boxes(graph) if boxes is None else boxes
    for n in graph.nodes:
        h.update(f"{n.id}|{n.name}|{n.op_type.value}|{boxes[n.id]}\n".encode())
    for e in graph.edges:
        h.update(f"{e.source}>{e.target}\n".encode())
    return "g" + h.hexdigest()


def module_element_ids(tree: Iterable[str], tag: str) -> dict[str, str]:
    """Module path -> element id (``{tag}_m{i}``, ``i`` its index in ``tree``)."""
    return {p: f"{tag}_m{i}" for i, p in enumerate(tree)}


def _op_id(node_id: int, tag: str) -> str:
    return f"{tag}_n{node_id}"


def _reps(graph: Graph, collapsed: frozenset[str], module_ids: dict[str, str],
          tag: str, boxes: list[str]) -> dict[int, str]:
    rep = {}
    for n in graph.nodes:
        rep[n.id] = _op_id(n.id, tag)
        for p in ancestors(boxes[n.id]):  # outermost collapsed ancestor wins
            if p in collapsed:
                rep[n.id] = module_ids[p]
                break
    return rep


def visible_count(graph: Graph, collapsed: Iterable[str]) -> int:
    """How many nodes are drawn (ops plus collapsed modules) for a collapse set."""
    boxes = drawn_boxes(graph)
    return _visible(graph, collapsed, module_tree(graph, boxes), boxes)


def _visible(graph: Graph, collapsed: Iterable[str], tree: dict[str, list[int]],
             boxes: list[str]) -> int:
    col = frozenset(p for p in collapsed if p in tree)
    return len(set(_reps(graph, col, module_element_ids(tree, "g"), "g", boxes).values()))


def default_collapsed(graph: Graph, max_visible: int = DEFAULT_MAX_VISIBLE) -> frozenset[str]:
    """Nothing for small graphs; otherwise every module at the deepest depth that keeps at
    most ``max_visible`` nodes drawn (depth 1 if none does)."""
    if len(graph.nodes) <= max_visible:
        return frozenset()
    boxes = drawn_boxes(graph)
    tree = module_tree(graph, boxes)
    depth = max((p.count(".") + 1 for p in tree), default=0)
    for d in range(depth, 0, -1):
        col = frozenset(p for p in tree if p.count(".") + 1 == d)
        if _visible(graph, col, tree, boxes) <= max_visible:
            return col
    return frozenset(p for p in tree if "." not in p)


# --------------------------------------------------------------------------------------------
# Labels.


def channels(node: Node) -> tuple[int | None, int | None]:
    """(input channels, output channels) as drawn on the node."""
    di, do = in_channel_dim(node), out_channel_dim(node)
    cin = node.in_shapes[0][di] if di is not None else None
    weight = node.param_shapes.get("weight")
    if node.op_type is OpType.EMBED and weight:  # its input is token ids: "in" is the vocab
        cin = weight[0]
    cout = node.out_shapes[0][do] if do is not None else None
    return cin, cout


def shape_text(shape: Iterable[int]) -> str:
    """``(1, 64, 8, 8)`` -> ``"1×64×8×8"``; a scalar is ``"scalar"``."""
    s = "×".join(str(int(x)) for x in shape)
    return s or "scalar"


def short_name(name: str, parent: str) -> str:
    """The name relative to its parent module, shortened to :data:`MAX_NAME` characters."""
    if parent and name.startswith(parent + "."):
        name = name[len(parent) + 1:]
    return name if len(name) <= MAX_NAME else "…" + name[-(MAX_NAME - 1):]


def width_line(node: Node, cin: int | None = None, cout: int | None = None) -> str:
    """The second label line: type and channel counts (``"Conv 3→16"``)."""
    label = STYLES[node.op_type].label
    c_in, c_out = channels(node)
    c_in = c_in if cin is None else cin
    c_out = c_out if cout is None else cout
    if node.op_type in OpGroup.PARAMETRIC and node.op_type is not OpType.PARAMETER \
            and c_in is not None and c_out is not None:
        return f"{label} {c_in}→{c_out}"
    shape = node.out_shapes[0] if node.out_shapes else (node.in_shapes[0] if node.in_shapes
                                                         else ())
    if len(shape) > 1 and node.op_type not in OpGroup.SOURCES:
        shape = shape[1:]  # the batch dim says nothing
    return f"{label} [{','.join(map(str, shape))}]"


def text_color(color: str) -> str:
    """Readable text colour on a ``#rrggbb`` background."""
    r, g, b = (int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return "#111827" if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "#ffffff"


def _box_width(label: str) -> int:
    longest = max((len(line) for line in label.split("\n")), default=0)
    return int(min(220, max(64, 6.4 * longest + 20)))


def _count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def node_params(node: Node) -> int:
    """Parameters the node owns (first call of a module only: reuse shares them; a
    persistent buffer's tensor is state, not a parameter)."""
    if node.call or node.op_type is OpType.BUFFER:
        return 0
    return sum(math.prod(s) for s in node.param_shapes.values())


# --------------------------------------------------------------------------------------------
# Layout.


BOX_PAD = 30  #: px a module box needs above (its label) or below its first/last layer


def layers_of(n: int, edges: list[tuple[int, int]], anchors: Iterable[int] = (),
              boxes: list[tuple[str, ...]] | None = None) -> list[int] | None:
    """Longest-path layers, except that vertices no ``anchor`` (model input) reaches —
    parameters, buffers, constants and what is computed from them only — sit right above
    their first consumer instead of all at the top. A chain of them that its first
    consumer's own module computes (``boxes[i]``: the module boxes vertex ``i`` is drawn
    in; EnCodec's padding arithmetic on buffers, a dozen ops before each conv) gets rows of
    its own between that consumer and the consumer's other inputs: in rows beside what ran
    before it, it made every layer's box span its predecessors' rows, and the boxes were
    packed side by side (a 10-layer codec 80,000 px wide). One that nothing drawn consumes
    (a check Python reads) ends beside the next reached vertex in vertex order (graph
    order: what ran after it). A vertex that computes only from what comes from outside
    its layer (:func:`_entries`), and that only its own module box reads, sits right above
    its first consumer: a decoder layer's cross-attention projects the encoder's output
    where it attends to it, not beside the encoder's last layer (each decoder layer's box
    spanned the rows of those before it, and they were packed side by side: BART 9,100 px
    wide, 3,500 now). None if the graph has a cycle."""
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        succs[a].append(b)
        preds[b].append(a)
    indeg = [len(p) for p in preds]
    order = [v for v in range(n) if not indeg[v]]
    for v in order:  # Kahn: appends while iterating
        for w in succs[v]:
            indeg[w] -= 1
            if not indeg[w]:
                order.append(w)
    if len(order) < n:
        return None
    reached = [False] * n
    for v in anchors:
        reached[v] = True
    for v in order:
        if reached[v]:
            for w in succs[v]:
                reached[w] = True
    # a reached vertex sits below its reached inputs, and below room for the longest
    # chain of unreached ones it is the first to consume, computed in its own box, when
    # that is two or more (a bare parameter sits beside the input it meets; the rotary
    # table a decoder's model computes once keeps to its own rows); a chain from another
    # box gets room only as far as it needs above the top row: it sat there whole, one
    # vertex beside the next (Gemma 2's masks and rotary table, 26 ops in its first row);
    # and a chain of its own box's submodules, even one parameter, gets room when the
    # vertex's other inputs come from another box: in the row above it sat in the last row
    # of the layer before, and the two layers' boxes were drawn side by side
    # (GPT-NeoX-Japanese's attention dense_bias, read by its layer's first op)
    layer = [0] * n
    chain = [0] * n  # unreached: the longest run of unreached vertices ending here
    homed = [False] * n  # unreached: a consumer has made room for it
    for v in order:
        if reached[v]:
            run = fit = own = 0
            for p in preds[v]:
                if not reached[p] and not homed[p]:
                    homed[p] = True
                    if boxes is None or boxes[p] == boxes[v]:
                        run = max(run, chain[p])
                    else:
                        fit = max(fit, chain[p])
                    if boxes is not None and boxes[v] and _within(boxes[p], boxes[v]) and \
                            all(boxes[q] != boxes[p] for q in preds[v] if reached[q]):
                        own = max(own, chain[p])
            run = max(run if run >= 2 else 0, own)
            layer[v] = max(max((layer[p] + 1 for p in preds[v] if reached[p]), default=0) +
                           run, fit)
        else:
            chain[v] = 1 + max((chain[p] for p in preds[v]), default=0)
            layer[v] = chain[v] - 1
    after = None  # the layer of the next reached vertex, in vertex order
    for v in range(n - 1, -1, -1):
        if reached[v]:
            after = layer[v]
        elif not succs[v] and preds[v] and after is not None:
            layer[v] = after
    sinks = _entries(order, preds, reached, boxes) if boxes else [False] * n
    for v in reversed(order):
        if not succs[v]:
            continue
        low = min(layer[w] for w in succs[v]) - 1
        if not reached[v]:
            layer[v] = max(0, low)
        elif sinks[v] and all(_within(boxes[w], boxes[v]) for w in succs[v]):
            layer[v] = max(layer[v], low)
    return layer


def _within(chain: tuple[str, ...], box: tuple[str, ...]) -> bool:
    """Is what is drawn in the boxes ``chain`` (outermost first) inside ``box``'s chain?"""
    return chain[:len(box)] == box


def _entries(order: list[int], preds: list[list[int]], reached: list[bool],
             boxes: list[tuple[str, ...]]) -> list[bool]:
    """Which vertices compute only from what comes from outside their layer: each input is
    made outside the box around their own box (the encoder's output, for a decoder layer's
    cross-attention), or is such a vertex of their own box (its key projection, for the
    transpose after it). ``order`` is topological."""
    out = [False] * len(boxes)
    for v in order:
        own = boxes[v]
        if reached[v] and own and preds[v]:
            out[v] = all(boxes[p][:len(own) - 1] != own[:-1] or (out[p] and boxes[p] == own)
                         for p in preds[v] if reached[p])
    return out


FAN_SPAN = 8  #: an edge over more layers than this is long
FAN_OUT = 2  #: a tensor with this many long edges or more is shared (a rotary table)


def layout_edges(n: int, edges: list[tuple[int, int]],
                 layers: list[int] | None) -> list[tuple[int, int]]:
    """The edges Sugiyama places vertices by: all but the long edges of a shared tensor.

    A decoder computes its rotary table (or a mask, or an encoder's output) once and every
    layer reads it. Each long edge becomes a column of Sugiyama's dummy vertices that keeps
    a lane free down the page: with two per layer, each layer sat one lane further right
    than the one before, its box stretched to meet its lane (a 32-layer Llama 14,500 px
    wide, its first screen empty but for the embedding). Without them the layers stack in
    one column; the edges are still drawn. A long edge that alone joins two parts of the
    graph is kept: Sugiyama lays parts side by side.

        >>> layout_edges(4, [(0, 1), (1, 2), (2, 3)], [0, 1, 2, 3])
        [(0, 1), (1, 2), (2, 3)]
    """
    if layers is None:
        return list(edges)
    long = Counter(a for a, b in edges if layers[b] - layers[a] > FAN_SPAN)
    root = list(range(n))

    def find(v: int) -> int:
        while root[v] != v:
            root[v] = root[root[v]]
            v = root[v]
        return v

    kept = []
    for a, b in sorted(edges, key=lambda e: layers[e[1]] - layers[e[0]]):
        ra, rb = find(a), find(b)
        if layers[b] - layers[a] <= FAN_SPAN or long[a] < FAN_OUT or ra != rb:
            kept.append((a, b))
            root[ra] = rb
    return kept


def one_layer_edges(n: int, edges: list[tuple[int, int]],
                    layers: list[int]) -> tuple[int, list[tuple[int, int]], list[int]]:
    """``edges`` with each one over more than one layer split into a chain through vertices
    of its own on the layers between: (vertex count, edges, layers); an edge that does not
    go down (a clamped chain's, in the top row) is left out. python-igraph 1.0's
    Sugiyama corrupts its memory on some graphs whose given layers leave long edges to it
    (random layered graphs of up to 40 vertices kill the process within 600 layouts; a
    layout sweep of the causal LMs died in it twice); it places these vertices as its own
    dummies, and the same graphs run clean.

        >>> one_layer_edges(3, [(0, 2), (1, 2)], [0, 1, 3])
        (6, [(0, 3), (3, 4), (4, 2), (1, 5), (5, 2)], [0, 1, 3, 1, 2, 2])
    """
    rows = list(layers)
    out: list[tuple[int, int]] = []
    total = n
    for a, b in edges:
        if layers[b] <= layers[a]:
            continue
        prev = a
        for lay in range(layers[a] + 1, layers[b]):
            rows.append(lay)
            out.append((prev, total))
            prev = total
            total += 1
        out.append((prev, b))
    return total, out, rows


NODE_GAP = 24  #: px at least between two things drawn side by side in one box
BOX_SIDE = 16  #: px a module box adds left and right of what it holds (its padding, border)
DEFAULT_WIDTH = 120  #: px of a vertex whose width is not given
LABEL_CHAR = 7.0  #: px per character of a module box's label (11 px bold)


def layered_positions(n: int, edges: list[tuple[int, int]],
                      boxes: list[tuple[str, ...]] | None = None,
                      anchors: Iterable[int] = (),
                      widths: list[float] | None = None,
                      box_widths: dict[str, float] | None = None) -> list[tuple[float, float]]:
    """Sugiyama positions (px) of ``n`` vertices, top to bottom, via python-igraph.

    Layers come from :func:`layers_of` (``anchors`` are the model inputs). ``boxes[i]`` lists
    the module boxes vertex ``i`` is drawn in (outermost first); a layer where boxes open or
    close gets extra room so box borders and labels clear the nodes. ``widths[i]`` is the
    drawn width of vertex ``i``, ``box_widths[b]`` the least width of box ``b`` (its label).

    Sugiyama orders the vertices of each layer but knows nothing of boxes: a box is drawn
    around all it holds, so a sibling box or node placed between two of its vertices ends up
    inside it. So :func:`pack_boxes` places the contents of every box (ops and inner boxes,
    each a rigid block over its rows of layers) side by side where their rows meet, keeping
    Sugiyama's order and, where nothing is in the way, its x.

        >>> layered_positions(3, [(0, 1), (1, 2)])
        [(0.0, 0.0), (0.0, 84.0), (0.0, 168.0)]
    """
    if n == 0:
        return []
    import igraph

    given = layers_of(n, edges, anchors, boxes)
    if given is None:  # a cycle (through collapsed modules): placed without what closes it
        given = layers_of(n, [(a, b) for a, b in edges if a < b], anchors, boxes)
    total, chains, rows = one_layer_edges(n, layout_edges(n, edges, given), given)
    g = igraph.Graph(n=total, edges=chains, directed=True)
    coords = g.layout_sugiyama(layers=rows, hgap=1, vgap=1, maxiter=60).coords[:n]
    layers = given  # (the y igraph gives each vertex is its given layer)
    n_layers = max(layers) + 1
    opens = [0] * (n_layers + 1)
    closes = [0] * (n_layers + 1)
    chains = boxes or [()] * n
    if boxes:
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for i, chain in enumerate(chains):
            for b in chain:
                first[b] = min(first.get(b, layers[i]), layers[i])
                last[b] = max(last.get(b, layers[i]), layers[i])
        for i, chain in enumerate(chains):
            opens[layers[i]] = max(opens[layers[i]], sum(first[b] == layers[i] for b in chain))
            closes[layers[i]] = max(closes[layers[i]], sum(last[b] == layers[i] for b in chain))
    y_of, y = [], 0.0
    for lay in range(n_layers):
        if lay:
            y += Y_GAP + BOX_PAD * (closes[lay - 1] + opens[lay])
        y_of.append(y)
    xs = pack_boxes([float(x) * X_GAP for x, _ in coords], layers, chains,
                    widths or [DEFAULT_WIDTH] * n, box_widths or {})
    return [(x, y_of[lay]) for x, lay in zip(xs, layers, strict=True)]


def pack_boxes(xs: list[float], layers: list[int], boxes: list[tuple[str, ...]],
               widths: list[float], box_widths: dict[str, float]) -> list[float]:
    """x of each vertex such that no two things in one box overlap: neither two vertices of a
    layer nor two boxes (or a box and a vertex) whose rows of layers meet.

    Each box is laid out on its own first (innermost first), as a rigid block in the same
    frame as ``xs``. Then, in the order of their centres, its contents are placed at their
    wanted x, or moved right just past whatever is already placed on any of their layers.

        >>> pack_boxes([0.0, 0.0], [0, 0], [("a",), ("b",)], [100, 100], {})
        [0.0, 156.0]
    """
    kids: dict[str | None, list] = defaultdict(list)  # box -> its vertices and inner boxes
    seen_box: set[str] = set()
    for i, chain in enumerate(boxes):
        kids[chain[-1] if chain else None].append(i)
        for depth, b in enumerate(chain):
            if b not in seen_box:
                seen_box.add(b)
                kids[chain[depth - 1] if depth else None].append(b)
    x = list(xs)
    members: dict[str, list[int]] = defaultdict(list)  # box -> its vertices at any depth
    for i, chain in enumerate(boxes):
        for b in chain:
            members[b].append(i)

    ext: dict[str, tuple[float, float, int, int]] = {}  # packed box -> its block

    def block(item) -> tuple[float, float, int, int]:
        """(left, right, first layer, last layer) of a vertex or a packed box."""
        if isinstance(item, int):
            half = widths[item] / 2
            return x[item] - half, x[item] + half, layers[item], layers[item]
        return ext[item]

    def pack(box: str | None) -> None:
        for k in kids[box]:
            if not isinstance(k, int):
                pack(k)
        placed = sorted(((block(k), k) for k in kids[box]), key=lambda t: (t[0][0] + t[0][1]))
        frontier: dict[int, float] = {}  # layer -> right edge of what is placed on it
        for (left, right, top, bottom), k in placed:
            edge = max((frontier[lay] for lay in range(top, bottom + 1) if lay in frontier),
                       default=None)
            shift = max(0.0, edge + NODE_GAP - left) if edge is not None else 0.0
            if shift:
                for v in ([k] if isinstance(k, int) else members[k]):
                    x[v] += shift
            for lay in range(top, bottom + 1):
                frontier[lay] = right + shift
            if not isinstance(k, int):
                ext[k] = (left + shift, right + shift, top, bottom)
        if box is None:
            return
        blocks = [block(k) for k in kids[box]]
        left = min(b[0] for b in blocks) - BOX_SIDE
        right = max(b[1] for b in blocks) + BOX_SIDE
        short = box_widths.get(box, 0.0) - (right - left)
        if short > 0:  # the label is wider than what the box holds: it sets the width
            left, right = left - short / 2, right + short / 2
        ext[box] = (left, right, min(b[2] for b in blocks), max(b[3] for b in blocks))

    pack(None)
    return x


# --------------------------------------------------------------------------------------------
# The one function.


def build_view(graph: Graph, collapsed: Iterable[str] = (),
               module_classes: dict[str, str] | None = None) -> View:
    """Cytoscape elements with preset positions for ``graph`` with ``collapsed`` modules.

    ``module_classes`` maps module paths to class names (``"BasicBlock"``) for compound labels.
    """
    classes = module_classes or {}
    drawn = drawn_boxes(graph)
    tree = module_tree(graph, drawn)
    tag = structure_tag(graph, drawn)
    module_ids = module_element_ids(tree, tag)
    col = frozenset(p for p in collapsed if p in tree)
    rep = _reps(graph, col, module_ids, tag, drawn)

    def hidden(path: str) -> bool:  # inside a collapsed module (not the module itself)
        return any(a in col for a in ancestors(path)[:-1])

    def parent_id(path: str) -> str | None:
        return module_ids[path] if path else None

    # nodes in graph order; compound boxes for expanded modules that are drawn
    node_els: list[dict] = []
    compounds: list[dict] = []
    path_of = {eid: p for p, eid in module_ids.items()}
    summaries: dict[str, list[Node]] = defaultdict(list)
    for n in graph.nodes:
        if rep[n.id] in path_of:
            summaries[path_of[rep[n.id]]].append(n)
    for path in tree:
        if hidden(path):
            continue
        parent = path.rpartition(".")[0]
        cls = classes.get(module_path(path), "")
        data = {"id": module_ids[path], "path": path, "kind": "module", "cls": cls}
        if parent:
            data["parent"] = module_ids[parent]
        if path in col:
            data.update(_summary(path, cls, summaries[path], graph, rep))
            node_els.append({"data": data, "classes": "module collapsed"})
        else:
            data["label"] = f"{path} · {cls}" if cls else path
            data["compound"] = True
            compounds.append({"data": data, "classes": "module"})
    for n in graph.nodes:
        if rep[n.id] != _op_id(n.id, tag):
            continue
        parent = drawn[n.id]
        style = STYLES[n.op_type]
        label = f"{short_name(n.name, container_of(n))}\n{width_line(n)}"
        data = {"id": rep[n.id], "label": label, "name": n.name, "op_type": n.op_type.value,
                "type_label": style.label, "color": style.color, "fg": text_color(style.color),
                "kind": "op", "w": _box_width(label)}
        if parent_id(parent):
            data["parent"] = parent_id(parent)
        node_els.append({"data": data, "classes": f"op t-{n.op_type.value}"})

    parents = {c["data"]["id"]: c["data"].get("parent") for c in compounds}

    # edges between drawn elements, merged when several tensors join the same two elements
    edge_els: list[dict] = []
    by_pair: dict[tuple[str, str], str] = {}
    tensor_edges: dict[tuple[int, int], list[str]] = defaultdict(list)
    for e in graph.edges:
        s, t = rep[e.source], rep[e.target]
        if s == t:
            continue
        eid = by_pair.get((s, t))
        if eid is None:
            # named by its ends: collapsing a module never gives an id other ends
            eid = by_pair[(s, t)] = f"{tag}_e_{s.removeprefix(tag + '_')}_" \
                                    f"{t.removeprefix(tag + '_')}"
            edge_els.append({"data": {"id": eid, "source": s, "target": t,
                                      "label": shape_text(e.shape)}})
        if eid not in tensor_edges[(e.source, e.source_port)]:
            tensor_edges[(e.source, e.source_port)].append(eid)

    index = {el["data"]["id"]: i for i, el in enumerate(node_els)}
    boxes = []
    for el in node_els:
        chain, pid = [], el["data"].get("parent")
        while pid is not None:
            chain.append(pid)
            pid = parents.get(pid)
        boxes.append(tuple(reversed(chain)))  # outermost first
    anchors = [i for i, el in enumerate(node_els) if el["data"].get("op_type") == "input"]
    label_widths = {c["data"]["id"]: LABEL_CHAR * len(c["data"]["label"]) + 2 * BOX_SIDE
                    for c in compounds}
    pos = layered_positions(len(node_els), [(index[s], index[t]) for s, t in by_pair], boxes,
                            anchors, [el["data"]["w"] for el in node_els], label_widths)
    for el, (x, y) in zip(node_els, pos, strict=True):
        el["position"] = {"x": x, "y": y}

    types = Counter(n.op_type.value for n in graph.nodes)
    return View(compounds + node_els + edge_els, rep,
                {k: tuple(v) for k, v in tensor_edges.items()}, module_ids, col, dict(types),
                tuple(drawn))


def _summary(path: str, cls: str, nodes: list[Node], graph: Graph, rep: dict[int, str]) -> dict:
    """Data of a collapsed module node: counts, parameters, shapes in and out."""
    me = rep[nodes[0].id] if nodes else ""
    ids = {n.id for n in nodes}
    ins = [e for n in nodes for e in graph.in_edges.get(n.id, []) if e.source not in ids]
    outs = [e for e in graph.edges if e.source in ids and e.target not in ids]
    params = sum(node_params(n) for n in nodes)
    kinds = Counter(STYLES[n.op_type].label for n in nodes)
    top = ", ".join(f"{k}×{v}" for k, v in kinds.most_common(2))
    io = ""
    if ins and outs:
        io = f"{shape_text(ins[0].shape[1:])} → {shape_text(outs[0].shape[1:])}"
    head = f"{path} · {cls}" if cls else path
    label = "\n".join(x for x in (head, f"{len(nodes)} ops · {_count(params)} params", io) if x)
    return {"label": label, "collapsed": True, "n_ops": len(nodes), "params": params,
            "types": top, "w": _box_width(label), "rep": me}
