"""End to end in real headless Chromium (dash[testing]'s ``dash_duo``; chrome options come from
``pytest_setup_options`` in conftest.py). What only a browser shows: the graph renders, a click
highlights a group, a collapsed module expands, preview numbers change, a download arrives.

Skipped when chromium or chromedriver is missing. Waits are for conditions, never sleeps.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import TWO_OUTPUTS_FILE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver"
                                          if Path("/usr/bin/chromedriver").is_file() else None)
if DRIVER and shutil.which("chromedriver") is None:  # selenium finds the driver on PATH
    os.environ["PATH"] = f"{Path(DRIVER).parent}{os.pathsep}{os.environ.get('PATH', '')}"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs chromium and chromedriver (apt: chromium chromium-driver)"),
]

from viewer.app import ids  # noqa: E402
from viewer.app.main import create_app  # noqa: E402
from viewer.app.state import ModelEntry  # noqa: E402

TIMEOUT = 60
HIGHLIGHT_RGB = "rgb(249,115,22)"  # styles.HIGHLIGHT, as Cytoscape reports it


def _until(dash_duo, condition, msg: str, timeout: float = TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(dash_duo.driver, timeout, poll_frequency=0.1).until(
        lambda d: condition(d), message=msg)


def _js(dash_duo, script: str, *args):
    return dash_duo.driver.execute_script(script, *args)


def _wait_graph(dash_duo, name: str) -> None:
    """Wait until Cytoscape draws a node called ``name`` (an op name or a module path)."""
    _until(dash_duo, lambda d: d.execute_script(
        "var q = arguments[0]; return !!(window.cy && window.cy.nodes().filter(function (n) {"
        " return n.data('name') === q || n.data('path') === q; }).length);", name),
        f"the graph never drew {name!r}")


def _node_id(dash_duo, name: str) -> str:
    return _js(dash_duo, "var q = arguments[0]; return window.cy.nodes().filter(function (n) {"
                         " return n.data('name') === q || n.data('path') === q; })[0].id();",
               name)


def _click_node(dash_duo, name: str, double: bool = False) -> str:
    """Click (or double-click) the drawn node ``name`` with a real pointer event."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    nid = _node_id(dash_duo, name)
    # bring it into view first (the page opens at the top of deep graphs), and wait until two
    # reads 0.1 s apart agree: a callback that redraws the graph (a new stylesheet after a
    # preview, a layout) can move the node between reading its place and clicking there
    seen: list = []

    def settled(_d) -> bool:
        seen.append(tuple(_js(dash_duo, """
            var cy = window.cy, n = cy.getElementById(arguments[0]);
            cy.stop(); cy.zoom(1); cy.center(n);
            var r = document.getElementById(arguments[1]).getBoundingClientRect();
            var p = n.renderedPosition();
            return [Math.round(r.left + p.x), Math.round(r.top + p.y)];""", nid, ids.GRAPH)))
        return len(seen) > 1 and seen[-1] == seen[-2]

    _until(dash_duo, settled, f"the node {name!r} never stayed in one place")
    x, y = seen[-1]
    actions = ActionBuilder(dash_duo.driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    if double:
        actions.pointer_action.double_click()
    else:
        actions.pointer_action.click()
    actions.perform()
    return nid


def _style(dash_duo, element_id: str, prop: str) -> str:
    return _js(dash_duo, "return window.cy.getElementById(arguments[0]).style(arguments[1]);",
               element_id, prop)


def _type(element, text: str) -> None:
    """Replace what a text box holds (select all + type: selenium's clear() is not seen by
    React, which then puts the old value back)."""
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text)


def _start(dash_duo, app) -> None:
    dash_duo.start_server(app)
    dash_duo.wait_for_element(f"#{ids.GRAPH}", timeout=TIMEOUT)


def test_page_loads_and_draws_the_demo_graph(dash_duo):
    _start(dash_duo, create_app())
    _wait_graph(dash_duo, "layer1.0.conv1")
    n_ops = _js(dash_duo, "return window.cy.nodes('.op').length;")
    assert n_ops == 55  # demo:resnet, every op drawn
    dash_duo.wait_for_contains_text(f"#{ids.MODEL_INFO}", "55 ops", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.LEGEND}", "Conv", timeout=TIMEOUT)
    severe = [e for e in dash_duo.get_logs() if e.get("level") == "SEVERE"]
    assert severe == []


def _drawn_whole(dash_duo) -> bool:
    """Cytoscape holds what the view line says is drawn, and no edge loops on one node."""
    info = dash_duo.find_element(f"#{ids.VIEW_INFO}").text
    n = _js(dash_duo, "var cy = window.cy; return cy.nodes('.op, .collapsed').length;")
    loops = _js(dash_duo, "return window.cy.edges().filter(function (e) {"
                          " return e.source().id() === e.target().id(); }).length;")
    return info.startswith(f"{n} drawn") and loops == 0


def test_switching_to_a_model_of_another_structure_draws_all_of_it(dash_duo):
    # element ids were reused across graphs: Cytoscape kept the old parent boxes, dropped the
    # children of the boxes that went away, and drew 7 of 19 ops (or failed with "Can not
    # create edge ... with nonexistant source") until the page was reloaded
    _start(dash_duo, create_app([ModelEntry("demo:cnn"), ModelEntry("demo:densenet"),
                                 ModelEntry("demo:resnet")]))
    _wait_graph(dash_duo, "features.0")
    for spec, name in [("demo:densenet", "features.0.0.cat"), ("demo:cnn", "features.0"),
                       ("demo:resnet", "layer1.0.conv1"), ("demo:densenet", "features.0.0.cat")]:
        dash_duo.select_dcc_dropdown(f"#{ids.MODEL_PICKER}", value=spec)
        _wait_graph(dash_duo, name)
        _until(dash_duo, lambda d: _drawn_whole(dash_duo),
               f"{spec} was not drawn whole: {dash_duo.find_element(f'#{ids.VIEW_INFO}').text}")
    severe = [e for e in dash_duo.get_logs() if e.get("level") == "SEVERE"]
    assert severe == []


def test_a_new_graph_opens_on_its_first_layer_when_the_input_is_far_from_it(dash_duo):
    """A new graph too wide for one screen opens at the model's input, with the layer that
    reads it. When a wide module box puts that layer far to one side (HF PVT's patch
    embedding), the page showed the input alone beside an empty box: it shows the layer."""
    _start(dash_duo, create_app())
    _wait_graph(dash_duo, "layer1.0.conv1")
    on_screen = _js(dash_duo, """
        var cy = window.cy, x = cy.nodes('[op_type = "input"]'), c = cy.nodes().filter(
            function (n) { return n.data('name') === 'conv1'; });
        cy.batch(function () {  // the input at the far left of a wide first row
            x.position({x: c.position('x') - 4 * cy.width(), y: x.position('y')});
            cy.nodes().filter(function (n) { return n.isChildless() && n.id() !== x.id() &&
                n.id() !== c.id() && n.position('y') < c.position('y') + 600; })
              .forEach(function (n, i) { n.position({x: n.position('x') + 40 * i,
                                                     y: n.position('y')}); });
        });
        window.dash_clientside.depview.zoomTo({top: true, n: 0});
        var p = c.renderedPosition();
        return [p.x >= 0 && p.x <= cy.width() && p.y >= 0 && p.y <= cy.height(),
                cy.zoom()];""")
    assert on_screen[0], on_screen


def test_a_language_model_opens_on_its_input_embedding_and_first_layer(dash_duo):
    """The page opened on the input and the embedding that reads it, centred on them: the
    rotary table's ops beside them took the rest of the screen, and none of the first
    layer was in view. It shows the first layer's first ops with them."""
    _start(dash_duo, create_app([ModelEntry("demo:llama")]))
    _wait_graph(dash_duo, "layers.0.attn_norm.pow")

    def shown(_d) -> bool:
        return all(_js(dash_duo, """
            var cy = window.cy;
            return ['tokens', 'embed_tokens', 'layers.0.attn_norm.pow'].map(function (q) {
                var p = cy.nodes().filter(function (n) { return n.data('name') === q; })[0]
                    .renderedPosition();
                return p.x >= 0 && p.x <= cy.width() && p.y >= 0 && p.y <= cy.height();
            });"""))

    _until(dash_duo, shown, "the input, the embedding and the first layer are not all in view")


def test_fit_says_when_the_whole_graph_is_too_small_to_read(dash_duo):
    _start(dash_duo, create_app())
    _wait_graph(dash_duo, "layer1.0.conv1")
    hint = dash_duo.find_element(f"#{ids.FIT_HINT}")
    assert not hint.is_displayed()
    dash_duo.find_element(f"#{ids.FIT}").click()
    _until(dash_duo, lambda d: hint.is_displayed(), "Fit never showed its hint")
    zoom = _js(dash_duo, "return window.cy.zoom();")
    assert zoom < 0.3 and f"{max(1, round(zoom * 100))}% is too small to read" in hint.text
    assert "Collapse all" in hint.text
    _js(dash_duo, "window.cy.zoom(1);")  # the view moves: the hint goes
    _until(dash_duo, lambda d: not hint.is_displayed(), "the hint stayed after a zoom")
    # a move the instant the hint shows hides it too (it stayed when the move came before
    # the listener, added 50 ms later: a test's zoom under load)
    _js(dash_duo, f"""
        var hint = document.getElementById('{ids.FIT_HINT}');
        new MutationObserver(function (changes, obs) {{
            if (hint.style.display !== 'block') {{ return; }}
            obs.disconnect();
            window.cy.zoom(1);
            window.depviewHintShown = true;
        }}).observe(hint, {{attributes: true}});""")
    dash_duo.find_element(f"#{ids.FIT}").click()
    _until(dash_duo, lambda d: _js(dash_duo, "return window.depviewHintShown === true;"),
           "Fit never showed its hint again")
    _until(dash_duo, lambda d: not hint.is_displayed(), "the hint stayed after a quick zoom")


def test_clicking_a_conv_highlights_its_group_and_inspects_it(dash_duo):
    _start(dash_duo, create_app())
    _wait_graph(dash_duo, "layer1.0.conv1")
    _click_node(dash_duo, "layer1.0.conv1")
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "OpType.CONV", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "layer1.0.conv2", timeout=TIMEOUT)
    member = _node_id(dash_duo, "layer1.0.bn1")
    outsider = _node_id(dash_duo, "layer3.0.conv1")
    _until(dash_duo, lambda d: _style(dash_duo, member, "border-color") == HIGHLIGHT_RGB,
           "the group's BatchNorm was not highlighted")
    assert float(_style(dash_duo, outsider, "opacity")) < 0.5
    # the ReLU the channels pass through (no weight, not a member) stays readable, dashed
    relu = _node_id(dash_duo, "layer1.0.relu")
    assert float(_style(dash_duo, relu, "opacity")) == 1
    assert _style(dash_duo, relu, "border-style") == "dashed"
    assert _style(dash_duo, relu, "border-color") == HIGHLIGHT_RGB


def _click_background(dash_duo) -> None:
    """A real click on a point of the graph that no element covers."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    x, y = _js(dash_duo, """
        var cy = window.cy, r = document.getElementById(arguments[0]).getBoundingClientRect();
        var boxes = cy.elements().map(function (e) { return e.renderedBoundingBox(); });
        for (var py = 20; py < r.height - 20; py += 15) {
          for (var px = 20; px < r.width - 20; px += 15) {
            var hit = boxes.some(function (b) {
              return px >= b.x1 - 5 && px <= b.x2 + 5 && py >= b.y1 - 5 && py <= b.y2 + 5; });
            if (!hit) { return [Math.round(r.left + px), Math.round(r.top + py)]; }
          }
        }
        return null;""", ids.GRAPH)
    actions = ActionBuilder(dash_duo.driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.pointer_action.click()
    actions.perform()


def test_a_selection_clears_and_a_legend_highlight_ends_with_its_model(dash_duo):
    # (and the override controls show only for a node with a group)
    from selenium.webdriver.common.keys import Keys

    _start(dash_duo, create_app([ModelEntry("demo:resnet"), ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "layer1.0.conv1")
    outsider = _node_id(dash_duo, "layer3.0.conv1")

    def faded() -> bool:
        return float(_style(dash_duo, outsider, "opacity")) < 0.5

    edit = dash_duo.find_element(f"#{ids.GROUP_EDIT}")
    for clear in ("background", "escape"):
        _click_node(dash_duo, "layer1.0.conv1")  # (again after a clear: the same node)
        dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "layer1.0.conv2",
                                        timeout=TIMEOUT)
        _until(dash_duo, lambda d: faded(), "the click faded nothing")
        assert edit.is_displayed()  # (the override and ignore controls: there is a group)
        if clear == "background":
            _click_background(dash_duo)
        else:
            dash_duo.find_element("body").send_keys(Keys.ESCAPE)
        _until(dash_duo, lambda d: not faded(), f"a {clear} click left the graph faded")
        dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "Click a node to inspect it",
                                        timeout=TIMEOUT)
    # the output holds no group: nothing to override or ignore is offered
    _click_node(dash_duo, "output")
    _until(dash_duo, lambda d: not edit.is_displayed(),
           "the override controls stayed for a node without a group")
    # a legend type: shown as pressed; picking it clears a selection (whose fade would hide
    # it); another model drawn ends it
    _click_node(dash_duo, "layer1.0.conv1")
    _until(dash_duo, lambda d: faded(), "the click faded nothing")
    chip = dash_duo.find_element(f"#{ids.LEGEND} .legend-item[id*='\\\"conv\\\"']")
    chip.click()
    _until(dash_duo, lambda d: "active" in chip.get_attribute("class"),
           "the legend type picked does not show as pressed")
    assert chip.get_attribute("aria-pressed") == "true"  # (to a screen reader too)
    bn = _node_id(dash_duo, "layer1.0.bn1")
    _until(dash_duo, lambda d: not faded() and float(_style(dash_duo, bn, "opacity")) < 0.5,
           "the legend's convs are not the only ones drawn in full")
    dash_duo.select_dcc_dropdown(f"#{ids.MODEL_PICKER}", value="demo:cnn")
    _wait_graph(dash_duo, "features.0")
    _until(dash_duo, lambda d: not d.find_elements("css selector", ".legend-item.active")
           and float(_style(dash_duo, _node_id(dash_duo, "fc"), "opacity")) == 1,
           "the legend highlight outlived its model")


def test_search_answers_while_typing_and_never_moves_the_buttons(dash_duo):
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    fit = dash_duo.find_element(f"#{ids.FIT}")
    x = fit.location["x"]
    dash_duo.find_element(f"#{ids.SEARCH}").send_keys("batchnorm")  # no Enter
    dash_duo.wait_for_contains_text(f"#{ids.SEARCH_INFO}", "3 ops match", timeout=TIMEOUT)
    assert fit.location["x"] == x


def test_search_hits_too_far_apart_to_read_are_shown_one_at_a_time(dash_duo):
    # fitted together, 25 LayerNorms down GPT-2 were specks; 15 BatchNorms down the resnet too
    from selenium.webdriver.common.keys import Keys

    _start(dash_duo, create_app())
    _wait_graph(dash_duo, "layer1.0.conv1")
    box = dash_duo.find_element(f"#{ids.SEARCH}")
    box.send_keys("BatchNorm")
    dash_duo.wait_for_contains_text(f"#{ids.FIT_HINT}", "Match 1 of 15: bn1", timeout=TIMEOUT)
    centred = "var cy = window.cy, p = cy.getElementById(arguments[0]).renderedPosition(); " \
              "return Math.abs(p.x - cy.width() / 2) < 40 && Math.abs(p.y - cy.height() / 2) " \
              "< 40 && cy.zoom() >= 1;"
    # Enter picks the match on screen (selected, as a click selects: the keyboard's way to
    # the inspector), then steps
    box.send_keys(Keys.ENTER)
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "bn1", timeout=TIMEOUT)
    assert "Match 1 of 15: bn1" in dash_duo.find_element(f"#{ids.FIT_HINT}").text
    box.send_keys(Keys.ENTER)
    dash_duo.wait_for_contains_text(f"#{ids.FIT_HINT}", "Match 2 of 15: layer1.0.bn1",
                                    timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "layer1.0.bn1", timeout=TIMEOUT)
    bn = _node_id(dash_duo, "layer1.0.bn1")
    _until(dash_duo, lambda d: _js(dash_duo, centred, bn), "the second match is not on screen")
    box.send_keys(Keys.SHIFT, Keys.ENTER)
    dash_duo.wait_for_contains_text(f"#{ids.FIT_HINT}", "Match 1 of 15", timeout=TIMEOUT)
    _type(box, "layer1.0.conv1")  # one hit: zoomed to, no stepping
    _until(dash_duo, lambda d: not d.find_element("id", ids.FIT_HINT).is_displayed(),
           "the hint stayed for a single match")
    box.send_keys(Keys.ENTER)  # picked from the keyboard: its group is shown
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "layer1.0.conv1", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "layer1.0.bn1", timeout=TIMEOUT)
    assert not dash_duo.find_element(f"#{ids.FIT_HINT}").is_displayed()  # (no "1 of 1")
    # a query without matches: Enter stepped through the last hits of another query
    _type(box, "BatchNorm")
    dash_duo.wait_for_contains_text(f"#{ids.FIT_HINT}", "Match 1 of 15", timeout=TIMEOUT)
    _type(box, "nosuch")
    dash_duo.wait_for_contains_text(f"#{ids.SEARCH_INFO}", "no match", timeout=TIMEOUT)
    box.send_keys(Keys.ENTER)
    _until(dash_duo, lambda d: not d.find_element("id", ids.FIT_HINT).is_displayed(),
           "Enter stepped through another query's matches")


def test_enter_pressed_before_the_search_answers_picks_its_first_match(dash_duo):
    # typed and Enter at once (as one types a name one knows): the search waits for typing
    # to pause and for the server, and Enter, with no hits yet, did nothing
    from selenium.webdriver.common.keys import Keys

    _start(dash_duo, create_app())
    _wait_graph(dash_duo, "layer1.0.conv1")
    box = dash_duo.find_element(f"#{ids.SEARCH}")
    box.send_keys("layer2.0.conv1", Keys.ENTER)
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "layer2.0.conv1", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "layer2.0.bn1", timeout=TIMEOUT)
    box.send_keys(Keys.CONTROL, "a")  # (hits shown one at a time; Shift+Enter: the last)
    box.send_keys("BatchNorm", Keys.SHIFT, Keys.ENTER)
    dash_duo.wait_for_contains_text(f"#{ids.FIT_HINT}", "Match 15 of 15", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "layer3.1.bn2", timeout=TIMEOUT)


def test_clicking_a_concat_shows_its_offsets(dash_duo):
    _start(dash_duo, create_app([ModelEntry("demo:densenet")]))
    _wait_graph(dash_duo, "features.0.0.cat")
    _click_node(dash_duo, "features.0.0.cat")
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "offsets", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "0, 16", timeout=TIMEOUT)
    assert dash_duo.find_elements(f"#{ids.INSPECTOR} .segbar .seg")


def test_a_collapsed_module_expands_on_double_click(dash_duo):
    _start(dash_duo, create_app(max_visible=30))  # resnet's blocks start collapsed
    _wait_graph(dash_duo, "layer1.0")
    assert _js(dash_duo, "return window.cy.nodes('.op').filter(function (n) {"
                         " return n.data('name') === 'layer1.0.conv1'; }).length;") == 0
    _click_node(dash_duo, "layer1.0", double=True)
    _wait_graph(dash_duo, "layer1.0.conv1")
    dash_duo.wait_for_contains_text(f"#{ids.VIEW_INFO}", "collapsed", timeout=TIMEOUT)


def test_a_collapsed_module_is_ignored_from_its_inspector(dash_duo):
    # a module had no ignore boxes: protecting a block meant ticking each layer inside
    _start(dash_duo, create_app(max_visible=30))  # resnet's blocks start collapsed
    _wait_graph(dash_duo, "layer1.0")
    _click_node(dash_duo, "layer1.0")
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "BasicBlock", timeout=TIMEOUT)
    _until(dash_duo, lambda d: d.find_element("id", ids.MODULE_CONTROLS).is_displayed(),
           "the module's ignore boxes never showed")
    box = next(e for e in dash_duo.find_elements(f"#{ids.MODULE_IGNORE} label")
               if "outputs" in e.text)
    box.click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Ignoring layer1.0's outputs",
                                    timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.PLAN_INFO}", "ignore layer1.0:out",
                                    timeout=TIMEOUT)
    # its groups are kept whole now: no ratio for them, and the button says why
    _until(dash_duo, lambda d: not d.find_element("id", ids.MODULE_RATIO_SET).is_enabled(),
           "a ratio stayed offered for a module whose groups are all ignored")
    assert "outputs are ignored" in dash_duo.find_element(
        f"#{ids.MODULE_RATIO_SET}").get_attribute("title")
    # another block gets a ratio of its own: every group that starts in it
    _click_node(dash_duo, "layer2.0")
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "layer2.0", timeout=TIMEOUT)
    dash_duo.find_element(f"#{ids.MODULE_RATIO}").send_keys("0.6")
    dash_duo.find_element(f"#{ids.MODULE_RATIO_SET}").click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "2 groups in layer2.0 will lose 60% "
                                    "of their units", timeout=TIMEOUT)
    _until(dash_duo, lambda d: d.find_element("id", ids.PLAN_INFO).text.count("ratio 0.6")
           == 2, "the module's groups' ratios were not listed")
    _click_node(dash_duo, "conv1")  # a layer: its own boxes, the module's hidden
    _until(dash_duo, lambda d: not d.find_element("id", ids.MODULE_CONTROLS).is_displayed(),
           "the module's ignore boxes stayed for a layer")


def _two_outputs_stem(dash_duo, tmp_path) -> None:
    """The app on a model that returns its feature map beside its logits, its conv's group
    shown: the feature map holds it."""
    (tmp_path / "net.py").write_text(TWO_OUTPUTS_FILE)
    _start(dash_duo, create_app([ModelEntry(f"{tmp_path / 'net.py'}:Net",
                                             inputs=("1x3x6x6",))]))
    _wait_graph(dash_duo, "output.features")
    _click_node(dash_duo, "stem")
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "reaches the model output",
                                    timeout=TIMEOUT)


def test_a_model_output_is_made_free_from_its_inspector(dash_duo, tmp_path):
    # the conv's group reaches the feature map: nothing pruned until it may change width
    _two_outputs_stem(dash_duo, tmp_path)
    assert not dash_duo.find_element(f"#{ids.OUTPUT_CONTROLS}").is_displayed()
    _click_node(dash_duo, "output.features")
    _until(dash_duo, lambda d: d.find_element("id", ids.OUTPUT_CONTROLS).is_displayed(),
           "the output's free box never showed")
    dash_duo.find_element(f"#{ids.FREE_OUTPUT} label").click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Output 'features' may now change "
                                    "width: 1 of 2 groups prunable", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.PLAN_INFO}", "free output features",
                                    timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.MODEL_INFO}", "2 groups (1 prunable)",
                                    timeout=TIMEOUT)  # (the header's count follows)
    dash_duo.find_element(f"#{ids.APPLY}").click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "masked equivalence ok",
                                    timeout=TIMEOUT)


def test_a_group_held_by_an_output_frees_it_from_its_panel(dash_duo, tmp_path):
    # the group's panel says what holds it and offers the way out: one click, no hunt for
    # the output node at the graph's end
    _two_outputs_stem(dash_duo, tmp_path)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "Let 'features' change width",
                                    timeout=TIMEOUT)
    dash_duo.find_element(f"#{ids.GROUP_PANEL} .free-held button").click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Output 'features' may now change "
                                    "width: 1 of 2 groups prunable", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "prunable", timeout=TIMEOUT)
    _until(dash_duo, lambda d: "not prunable" not in d.find_element("id", ids.GROUP_PANEL).text
           and not d.find_elements("css selector", f"#{ids.GROUP_PANEL} .free-held"),
           "the panel never showed the group prunable")
    dash_duo.wait_for_contains_text(f"#{ids.MODEL_INFO}", "2 groups (1 prunable)",
                                    timeout=TIMEOUT)


def test_preview_changes_the_numbers(dash_duo):
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    dash_duo.wait_for_text_to_equal(f"#{ids.PREVIEW_PARAMS}", "—", timeout=TIMEOUT)
    dash_duo.find_element(f"#{ids.PREVIEW}").click()
    dash_duo.wait_for_contains_text(f"#{ids.PREVIEW_PARAMS}", "→", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.PREVIEW_MACS}", "%", timeout=TIMEOUT)
    # each group pruned alone: a chart of how far the outputs move
    dash_duo.find_element(f"#{ids.SENSITIVITY}").click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Sensitivity at 0.3 on the example "
                                    "inputs: 4 groups pruned one at a time", timeout=TIMEOUT)
    _until(dash_duo, lambda d: len(d.find_elements(
        "css selector", f"#{ids.SENSITIVITY_CHART} .bars path")) == 4,
        "the sensitivity chart did not draw a bar per group")


def test_preview_annotates_the_inspected_group_and_its_edges(dash_duo):
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    _click_node(dash_duo, "features.0")
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "Members", timeout=TIMEOUT)
    dash_duo.find_element(f"#{ids.PREVIEW}").click()
    # the same selection, answered again with the units the preview removes
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "preview removes", timeout=TIMEOUT)
    _until(dash_duo, lambda d: d.execute_script(
        "return window.cy.edges('.dv-tensor').some(function (e) {"
        " return (e.data('hl') || '').indexOf('→') >= 0; });"),
        "no highlighted edge names the units the preview removes")


def test_a_running_apply_says_what_it_does_until_it_ends(dash_duo, monkeypatch):
    # GPT-2 small's apply takes seconds (about 7 here); only a disabled button showed that
    # anything ran
    from viewer.app.callbacks import prune

    real, release = prune.apply_round, threading.Event()

    def held(*args, **kwargs):  # the apply waits until the test has seen the status
        release.wait(TIMEOUT)
        return real(*args, **kwargs)

    monkeypatch.setattr(prune, "apply_round", held)
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    dash_duo.find_element(f"#{ids.APPLY}").click()
    dash_duo.wait_for_contains_text(f"#{ids.BUSY}", "pruning a copy, verifying it",
                                    timeout=TIMEOUT)
    assert dash_duo.find_element(f"#{ids.PREVIEW}").get_property("disabled")
    # (another model picked meanwhile would drop the Apply)
    assert dash_duo.find_element(f"#{ids.UPLOAD} input[type=file]").get_property("disabled")
    release.set()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Round 1 applied", timeout=TIMEOUT)
    dash_duo.wait_for_text_to_equal(f"#{ids.BUSY}", "", timeout=TIMEOUT)


def test_a_second_tab_cannot_act_on_a_model_it_does_not_show(dash_duo, monkeypatch):
    # a duplicated tab (or window.open) copies the page's session id: after the other tab
    # picked another model, Preview and Apply here acted on that model while this tab
    # showed its own
    from viewer.app.callbacks import prune

    ran = []

    def recorded(name):
        real = getattr(prune, name)

        def call(*args, **kwargs):
            ran.append(name)
            return real(*args, **kwargs)
        return call

    for name in ("run_preview", "apply_round"):
        monkeypatch.setattr(prune, name, recorded(name))
    _start(dash_duo, create_app([ModelEntry("demo:cnn"), ModelEntry("demo:norms")]))
    _wait_graph(dash_duo, "features.0")
    driver = dash_duo.driver
    first = driver.current_window_handle
    driver.execute_script("window.open(window.location.href)")
    second = next(h for h in driver.window_handles if h != first)
    driver.switch_to.window(second)
    _wait_graph(dash_duo, "features.0")
    dash_duo.select_dcc_dropdown(f"#{ids.MODEL_PICKER}", value="demo:norms")
    _wait_graph(dash_duo, "gn1")
    driver.switch_to.window(first)  # still drawing demo:cnn
    for button, action in ((ids.PREVIEW, "the preview"), (ids.APPLY, "the Apply")):
        dash_duo.find_element(f"#{button}").click()
        dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "this page is out of date",
                                        timeout=TIMEOUT)
        dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", f"{action} was not done; reload "
                                        "the page", timeout=TIMEOUT)
    assert ran == []  # (each answer came after its check: nothing ran on demo:norms)
    assert dash_duo.find_element(f"#{ids.PREVIEW_PARAMS}").text == "—"
    driver.refresh()  # the session's model, with no round applied
    _wait_graph(dash_duo, "gn1")
    assert "round 1" not in dash_duo.find_element(f"#{ids.HISTORY}").text


def test_a_server_that_does_not_answer_is_said_and_frees_the_buttons(dash_duo):
    # with the server gone, Preview spun "Previewing…" for good, disabled, and said nothing
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    driver = dash_duo.driver
    driver.execute_cdp_cmd("Network.enable", {})
    offline = {"offline": True, "latency": 0, "downloadThroughput": -1,
               "uploadThroughput": -1}
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
    try:
        dash_duo.find_element(f"#{ids.PREVIEW}").click()
        dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "The server did not answer",
                                        timeout=TIMEOUT)
        _until(dash_duo, lambda d: not d.find_element("id", ids.PREVIEW).get_property(
            "disabled"), "Preview stayed disabled")
        dash_duo.wait_for_text_to_equal(f"#{ids.BUSY}", "", timeout=TIMEOUT)
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                               {**offline, "offline": False})
    dash_duo.find_element(f"#{ids.PREVIEW}").click()  # back: the page works again
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Preview: params", timeout=TIMEOUT)


def test_a_loading_model_says_so_until_it_is_drawn(dash_duo, monkeypatch):
    # a model whose groups need many checks loads for seconds (HF PVT about 9): only a
    # disabled picker showed that anything ran
    from viewer.app.callbacks import model

    real, release = model.choose_model, threading.Event()

    def held(store, sid, spec, *args, **kwargs):  # the pick waits until the status is seen
        if spec == "demo:resnet":
            release.wait(TIMEOUT)
        return real(store, sid, spec, *args, **kwargs)

    monkeypatch.setattr(model, "choose_model", held)
    _start(dash_duo, create_app([ModelEntry("demo:cnn"), ModelEntry("demo:resnet")]))
    _wait_graph(dash_duo, "features.0")
    dash_duo.select_dcc_dropdown(f"#{ids.MODEL_PICKER}", value="demo:resnet")
    dash_duo.wait_for_contains_text(f"#{ids.BUSY}", "Loading the model", timeout=TIMEOUT)
    release.set()
    _wait_graph(dash_duo, "layer1.0.conv1")
    dash_duo.wait_for_text_to_equal(f"#{ids.BUSY}", "", timeout=TIMEOUT)


def test_a_large_upload_says_it_is_being_sent_until_the_server_answers(dash_duo, tmp_path):
    # a 150 MB file took ~18 s to reach the server, with nothing on the page meanwhile
    big = tmp_path / "big.zip"
    with big.open("wb") as f:
        f.truncate(30_000_000)  # sparse, and not a zip
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    # every status shown, however briefly (the model callback's own replaces it once the
    # file arrives: a poll can miss it)
    _js(dash_duo, "var box = document.getElementById(arguments[0]); window.__seen = [];"
                  "new MutationObserver(function () { window.__seen.push(box.textContent); })"
                  ".observe(box, {childList: true, subtree: true, characterData: true});",
        ids.BUSY)
    dash_duo.find_element(f"#{ids.UPLOAD} input[type=file]").send_keys(str(big))
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "big.zip: the upload is not a zip file",
                                    timeout=TIMEOUT)
    dash_duo.wait_for_text_to_equal(f"#{ids.BUSY}", "", timeout=TIMEOUT)
    seen = _js(dash_duo, "return window.__seen;")
    assert "Sending big.zip (30 MB) to the server…" in seen, seen


def test_a_file_too_large_for_the_browser_is_refused_with_a_message(dash_duo, tmp_path):
    # a 414 MB export zip did nothing at all (the tab cannot hold it as base64); the page now
    # says so and where to go instead, without reading the file
    from viewer.app.callbacks.common import MAX_UPLOAD

    big = tmp_path / "gpt2-export.zip"
    with big.open("wb") as f:
        f.truncate(MAX_UPLOAD + 1)  # sparse: no disk used
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    dash_duo.find_element(f"#{ids.UPLOAD} input[type=file]").send_keys(str(big))
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "gpt2-export.zip: 200 MB is too large "
                                    "to send through the browser", timeout=TIMEOUT)
    assert "--model DIR" in dash_duo.find_element(f"#{ids.MESSAGE}").text
    _click_node(dash_duo, "features.0")  # the page keeps working
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "OpType.CONV", timeout=TIMEOUT)


def test_a_reload_keeps_the_model_and_its_applied_rounds(dash_duo):
    # a reload (F5) made a new session: the rounds applied were gone without a word
    _start(dash_duo, create_app([ModelEntry("demo:resnet"), ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "layer1.0.conv1")
    dash_duo.select_dcc_dropdown(f"#{ids.MODEL_PICKER}", "demo:cnn")
    _wait_graph(dash_duo, "features.0")
    dash_duo.find_element(f"#{ids.APPLY}").click()
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "round 1", timeout=TIMEOUT)
    _type(dash_duo.find_element(f"#{ids.RATIO}"), "0.45")  # the settings typed stay too
    dash_duo.driver.refresh()
    _wait_graph(dash_duo, "features.0")  # not the picker's default (demo:resnet)
    _until(dash_duo, lambda d: d.find_element("id", ids.RATIO).get_property("value") == "0.45",
           "the ratio typed before the reload was lost")
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "round 1", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Reloaded: demo:cnn with its 1 round",
                                    timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.MODEL_PICKER}", "cnn", timeout=TIMEOUT)
    assert not dash_duo.find_element(f"#{ids.UNDO}").get_property("disabled")


def test_after_apply_the_group_panel_follows_the_pruned_model(dash_duo, monkeypatch):
    # it showed the old model's group for seconds after Apply (GPT-2 draws its new graph for
    # that long); now it says the group follows, then shows the pruned model's
    from viewer.app.callbacks import inspect as icb

    real, hold, release = icb.inspect, threading.Event(), threading.Event()

    def held(*args, **kwargs):  # the pruned model's panel waits until the test has looked
        if hold.is_set():
            release.wait(TIMEOUT)
        return real(*args, **kwargs)

    monkeypatch.setattr(icb, "inspect", held)
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    _click_node(dash_duo, "features.0")
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "Members", timeout=TIMEOUT)
    before = dash_duo.find_element(f"#{ids.GROUP_PANEL}").text
    hold.set()
    dash_duo.find_element(f"#{ids.APPLY}").click()
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "round 1", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "The model changed: its group "
                                    "follows once its graph is drawn", timeout=TIMEOUT)
    release.set()
    _until(dash_duo, lambda d: "Members" in d.find_element("id", ids.GROUP_PANEL).text
           and d.find_element("id", ids.GROUP_PANEL).text != before,
           "the group panel never showed the pruned model's group")


def test_a_bad_ratio_shows_a_message_and_the_page_keeps_working(dash_duo):
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    ratio = dash_duo.find_element(f"#{ids.RATIO}")
    _type(ratio, "1.5")
    _until(dash_duo, lambda d: ratio.get_property("value") == "1.5", "the ratio never read 1.5")
    dash_duo.find_element(f"#{ids.PREVIEW}").click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "ratio must be in [0, 1)",
                                    timeout=TIMEOUT)
    _click_node(dash_duo, "features.0")
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "OpType.CONV", timeout=TIMEOUT)


def test_apply_then_download_gives_a_checkpoint_load_pruned_reloads(dash_duo, tmp_path):
    export = pytest.importorskip("viewer.core.export")
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    download = Path(dash_duo.download_path)
    dash_duo.driver.execute_cdp_cmd("Page.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": str(download)})
    _wait_graph(dash_duo, "features.0")
    # the user looks at some part of the graph: an apply redraws it and stays there
    time.sleep(1)  # the first view's placement is done
    _js(dash_duo, "window.cy.stop(); window.cy.zoom(1.7); window.cy.pan({x: -40, y: -120});")
    # the node nearest the middle of the view, and where it is drawn
    watched = _js(dash_duo, """
        var cy = window.cy, w = cy.width() / 2, h = cy.height() / 2, best = null, d = 1e9;
        cy.nodes('.op').forEach(function (n) {
          var p = n.renderedPosition(), e = Math.hypot(p.x - w, p.y - h);
          if (e < d) { d = e; best = n.id(); }
        });
        return best;""")
    drawn_at = "var p = window.cy.getElementById(arguments[0]).renderedPosition(); " \
               "return [p.x, p.y, window.cy.zoom()];"
    before = _js(dash_duo, drawn_at, watched)
    label = "return window.cy.getElementById(arguments[0]).data('label');"
    first = _node_id(dash_duo, "features.0")
    unpruned = _js(dash_duo, label, first)
    dash_duo.find_element(f"#{ids.APPLY}").click()
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "round 1", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "forward ok", timeout=TIMEOUT)
    _until(dash_duo, lambda d: _js(dash_duo, label, first) != unpruned,
           "the pruned graph was not drawn")
    time.sleep(0.5)  # a placement at the top would be done by now
    after = _js(dash_duo, drawn_at, watched)
    # the same node is still near where it was (the message bar above the graph may have
    # resized it a little: dash-cytoscape then scales the zoom), at about the same zoom
    assert abs(after[0] - before[0]) < 80 and abs(after[1] - before[1]) < 80, (before, after)
    assert after[2] == pytest.approx(before[2], rel=0.15)
    _until(dash_duo, lambda d: d.find_element("id", ids.DOWNLOAD).is_enabled(),
           "the download button stayed disabled")
    dash_duo.find_element(f"#{ids.DOWNLOAD}").click()
    # the page follows the message's one-time link: the browser fetches the file natively
    zpath = download / "demo-cnn-pruned-round1.zip"
    _until(dash_duo, lambda d: zpath.is_file() and zipfile.is_zipfile(zpath),
           "no complete zip was downloaded")
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Checkpoint ready", timeout=TIMEOUT)
    # the link in the message is spent too: no longer a link (it would answer 404)
    shown = dash_duo.find_element(f"#{ids.MESSAGE} a[download]")
    _until(dash_duo, lambda d: "used" in shown.get_attribute("class")
           and shown.get_attribute("href") is None, "the spent link stayed a link")
    link = shown.get_attribute("data-spent")
    assert "/_depview/download/" in link
    assert _js(dash_duo, "var r = new XMLHttpRequest(); r.open('GET', arguments[0], false);"
                         " r.send(); return r.status;", link) == 404  # it worked once
    with zipfile.ZipFile(io.BytesIO(zpath.read_bytes())) as zf:
        assert sorted(zf.namelist()) == ["model.safetensors", "plan.json", "report.json"]
        zf.extractall(tmp_path)
    model = export.load_pruned(tmp_path)
    n_params = sum(p.numel() for p in model.parameters())
    original = sum(p.numel() for p in __import__("demo_models").get_demo("cnn").build()
                   .parameters())
    assert n_params < original
    # the message offers the same zip with the torch.export program
    dash_duo.find_element(f"#{ids.MESSAGE} button").click()
    with_pt2 = download / "demo-cnn-pruned-round1-pt2.zip"
    _until(dash_duo, lambda d: with_pt2.is_file() and zipfile.is_zipfile(with_pt2),
           "the zip with model.pt2 never arrived")
    assert "model.pt2" in zipfile.ZipFile(with_pt2).namelist()
    # and the page opens the export it wrote (rebuilt from safetensors + plan.json)
    dash_duo.find_element(f"#{ids.UPLOAD} input[type=file]").send_keys(str(zpath))
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Loaded", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.MODEL_INFO}", "uploaded", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "uploaded export", timeout=TIMEOUT)
    assert sorted(p.name for p in download.iterdir()) == [with_pt2.name, zpath.name]


def test_time_forward_after_apply_shows_the_speed_up_in_the_history(dash_duo):
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    button = dash_duo.find_element(f"#{ids.TIME_FORWARD}")
    assert not button.is_enabled()  # nothing to time before a round
    dash_duo.find_element(f"#{ids.APPLY}").click()
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "round 1", timeout=TIMEOUT)
    _until(dash_duo, lambda d: d.find_element("id", ids.TIME_FORWARD).is_enabled(),
           "Time forward stayed disabled after a round")
    dash_duo.find_element(f"#{ids.TIME_FORWARD}").click()
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "as the model it pruned",
                                    timeout=TIMEOUT)
    assert re.search(r"Round 1: forward [\d.]+ ms → [\d.]+ ms on \d+ threads?, [\d.]+× as fast",
                     dash_duo.find_element(f"#{ids.MESSAGE}").text)
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "× as fast", timeout=TIMEOUT)
    _until(dash_duo, lambda d: d.find_element("id", ids.TIME_FORWARD).text == "Time forward"
           and d.find_element("id", ids.TIME_FORWARD).is_enabled(),
           "the button did not come back after timing")


def test_a_taylor_batch_is_uploaded_and_used_by_the_preview(dash_duo, tmp_path):
    import torch
    from safetensors.torch import save_file

    good, bad = tmp_path / "real.safetensors", tmp_path / "bad.safetensors"
    save_file({"0": torch.randn(4, 3, 32, 32)}, str(good))
    save_file({"0": torch.randn(2, 7)}, str(bad))
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    row = dash_duo.find_element(f"#{ids.BATCH_ROW}")
    assert not row.is_displayed()  # only for the Taylor importance
    dash_duo.select_dcc_dropdown(f"#{ids.IMPORTANCE}", value="Taylor (1st order)")
    _until(dash_duo, lambda d: row.is_displayed(), "the batch controls never showed")
    dash_duo.wait_for_contains_text(f"#{ids.BATCH_INFO}", "example inputs", timeout=TIMEOUT)
    upload = dash_duo.find_element(f"#{ids.BATCH_UPLOAD} input[type=file]")
    upload.send_keys(str(bad))
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "does not fit the model",
                                    timeout=TIMEOUT)
    upload.send_keys(str(good))
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Taylor and usage scores now come from",
                                    timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.BATCH_INFO}", "real.safetensors 0: 4x3x32x32",
                                    timeout=TIMEOUT)
    dash_duo.find_element(f"#{ids.PREVIEW}").click()
    dash_duo.wait_for_contains_text(f"#{ids.PREVIEW_PARAMS}", "→", timeout=TIMEOUT)
    dash_duo.find_element(f"#{ids.BATCH_CLEAR}").click()
    dash_duo.wait_for_contains_text(f"#{ids.BATCH_INFO}", "example inputs", timeout=TIMEOUT)


def test_any_typed_ratio_previews_and_changing_it_clears_the_preview(dash_duo):
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    ratio = dash_duo.find_element(f"#{ids.RATIO}")
    _type(ratio, "0.33")  # off any 0.05 "step": a number box would send None
    dash_duo.find_element(f"#{ids.PREVIEW}").click()
    dash_duo.wait_for_contains_text(f"#{ids.PREVIEW_PARAMS}", "→", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Preview: params", timeout=TIMEOUT)
    ratio.send_keys("5")  # 0.335: what is on screen is no longer what Apply would do
    dash_duo.wait_for_text_to_equal(f"#{ids.PREVIEW_PARAMS}", "—", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.WIDTH_CHART_BOX}", "Settings changed",
                                    timeout=TIMEOUT)
    # the message bar said "Preview: params ..." of the void preview too (it kept saying so)
    dash_duo.wait_for_contains_text(f"#{ids.MESSAGE}", "Settings changed", timeout=TIMEOUT)
    assert "Preview: params" not in dash_duo.find_element(f"#{ids.MESSAGE}").text


def test_the_picker_follows_an_uploaded_export_and_loads_the_original_again(dash_duo,
                                                                            tmp_path):
    export = pytest.importorskip("viewer.core.export")
    from viewer.app.state import SessionStore

    base = SessionStore().base("demo:cnn")
    plan = base.stage.pruner.plan(0.5, "l1")
    out = export.export_dir(base.stage.pruner, plan, base.stage.pruner.apply(plan),
                            tmp_path / "e", base.source)
    zpath = tmp_path / "cnn-pruned.zip"
    zpath.write_bytes(export.zip_dir(out))
    _start(dash_duo, create_app([ModelEntry("demo:cnn")]))
    _wait_graph(dash_duo, "features.0")
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "original", timeout=TIMEOUT)
    dash_duo.find_element(f"#{ids.UPLOAD} input[type=file]").send_keys(str(zpath))
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "uploaded export", timeout=TIMEOUT)
    # the picker no longer claims demo:cnn is loaded ...
    dash_duo.wait_for_contains_text(f"#{ids.MODEL_PICKER}", "uploaded cnn-pruned.zip",
                                    timeout=TIMEOUT)
    # ... so picking demo:cnn loads the original again
    dash_duo.select_dcc_dropdown(f"#{ids.MODEL_PICKER}", value="demo:cnn")
    dash_duo.wait_for_contains_text(f"#{ids.HISTORY}", "original", timeout=TIMEOUT)


LONG_NAMES = """
import torch


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.query_projection_with_a_long_name = torch.nn.Linear(8, 8)
        self.output_projection_with_a_long_name = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.output_projection_with_a_long_name(
            torch.relu(self.query_projection_with_a_long_name(x)))


class Long(torch.nn.Module):
    # Hugging Face style names: long dotted paths
    def __init__(self):
        super().__init__()
        self.encoder_with_a_rather_long_module_name = torch.nn.Sequential(Attention())
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.encoder_with_a_rather_long_module_name(x))
"""


def test_inspector_tables_fit_the_panel_with_long_names(dash_duo, tmp_path):
    # the count column of Parameters and the width/positions of Members were hidden behind
    # a horizontal scrollbar by long HF names
    (tmp_path / "long.py").write_text(LONG_NAMES)
    _start(dash_duo, create_app([ModelEntry(f"{tmp_path / 'long.py'}:Long", inputs=("2x8",))]))
    name = "encoder_with_a_rather_long_module_name.0.query_projection_with_a_long_name"
    _wait_graph(dash_duo, name)
    _click_node(dash_duo, name)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "Members", timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.GROUP_PANEL}", "output_projection",
                                    timeout=TIMEOUT)
    dash_duo.wait_for_contains_text(f"#{ids.INSPECTOR}", "total", timeout=TIMEOUT)
    overflow = _js(dash_duo, """
        var bad = [];
        document.querySelectorAll('.side table, .members-wrap').forEach(function (t) {
          var box = t.classList.contains('members-wrap') ? t : t.parentElement;
          if (t.scrollWidth > box.clientWidth + 1) { bad.push(t.className); }
        });
        // the number cells keep their text on one line
        document.querySelectorAll('.params td.n, .members td:nth-child(4)').forEach(
          function (c) {
            var r = document.createRange();
            r.selectNodeContents(c);
            if (r.getClientRects().length !== 1) { bad.push('number cell ' + c.textContent); }
          });
        return bad;""")
    assert overflow == []
