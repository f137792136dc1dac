"""Every component id of the app, in one place (layout, callbacks and browser tests import
these names instead of repeating strings).

Ids are plain strings so tests can address them as CSS selectors (``#graph``).
"""

# -- page-level state (dcc.Store) ---------------------------------------------------------------
SESSION = "session"  #: the browser session id (server-side state is keyed by it)
GRAPH_REV = "graph-rev"  #: bumped whenever the current model/graph changes
VIEW_REV = "view-rev"  #: bumped whenever the drawn elements change (collapse, new graph)
SELECTION = "selection"  #: {"kind": "op"|"module", "name": ...} of the inspected element
SHOWN = "selection-shown"  #: SELECTION again, set by the client once its highlight is drawn
PREVIEW_REV = "preview-rev"  #: bumped when a preview is computed or cleared
DBLTAP = "dbltap"  #: written by the client on a double-click on a node
DESELECT = "deselect"  #: written by the client on a click on the background or Escape
ZOOM_TARGET = "zoom-target"  #: element ids the client should zoom to
FIT_DONE = "fit-done"  #: dummy output of client-side callbacks
FIT_HINT = "fit-hint"  #: shown by the client when Fit leaves the graph too small to read
STYLE_GROUP = "style-group"  #: selection + its pruning group (element ids the client marks)
STYLE_PREVIEW = "style-preview"  #: stylesheet rules: new widths after a preview
GROUP_EDIT = "group-edit"  #: the override and ignore controls (shown when there is a group)
STYLE_LEGEND = "style-legend"  #: stylesheet rules: the op type picked in the legend
STYLE_SEARCH = "style-search"  #: stylesheet rules: search matches

# -- header ---------------------------------------------------------------------------------------
MODEL_PICKER = "model-picker"
UPLOAD = "upload"
MODEL_INFO = "model-info"
MESSAGE = "message"

# -- graph ----------------------------------------------------------------------------------------
GRAPH = "graph"  #: the Cytoscape component
GRAPH_LOADING = "graph-loading"
LEGEND = "legend"
LEGEND_ITEM = "legend-item"  #: pattern-matching type: {"type": LEGEND_ITEM, "op": "conv"}
SEARCH = "search"
SEARCH_INFO = "search-info"
FIT = "fit"
TOGGLE_MODULE = "toggle-module"  #: collapse/expand the selected module
EXPAND_ALL = "expand-all"
COLLAPSE_ALL = "collapse-all"
EXPORT_PNG = "export-png"
EXPORT_SVG = "export-svg"
VIEW_INFO = "view-info"

# -- inspector ------------------------------------------------------------------------------------
INSPECTOR = "inspector"
GROUP_SIDE = "group-side"  #: "out" / "in" toggle
GROUP_PICK = "group-pick"  #: which group when several touch the node
GROUP_PANEL = "group-panel"
GROUP_CONTROLS = "group-controls"
OVERRIDE_RATIO = "override-ratio"
OVERRIDE_SET = "override-set"
OVERRIDE_CLEAR = "override-clear"
IGNORE_TOGGLE = "ignore-toggle"
MODULE_CONTROLS = "module-controls"  #: shown for a module: ignore every layer inside
MODULE_IGNORE = "module-ignore"
#: a module's ratio: every group rooted inside it (as ``prune --override NAME=R``)
MODULE_RATIO = "module-ratio"
MODULE_RATIO_SET = "module-ratio-set"
MODULE_RATIO_CLEAR = "module-ratio-clear"
OUTPUT_CONTROLS = "output-controls"  #: shown for a model output: let its width change
FREE_OUTPUT = "free-output"
#: in a group panel, for each output that alone holds the group: {"type": FREE_HELD,
#: "output": its path}, a button that lets it change width
FREE_HELD = "free-held"

# -- pruning --------------------------------------------------------------------------------------
IMPORTANCE = "importance"
RATIO = "ratio"
MODE = "mode"  #: "uniform" / "global"
ROUND_TO = "round-to"
BATCH_ROW = "batch-row"  #: the batch controls, shown for the importances that run one
BATCH_UPLOAD = "batch-upload"  #: a .safetensors batch of inputs for Taylor/usage scores
BATCH_INFO = "batch-info"  #: which inputs Taylor/usage scores come from
BATCH_CLEAR = "batch-clear"  #: back to the example inputs
PREVIEW = "preview"  #: the preview button
APPLY = "apply"
UNDO = "undo"
RESET = "reset"
BUSY = "busy"  #: what a running preview or apply is doing (empty when idle)
PLAN_INFO = "plan-info"  #: overrides and ignores in force
PREVIEW_PANEL = "preview-panel"
PREVIEW_PARAMS = "preview-params"
PREVIEW_MACS = "preview-macs"
WIDTH_CHART = "width-chart"
SCORE_CHART = "score-chart"
WIDTH_CHART_BOX = "width-chart-box"  #: holds WIDTH_CHART once a preview exists
SCORE_CHART_BOX = "score-chart-box"  #: holds SCORE_CHART once a group is selected
SENSITIVITY = "sensitivity"  #: prunes each group alone and charts how far the outputs move
SENSITIVITY_CHART = "sensitivity-chart"
SENSITIVITY_BOX = "sensitivity-box"  #: holds SENSITIVITY_CHART once measured
STYLE_BASE = "style-base"  #: base stylesheet + highlight class rules, composed in the browser
HISTORY = "history"

# -- export ---------------------------------------------------------------------------------------
DOWNLOAD = "download"  #: the checkpoint (.zip) button
TIME_FORWARD = "time-forward"  #: times the last round's model against the one before it
DOWNLOAD_GRAPH = "download-graph"
DOWNLOAD_GROUPS = "download-groups"
DOWNLOAD_FILE = "download-file"  #: the dcc.Download component
#: pattern-matching type of the "add model.pt2" offer in the message that hands over a
#: checkpoint: {"type": DOWNLOAD_PT2, "stage": the stage's key}
DOWNLOAD_PT2 = "download-pt2"
