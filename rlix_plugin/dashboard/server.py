"""The dashboard's HTTP server: the page, its assets and ``/api/state``, on localhost.

A poller thread reads the source every :data:`POLL_S` and updates a :class:`~.view.PoolView`; a
request only reads the view, so any number of open pages cost the scheduler nothing more. The
server binds 127.0.0.1 only: the page has no authentication, and reading the pool is all it does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from rlix_plugin.hookspecs import RlixError

from .sources import PoolSource
from .view import PoolView

log = logging.getLogger(__name__)

#: Seconds between two reads of the scheduler (the page polls at twice this period).
POLL_S = 0.25
#: The page and its assets (package data of ``rlix_plugin.dashboard``), by URL path.
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
LOCALHOST = "127.0.0.1"


class DashboardServer:
    """Serve the page of ``source`` on ``127.0.0.1:port`` (0: any free port; :attr:`url` says
    which) until :meth:`close`.

    :raises RlixError: the port cannot be bound.
    """

    def __init__(self, source: PoolSource, port: int = 0, poll_s: float = POLL_S) -> None:
        self.source = source
        self.view = PoolView()
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._since = 0
        self._assets = {
            path: (resources.files(__package__).joinpath("static", name).read_bytes(), kind)
            for path, (name, kind) in ASSETS.items()
        }
        try:
            self._http = ThreadingHTTPServer((LOCALHOST, port), self._handler())
        except OSError as exc:
            raise RlixError(f"cannot serve the dashboard on {LOCALHOST}:{port}: {exc}") from None
        self._http.daemon_threads = True
        self.poll()  # the first request already sees the pool
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="rlix-dashboard-http", daemon=True),
            threading.Thread(target=self._poll_forever, name="rlix-dashboard-poll", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/"

    def poll(self) -> None:
        """Read the source once and update the view (a failure is shown on the page)."""
        now = time.time()
        try:
            decisions, last = self.source.decisions(self._since)
            if last < self._since:  # another scheduler, another log: read it from its start
                self._since = 0
                decisions, last = self.source.decisions(0)
                with self._lock:
                    self.view.new_log()
            snapshot = self.source.snapshot()
        except Exception as exc:  # the scheduler may be gone or slow: say so, keep serving
            with self._lock:
                self.view.failed(now, f"the scheduler did not answer: {exc}")
            return
        with self._lock:
            if decisions:
                self._since = decisions[-1]["seq"]
            self.view.update(now, snapshot, decisions)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return self.view.state(time.time())

    def close(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=5.0)

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_s):  # the polling period of the page's data
            self.poll()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/api/state":
                    body, kind = json.dumps(server.state()).encode(), "application/json"
                elif path in server._assets:
                    body, kind = server._assets[path]
                else:
                    self.send_error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("dashboard: " + format, *args)

        return Handler


__all__ = ["ASSETS", "DashboardServer", "POLL_S"]
