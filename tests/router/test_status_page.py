"""The router's status page on its metrics port: /status.json over plain HTTP, /status in
headless Chromium, both checked against a live cluster (real shard servers and router)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import browser
import pytest
from support import Cluster, LoopThread, start_cluster

from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.config import RouterConfig
from annfleet.server.main import start_shard_server
from annfleet.synthetic import Catalogue

DOWN_WITHIN_S = 10.0  # a stopped shard shows as down within this (refresh 2 s + probe 0.5 s)


@pytest.fixture
def cluster(loop_thread: LoopThread, flat_bundle: Bundle) -> Any:
    started = start_cluster(
        loop_thread, flat_bundle, RouterConfig(min_coverage=0.5, oversample=1.0), metrics_port=0
    )
    yield started
    started.close()


def base_url(cluster: Cluster) -> str:
    port = cluster.router.grpc.metrics_port
    assert port, "the router's HTTP port is on"
    return f"http://127.0.0.1:{port}"


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def status_json(cluster: Cluster) -> dict[str, Any]:
    code, content_type, body = get(base_url(cluster) + "/status.json")
    assert code == 200 and content_type == "application/json"
    return dict(json.loads(body))


def wait_for(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.2)


def test_status_json_follows_the_live_cluster(
    cluster: Cluster, flat_bundle: Bundle, catalogue: Catalogue
) -> None:
    status = status_json(cluster)
    assert status["role"] == "router" and status["loaded"]
    assert status["address"] == cluster.router_target
    [bundle] = status["bundles"]
    assert bundle["bundle_id"] == flat_bundle.id
    assert bundle["num_items"] == len(catalogue.ids)
    assert bundle["num_shards"] == flat_bundle.num_shards == len(status["shards"])
    for i, shard in enumerate(status["shards"]):
        assert shard["shard_id"] == i and shard["state"] == "up"
        [replica] = shard["replicas"]
        assert replica["target"] == cluster.shard_targets[i]
        assert replica["health"] == "SERVING"
        assert replica["bundle_id"] == flat_bundle.id
        # the count the shard process reports is what it loaded from the bundle
        assert replica["num_items"] == cluster.shards[i].holdings.get().delta.num_items
        assert replica["num_items"] == flat_bundle.shard(i)["num_items"]
    assert status["requests"] == {} and status["coverage"]["responses"] == 0

    users = [int(u) for u in catalogue.user_ids[:6]]
    with Client(cluster.router_target, timeout=10) as client:
        client.search(catalogue.user_vectors[:4], 10)
        client.search(catalogue.user_vectors[:1], 10)
        answers = [client.retrieve(u, 20) for u in users]
    sources: Counter[str] = Counter()
    for answer in answers:
        sources.update(answer.source_counts)
    status = status_json(cluster)
    search, retrieve = status["requests"]["Search"], status["requests"]["Retrieve"]
    assert (search["count"], search["codes"]) == (2, {"OK": 2})
    assert (retrieve["count"], retrieve["codes"]) == (len(users), {"OK": len(users)})
    assert 0 < retrieve["p50_ms"] <= retrieve["p99_ms"]
    assert status["coverage"] == {
        "responses": 2 + len(users),
        "mean": 1.0,
        "min": 1.0,
        "degraded": 0,
        "degraded_rate": 0.0,
    }
    assert {name: s["candidates"] for name, s in status["sources"].items()} == dict(sources)
    assert sum(s["share"] for s in status["sources"].values()) == pytest.approx(1.0)

    cluster.stop_shard(1)

    # The router's health watch of the replica sees NOT_SERVING and then its stream end
    # (DOWN) on the router's loop, not necessarily before stop() returns.
    def shard_1_down() -> dict[str, Any] | None:
        status = status_json(cluster)
        return status if status["shards"][1]["replicas"][0]["health"] == "DOWN" else None

    status = wait_for(shard_1_down, DOWN_WITHIN_S, "shard 1 shown DOWN")
    assert [s["state"] for s in status["shards"]] == ["up", "down", "up"]
    assert status["shards_up"] == 2
    down = status["shards"][1]["replicas"][0]
    assert down["health"] == "DOWN" and "UNAVAILABLE" in down["error"]
    with Client(cluster.router_target, timeout=10) as client:
        degraded = client.search(catalogue.user_vectors[:1], 10)
    assert degraded.coverage.degraded
    coverage = status_json(cluster)["coverage"]
    assert coverage["degraded"] == 1 and coverage["responses"] == 3 + len(users)
    assert coverage["min"] == pytest.approx(2 / 3)
    assert coverage["mean"] == pytest.approx((2 + len(users) + 2 / 3) / (3 + len(users)))


def test_http_port_serves_metrics_beside_status(cluster: Cluster) -> None:
    url = base_url(cluster)
    code, content_type, body = get(url + "/metrics")
    assert code == 200 and content_type.startswith("text/plain")
    assert "annfleet_request_seconds_bucket" in body
    code, content_type, page = get(url + "/status")
    assert code == 200 and content_type == "text/html; charset=utf-8"
    assert '<meta http-equiv="refresh" content="2">' in page
    assert "<script" not in page
    assert cluster.bundle.id in page
    assert get(url + "/nothing")[0] == 404


def test_shard_process_has_its_own_status(loop_thread: LoopThread, flat_bundle: Bundle) -> None:
    lt, bundle = loop_thread, flat_bundle
    server = lt.run(start_shard_server(bundle.path, 2, metrics_port=0))
    try:
        port = server.grpc.metrics_port
        code, _, body = get(f"http://127.0.0.1:{port}/status.json")
        assert code == 200
        status = json.loads(body)
        assert status["role"] == "shard" and status["shard_id"] == 2
        assert status["bundle_id"] == bundle.id
        assert status["num_items"] == bundle.shard(2)["num_items"]
        [held] = status["bundles"]
        assert held["bundle_id"] == bundle.id and held["active"]
        assert held["bundle_items"] == held["num_items"] == status["num_items"]
        assert held["path"] == str(bundle.path)
        assert status["address"] == f"127.0.0.1:{server.port}"
        assert (status["queue"], status["max_queue"]) == (0, server.service.config.max_queue)
        code, _, page = get(f"http://127.0.0.1:{port}/status")
        assert code == 200 and bundle.id in page
    finally:
        lt.run(server.stop(0))
    with pytest.raises(OSError):  # the HTTP port closes with the server
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_status_page_in_headless_chromium(
    cluster: Cluster, flat_bundle: Bundle, catalogue: Catalogue, tmp_path: Path
) -> None:
    reason = browser.missing()
    if reason:
        pytest.skip(reason)
    with Client(cluster.router_target, timeout=10) as client:
        for user in catalogue.user_ids[:5]:
            client.retrieve(int(user), 20)
    with browser.chromium(tmp_path / "profile") as chrome:
        chrome.open(base_url(cluster) + "/status")
        text = chrome.text()
        shot = chrome.screenshot(tmp_path / "status.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert chrome.run("return document.querySelectorAll('script').length;") == 0
        assert flat_bundle.id in text
        assert f"Shards up: {flat_bundle.num_shards} of {flat_bundle.num_shards}" in text
        shard_rows = table_rows(chrome, "Shards")
        assert [r[0] for r in shard_rows] == [f"shard {i}" for i in range(flat_bundle.num_shards)]
        assert [r[3] for r in shard_rows] == cluster.shard_targets
        assert all(r[1] == "up" and r[4] == "SERVING" for r in shard_rows)
        assert [r[5] for r in shard_rows] == [flat_bundle.id] * flat_bundle.num_shards
        assert [int(r[6]) for r in shard_rows] == [
            flat_bundle.shard(i)["num_items"] for i in range(flat_bundle.num_shards)
        ]
        [retrieve] = table_rows(chrome, "Requests")
        assert retrieve[:2] == ["Retrieve", "5"]

        # The page refreshes itself: without navigating again, the stopped shard shows down.
        loads = chrome.run("return performance.timeOrigin;")
        cluster.stop_shard(0)
        wait_for(lambda: "Shards up: 2 of 3" in chrome.text(), DOWN_WITHIN_S, "shard 0 shown down")
        assert chrome.run("return performance.timeOrigin;") != loads, "the page reloaded"
        shard0 = table_rows(chrome, "Shards")[0]
        assert shard0[:2] == ["shard 0", "down"] and shard0[4] == "DOWN"

        # Answers missing shard 0 show up as degraded coverage on a later refresh.
        with Client(cluster.router_target, timeout=10) as client:
            for user in catalogue.user_ids[5:8]:
                assert client.retrieve(int(user), 20).coverage.degraded
        coverage = wait_for(
            lambda: [r for r in table_rows(chrome, "Coverage") if r[0] == "8"],
            DOWN_WITHIN_S,
            "8 answers in the coverage table",
        )
        assert coverage[0][2:] == ["66.7%", "3", "37.5%"]  # lowest 2/3, degraded 3 of 8
        chrome.screenshot(tmp_path / "status-shard-down.png")


def table_rows(chrome: browser.Browser, heading: str) -> list[list[str]]:
    """The text of each body row of the table under the h2 that starts with ``heading``."""
    script = (
        "const h = [...document.querySelectorAll('h2')]"
        f".find(e => e.innerText.startsWith({json.dumps(heading)}));"
        "if (!h) return [];"
        "return [...h.nextElementSibling.querySelectorAll('tbody tr')]"
        ".map(r => [...r.cells].map(c => c.innerText));"
    )
    return [list(map(str, row)) for row in chrome.run(script)]
