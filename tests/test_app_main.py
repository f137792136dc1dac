"""Entry point: app creation, layout ids, serve options, loopback warning."""

from __future__ import annotations

import argparse
import re

import pytest

from viewer.app import ids, main
from viewer.app.args import add_serve_arguments
from viewer.app.state import ModelEntry
from viewer.core.errors import DepViewError


def _ids(component, out=None):
    out = set() if out is None else out
    cid = getattr(component, "id", None)
    if isinstance(cid, str):
        out.add(cid)
    children = getattr(component, "children", None)
    for c in children if isinstance(children, (list, tuple)) else [children]:
        if hasattr(c, "to_plotly_json"):
            _ids(c, out)
    return out


def _picker(page):
    header = next(c for c in page.children if getattr(c, "className", "") == "header")
    return next(c for c in header.children if getattr(c, "id", None) == ids.MODEL_PICKER)


def _sid(page):
    return next(c for c in page.children if getattr(c, "id", None) == ids.SESSION).data


def test_create_app_has_every_id_and_a_session_per_page_load():
    app = main.create_app()
    page = app.layout()
    found = _ids(page)
    # the charts mount inside their boxes only once they have data (Plotly loads lazily);
    # the model.pt2 offer is part of the message that hands over a checkpoint; the button
    # that frees an output is part of the panel of a group it holds
    wanted = {v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str)
              and k not in ("LEGEND_ITEM", "WIDTH_CHART", "SCORE_CHART", "SENSITIVITY_CHART",
                            "DOWNLOAD_PT2", "FREE_HELD")}
    assert wanted <= found, wanted - found
    assert _sid(page) != _sid(app.layout())
    picker = _picker(page)
    assert picker.value == "demo:resnet"
    assert any(o["value"] == "demo:densenet" for o in picker.options)


def test_startup_models_come_first_and_are_selected():
    app = main.create_app([ModelEntry("demo:vit")])
    assert app._depview_store.entries["demo:vit"].spec == "demo:vit"
    picker = _picker(app.layout())
    assert picker.value == "demo:vit" and picker.options[0]["value"] == "demo:vit"


def test_preload_says_what_it_is_loading_and_what_it_found():
    # a large model takes a while before the server listens: the terminal said nothing
    lines: list[str] = []
    main.create_app([ModelEntry("demo:cnn")], preload=True, progress=lines.append)
    assert lines[0] == "loading demo:cnn ..."
    assert re.fullmatch(r"loaded demo:cnn: \d+ ops, 5 groups \(\d prunable\) in [\d.]+ s",
                        lines[1]), lines


def test_preload_fails_fast_on_a_bad_spec():
    with pytest.raises(DepViewError):
        main.create_app([ModelEntry("no_such_package_xyz.mod:Net", inputs=("1x3",))],
                        preload=True)


def test_assets_folder_holds_css_and_js():
    folder = main.assets_folder()
    assert (folder / "style.css").is_file() and (folder / "depview.js").is_file()


def test_is_loopback():
    assert main.is_loopback("127.0.0.1") and main.is_loopback("localhost")
    assert main.is_loopback("::1")
    assert not main.is_loopback("0.0.0.0") and not main.is_loopback("192.168.1.4")


def test_run_warns_when_not_on_loopback(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("dash.Dash.run", lambda self, **kw: calls.append(kw))
    main.run(host="0.0.0.0", port=9999)
    assert "warning" in capsys.readouterr().err
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["port"] == 9999
    main.run()
    assert "warning" not in capsys.readouterr().err


def test_a_port_in_use_is_one_line_before_any_model_is_built(monkeypatch, capsys):
    import socket

    monkeypatch.setattr("dash.Dash.run", lambda self, **kw: pytest.fail("served"))
    monkeypatch.setattr(main, "create_app", lambda *a, **kw: pytest.fail("built models"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(DepViewError, match=rf"^port {port} on 127.0.0.1 is in use by "
                                               r"another program: .*--port N$"):
            main.run(port=port)
    with pytest.raises(DepViewError, match=r"^cannot serve on no-such-host.invalid:8050: "):
        main.run(host="no-such-host.invalid")
    assert "DepView on" not in capsys.readouterr().err


def test_serve_arguments_and_cmd_serve(monkeypatch):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--model", "demo:vit", "--model", "demo:unet", "--input",
                              "1x3x32x32", "--port", "9001", "--host", "0.0.0.0"])
    entries = main.entries_from_args(args)
    assert [e.spec for e in entries] == ["demo:vit", "demo:unet"]
    assert [e.inputs for e in entries] == [(), ("1x3x32x32",)]  # after a --model: its own
    seen = {}
    monkeypatch.setattr(main, "run", lambda **kw: seen.update(kw))
    assert main.cmd_serve(args) == 0
    assert seen["port"] == 9001 and [m.spec for m in seen["models"]] == ["demo:vit", "demo:unet"]


def test_the_cli_serve_command_reaches_cmd_serve(monkeypatch):
    cli = pytest.importorskip("viewer.cli")
    seen = {}
    monkeypatch.setattr(main, "run", lambda **kw: seen.update(kw))
    assert cli.main(["serve", "--model", "demo:cnn", "--port", "9002"]) == 0
    assert seen["port"] == 9002 and seen["models"][0].spec == "demo:cnn"


def test_a_start_up_model_that_fails_is_named_in_the_error():
    # two start-up models: the one-line error must say which of them failed
    with pytest.raises(DepViewError) as exc:
        main.create_app([ModelEntry("demo:cnn"), ModelEntry("demo:resnet", inputs=("1x128",))],
                        preload=True)
    msg = str(exc.value)
    assert msg.startswith("demo:resnet: ") and "forward failed" in msg and "\n" not in msg
    assert msg.endswith("(model options written after a --model apply to it alone)")
    with pytest.raises(DepViewError) as exc:  # the message names the spec already: once
        main.create_app([ModelEntry("torch.nn:Identity")], preload=True)
    assert str(exc.value).startswith("torch.nn:Identity needs example inputs")
    assert "after a --model" not in str(exc.value)  # one model: no hint about several


def test_the_page_and_the_server_agree_on_the_largest_upload():
    from pathlib import Path

    from viewer.app.callbacks.common import MAX_UPLOAD

    js = (Path(__file__).parents[1] / "assets" / "depview.js").read_text()
    assert int(re.search(r"var MAX_UPLOAD = (\d+)", js).group(1)) == MAX_UPLOAD


def test_the_page_frees_every_button_a_running_callback_disables():
    """assets/depview.js frees, when the server never answers, what the callbacks' ``running``
    outputs set while they run: its list of disabled buttons must name every one of them."""
    from pathlib import Path

    js = (Path(__file__).parents[1] / "assets" / "depview.js").read_text()
    freed = set(re.findall(r"'([\w-]+)'", re.search(r"var RUNNING = \[([^\]]*)\]", js).group(1)))
    reset = set(re.findall(r"set\('([\w-]+)', \{", js))  # set back one by one (busy, timing)
    app = main.create_app()
    running = {key for cb in app._callback_list for key in cb.get("running", {}).get("running", {})}
    assert running  # (the app's long callbacks do disable buttons)
    for key in running:
        cid, prop = key.rsplit(".", 1)
        assert cid in reset or (prop == "disabled" and cid in freed), key
