"""Entry point of the browser app: builds the Dash app and wires layout and callbacks.

    >>> from viewer.app.main import create_app, run
    >>> app = create_app()            # demos only; create_app([ModelEntry("pkg.mod:Net", ...)])
    >>> run(port=8050)                # or: python -m viewer serve --model demo:vit

Only demo models and the specs given here (at start-up) can ever be imported: the browser picks
among them, and an uploaded export is only rebuilt when it was pruned from one of them.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dash
import dash_cytoscape as cyto

import viewer
from viewer.core.errors import DepViewError

from . import callbacks
from .args import entries_from_args
from .downloads import Downloads
from .layout import page
from .state import DEFAULT_SPEC, ModelEntry, SessionStore
from .viewmodel import DEFAULT_MAX_VISIBLE


def assets_folder() -> Path:
    """The CSS/JS folder: packaged as ``viewer.assets``, or ``assets/`` in a checkout."""
    here = Path(viewer.__file__).parent / "assets"
    return here if here.is_dir() else Path(viewer.__file__).parent.parent / "assets"


def create_app(models: Sequence[ModelEntry] | None = None, *, preload: bool = False,
               max_sessions: int = 16, max_visible: int = DEFAULT_MAX_VISIBLE,
               progress: Callable[[str], None] | None = None) -> dash.Dash:
    """The Dash app. ``models`` are offered in the picker before the demos; the first is
    selected (``demo:resnet`` without any). ``preload`` builds them now, so a bad spec fails
    at start-up with its one-line error instead of in the page; ``progress`` is told which
    model is being built and how long it took (a large model takes a while before the
    server listens)."""
    store = SessionStore(models, max_sessions=max_sessions, max_visible=max_visible)
    default = models[0].spec if models else DEFAULT_SPEC
    if default not in store.entries:
        default = next(iter(store.entries))
    if preload:
        for m in models or ():
            if progress:
                progress(f"loading {m.spec} ...")
            t0 = time.perf_counter()
            try:
                base = store.base(m.spec)
            except DepViewError as exc:  # say which of several start-up models failed
                msg = str(exc) if str(exc).startswith(m.spec) else f"{m.spec}: {exc}"
                if len(models) > 1:
                    msg += " (model options written after a --model apply to it alone)"
                raise DepViewError(msg) from None
            if progress:
                summary = base.stage.summary
                progress(f"loaded {m.spec}: {summary['nodes']} ops, {summary['groups']} groups "
                         f"({summary['prunable']} prunable) in {time.perf_counter() - t0:.1f} s")
    cyto.load_extra_layouts()  # also brings cytoscape-svg, needed for SVG export
    app = dash.Dash(__name__, title="DepView", assets_folder=str(assets_folder()),
                    update_title=None)
    app.layout = lambda: page(store, default)
    for feature in (callbacks.model, callbacks.graph, callbacks.inspect, callbacks.prune):
        feature.register(app, store)
    # checkpoints are fetched natively from a route, once each, not sent through a callback
    downloads = Downloads(max_files=2 * max_sessions)
    downloads.add_route(app)
    callbacks.export.register(app, store, downloads)
    app.server.config["MAX_CONTENT_LENGTH"] = 1536 << 20  # uploads arrive base64-encoded
    app._depview_store, app._depview_downloads = store, downloads  # for tests and debugging
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Raise a one-line :class:`DepViewError` when the server could not listen on
    ``host:port`` (in use, no such address, not allowed), instead of werkzeug's message after
    our banner. Binds as werkzeug does (``SO_REUSEADDR``) and lets go at once."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, OverflowError) as exc:
        raise DepViewError(f"cannot serve on {where}: {getattr(exc, 'strerror', None) or exc}"
                           ) from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DepViewError(f"port {port} on {host} is in use by another program: stop "
                                   "it, or pick another port with --port N") from None
            raise DepViewError(f"cannot serve on {where}: {exc.strerror or exc}") from None


def run(host: str = "127.0.0.1", port: int = 8050, models: Sequence[ModelEntry] | None = None,
        debug: bool = False, preload: bool = True) -> None:
    """Serve the app (threaded; Ctrl-C stops it)."""
    if not is_loopback(host):
        print(f"warning: serving on {host}: anyone who can reach this address can use the app "
              "and the CPU/memory of this machine (there is no login)", file=sys.stderr)
    check_port(host, port)  # before the models are built, and before the banner
    app = create_app(models, preload=preload,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"DepView on http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/",
          file=sys.stderr)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # stopped with SIGTERM (a service manager, `kill`), exit as on Ctrl-C: a bare SIGTERM
        # skips atexit, which removes the temporary files of checkpoints not yet downloaded
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app.run(host=host, port=port, debug=debug, threaded=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def cmd_serve(args: argparse.Namespace) -> int:
    """``python -m viewer serve``: start-up models are built first, so a bad spec stops here
    with its one-line DepViewError (the CLI prints it and exits 2)."""
    run(host=args.host, port=args.port, models=entries_from_args(args), debug=args.debug)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m viewer.app.main [serve options]`` is ``python -m viewer serve``: the same
    checks (``--seed``), and a one-line error instead of a traceback."""
    from viewer.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
