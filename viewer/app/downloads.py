"""Prepared files the browser fetches natively, once, from a plain Flask route.

A callback writes a file and registers it here; the page gets ``ROUTE/<token>`` back and the
browser downloads it as it downloads any link (streamed to disk, with a progress bar),
instead of receiving it base64-encoded inside a callback's JSON response.

    downloads = Downloads()
    downloads.add_route(app)                           # GET /_depview/download/<token>
    token = downloads.add(sid, Path("ready.zip"), "model-pruned.zip")  # moves the file
    downloads.url(app, token)                          # "/_depview/download/<token>"
    downloads.take(token)                              # (open file, name, size), once
    downloads.take(token)                              # None: the route answers 404

A token is 32 random bytes (``secrets.token_urlsafe``). It is only ever returned to the
callback of the session that asked for the file, works once, and expires after ``ttl``
seconds; a new file for the same session revokes the session's older one. So a page can only
fetch files it asked for. Each file is moved into a private temporary directory, deleted from
it when its fetch starts (an unlinked file stays readable until the response closes) or when
its token is revoked or expires, and the directory goes when the store is closed or the
process exits. Nothing is ever unpickled: the route sends bytes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

ROUTE = "_depview/download/"
GONE = ("this download link is unknown, already used or expired (a link works once, for "
        "{minutes} minutes): ask for the file again in the page\n")


@dataclass(frozen=True)
class _Pending:
    sid: str
    path: Path
    filename: str
    expires: float


class Downloads:
    """One-time download tokens, each naming one prepared file (see the module docstring)."""

    def __init__(self, ttl: float = 600.0, max_files: int = 32, clock=time.monotonic):
        self.ttl = ttl
        self.max_files = max_files
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._root: Path | None = None
        self._finalizer = None

    @property
    def root(self) -> Path:
        """The private directory that holds prepared files (made on first use)."""
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="depview-downloads-"))
                self._finalizer = weakref.finalize(self, shutil.rmtree, self._root, True)
            return self._root

    def add(self, sid: str, path: str | Path, filename: str) -> str:
        """Take ownership of the file ``path`` (it is moved away) and return the token that
        fetches it once, as ``filename``. The session's earlier file, if any, is revoked, and
        beyond ``max_files`` waiting files the oldest go."""
        token = secrets.token_urlsafe(32)
        dest = self.root / f"{secrets.token_hex(8)}{Path(filename).suffix}"
        shutil.move(str(path), dest)
        with self._lock:
            now = self._clock()
            drop = [t for t, p in self._pending.items() if p.sid == sid or p.expires <= now]
            gone = [self._pending.pop(t).path for t in drop]
            while len(self._pending) >= self.max_files:  # dicts keep insertion order
                gone.append(self._pending.pop(next(iter(self._pending))).path)
            self._pending[token] = _Pending(sid, dest, filename, now + self.ttl)
        for p in gone:
            p.unlink(missing_ok=True)
        return token

    def take(self, token: str) -> tuple[BinaryIO, str, int] | None:
        """The token's file opened for reading, its download name and its size; ``None`` for
        an unknown, used or expired token. The token is spent and the file unlinked."""
        with self._lock:
            now = self._clock()
            expired = [t for t, p in self._pending.items() if p.expires <= now]
            gone = [self._pending.pop(t).path for t in expired]
            hit = self._pending.pop(token, None)
        for p in gone:
            p.unlink(missing_ok=True)
        if hit is None:
            return None
        try:
            f = open(hit.path, "rb")  # the response closes it
        except FileNotFoundError:
            return None
        hit.path.unlink()
        return f, hit.filename, os.fstat(f.fileno()).st_size

    def discard(self, token: str) -> None:
        """Revoke ``token`` and delete its file (a prepared file that is not offered)."""
        with self._lock:
            hit = self._pending.pop(token, None)
        if hit is not None:
            hit.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Forget every token and delete the directory."""
        with self._lock:
            self._pending.clear()
            finalizer, self._root, self._finalizer = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def url(self, app, token: str) -> str:
        """The page-relative URL of a token (honours Dash's ``requests_pathname_prefix``)."""
        return app.get_relative_path(f"/{ROUTE}{token}")

    def add_route(self, app) -> None:
        """Serve ``GET <routes prefix>_depview/download/<token>`` on the Dash app's Flask
        server: the file as an attachment, or 404 with a one-line plain-text reason."""
        import flask

        def fetch(token: str):
            if flask.request.method != "GET":  # a HEAD must not spend the token
                return flask.Response("a download link answers GET only\n", status=405,
                                      mimetype="text/plain", headers={"Allow": "GET"})
            got = self.take(token)
            if got is None:
                return flask.Response(GONE.format(minutes=round(self.ttl / 60)), status=404,
                                      mimetype="text/plain")
            f, filename, size = got
            resp = flask.send_file(f, mimetype="application/zip" if filename.endswith(".zip")
                                   else None, as_attachment=True, download_name=filename,
                                   conditional=False, etag=False, max_age=0)
            resp.content_length = size  # a file object has no size of its own: the progress bar
            resp.headers["Cache-Control"] = "no-store"
            return resp

        rule = f"{app.config.routes_pathname_prefix}{ROUTE}<token>"
        app.server.add_url_rule(rule, "depview_download", fetch, methods=["GET"])
