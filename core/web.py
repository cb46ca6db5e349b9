"""The HTTP port of every annfleet process: ``/metrics`` (Prometheus), ``/status`` (a small
read-only HTML page that refreshes itself) and ``/status.json`` (the same data).

A ``ThreadingHTTPServer`` in a daemon thread, as prometheus_client's own exporter, so a
scrape never waits on the event loop; a status source that needs the loop hops onto it
itself. HTML is built here from plain data with every value escaped: no template engine, no
JavaScript.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from annfleet.config import host_port

log = logging.getLogger(__name__)

REFRESH_S = 2  # the status page reloads itself this often
LOOP_TIMEOUT_S = 3.0  # an HTTP thread's wait for the server's event loop

T = TypeVar("T")


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]:
        """The process's state as JSON-ready data (called from an HTTP thread)."""
        ...

    def html(self, status: dict[str, Any]) -> str:
        """That state as the body of the HTML page."""
        ...


def on_loop(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> T:
    """Run ``coro`` on the server's event loop from an HTTP thread and wait for it (the
    server's state is read where it is changed; a busy loop answers 503 after a while)."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(LOOP_TIMEOUT_S)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        elif path in ("/status", "/status.json", "/"):
            source = self.server.source
            if source is None:
                self._send(404, "text/plain; charset=utf-8", b"no status page in this process\n")
                return
            try:
                status = source.status()
            except Exception as exc:  # the page reports it; the port keeps serving
                log.warning("status page failed: %r", exc)
                message = f"status unavailable: {exc!r}\n".encode()
                self._send(503, "text/plain; charset=utf-8", message)
                return
            if path == "/status.json":
                body = json.dumps(status, indent=1, default=str).encode()
                self._send(200, "application/json", body)
            else:
                title = str(status.get("title", "annfleet"))
                page = render_page(title, source.html(status))
                self._send(200, "text/html; charset=utf-8", page.encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /status\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    source: StatusSource | None = None


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpPort:
    """A started HTTP port; ``source`` may be set (or replaced) at any time."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def source(self) -> StatusSource | None:
        return self._server.source

    @source.setter
    def source(self, source: StatusSource | None) -> None:
        self._server.source = source

    def stop(self) -> None:
        """Stop serving and close the socket (blocks up to the poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_http(
    port: int, host: str = "127.0.0.1", source: StatusSource | None = None
) -> HttpPort | None:
    """Serve /metrics and /status on ``port`` (0 = a free port, < 0 = off)."""
    if port < 0:
        return None
    ipv6 = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0] == socket.AF_INET6
    server = (_Server6 if ipv6 else _Server)((host, port), _Handler)
    server.source = source
    handle = HttpPort(server)
    log.info("metrics on http://%s/metrics, status on /status", host_port(host, handle.port))
    return handle


# ---------------------------------------------------------------------------- HTML pieces
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1f23; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } th, td { padding: .25em .8em; text-align: left;
border-bottom: 1px solid #e1e4e8; vertical-align: top; white-space: nowrap; }
th { background: #f6f8fa; } td.muted { white-space: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #116329; font-weight: 600; } .warn { color: #9a6700; font-weight: 600; }
.bad { color: #cf222e; font-weight: 600; } .muted { color: #6e7781; }
code { font-size: .95em; }
"""


class Cell:
    """A table cell: text (escaped when rendered) and an optional CSS class."""

    def __init__(self, text: object, css: str = "") -> None:
        self.text = "" if text is None else str(text)
        self.css = css


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An HTML table; a row item is a Cell or any value (shown as its escaped str)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for item in row:
            cell = item if isinstance(item, Cell) else Cell(item)
            css = f' class="{esc(cell.css)}"' if cell.css else ""
            cells.append(f"<td{css}>{esc(cell.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(title: str, content: str) -> str:
    """A heading and already-rendered HTML under it."""
    return f"<h2>{esc(title)}</h2>\n{content}\n"


def paragraph(text: object, css: str = "") -> str:
    cls = f' class="{esc(css)}"' if css else ""
    return f"<p{cls}>{esc(text)}</p>"


def render_page(title: str, body: str) -> str:
    """A whole page around ``body`` (already-rendered HTML) that reloads every REFRESH_S."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{esc(title)}</h1>"
        f'<p class="muted">read-only; refreshes every {REFRESH_S} s; as of {esc(stamp)}; '
        'data also at <a href="status.json">status.json</a>, metrics at '
        '<a href="metrics">metrics</a></p>\n'
        f"{body}</body></html>\n"
    )


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def fmt_share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"
