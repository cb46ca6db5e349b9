"""The HTTP port every process serves: /metrics, /status, /status.json (real sockets)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from annfleet.web import Cell, serve_http, table


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


class Source:
    def __init__(self) -> None:
        self.fail = False

    def status(self) -> dict[str, Any]:
        if self.fail:
            raise TimeoutError("event loop busy")
        return {"title": "t <b>", "name": "<script>alert(1)</script>", "n": 3}

    def html(self, status: dict[str, Any]) -> str:
        return table(["name", "n"], [[status["name"], Cell(status["n"], "num")]])


def test_metrics_status_json_and_errors() -> None:
    source = Source()
    port = serve_http(0, source=source)
    assert port is not None
    url = f"http://127.0.0.1:{port.port}"
    try:
        code, kind, body = fetch(url + "/metrics")
        assert code == 200 and kind.startswith("text/plain") and "# TYPE" in body
        code, kind, body = fetch(url + "/status.json")
        assert code == 200 and kind == "application/json"
        assert json.loads(body)["n"] == 3
        code, kind, page = fetch(url + "/status")
        assert code == 200 and kind == "text/html; charset=utf-8"
        assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<title>t &lt;b&gt;</title>" in page
        assert '<td class="num">3</td>' in page
        code, kind, root = fetch(url + "/")  # "/" is the page too
        assert code == 200 and kind.startswith("text/html") and "<title>t &lt;b&gt;" in root
        assert fetch(url + "/nope")[0] == 404
        source.fail = True
        code, _, body = fetch(url + "/status")
        assert code == 503 and "event loop busy" in body
        assert fetch(url + "/metrics")[0] == 200  # the port keeps serving
        port.source = None
        assert fetch(url + "/status.json")[0] == 404
    finally:
        port.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/metrics", timeout=2)


def test_port_minus_one_is_off() -> None:
    assert serve_http(-1) is None
