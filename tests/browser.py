"""Headless Chromium for tests, driven by chromedriver over the W3C WebDriver protocol.

Both come from Debian (``chromium``, ``chromium-driver``; tests/install-deps.sh installs
them); nothing is downloaded at run time. The protocol is a few JSON calls over HTTP, so
no client library is needed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from annfleet.cluster import free_port

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(tool) is None:
            return (
                f"{tool} not installed (Debian package {package}; tests/install-deps.sh "
                "installs it where it runs as root with apt-get)"
            )
    return None


class Browser:
    """One headless Chromium session."""

    def __init__(self, base: str, session: str) -> None:
        self.base = f"{base}/session/{session}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def run(self, script: str) -> Any:
        """The value of a JavaScript function body in the page (``return ...``)."""
        return self._call("POST", "/execute/sync", {"script": script, "args": []})

    def text(self) -> str:
        """What a reader sees: the page's rendered text."""
        return str(self.run("return document.body ? document.body.innerText : '';"))

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        return path


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 1000) -> Iterator[Browser]:
    """Start chromedriver and one headless Chromium session (profile dir ``profile``)."""
    port = free_port()
    log = (profile.parent / f"{profile.name}-chromedriver.log").open("wb")
    driver = subprocess.Popen(
        ["chromedriver", f"--port={port}"], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/status", timeout=2) as reply:
                    if json.loads(reply.read())["value"]["ready"]:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or driver.poll() is not None:
                raise RuntimeError(f"chromedriver did not start (log: {log.name})")
            time.sleep(0.1)
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": shutil.which("chromium"),
                "args": [
                    *CHROMIUM_ARGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={width},{height}",
                ],
            },
        }
        request = urllib.request.Request(
            f"{base}/session",
            data=json.dumps({"capabilities": {"alwaysMatch": capabilities}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            session = json.loads(reply.read())["value"]["sessionId"]
        browser = Browser(base, session)
        try:
            yield browser
        finally:
            with contextlib.suppress(OSError):
                browser._call("DELETE", "")
    finally:
        driver.terminate()
        try:
            driver.wait(10)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
        log.close()
