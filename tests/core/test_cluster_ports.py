"""The ports LocalCluster hands its children (core/cluster.py ``free_port``)."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest

from annfleet import cluster
from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.cluster import (
    LocalCluster,
    ephemeral_range,
    free_port,
    health_status,
    port_free,
    router_address,
    state_path,
)
from annfleet.config import ClusterConfig, RouterConfig, ShardsConfig, load_config
from annfleet.errors import ClusterError
from annfleet.server.builder import build_bundle
from annfleet.synthetic import Catalogue, make_catalogue


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalogue, Bundle]:
    """A small catalogue and its flat bundle of 2 shards, for the clusters started here."""
    cat = make_catalogue(300, 8, clusters=4, users=5)
    path = tmp_path_factory.mktemp("two-shards") / "b"
    return cat, build_bundle(
        path, cat.ids, cat.vectors, num_shards=2, index_type="flat", progress=False
    )


def test_picked_ports_are_below_the_ephemeral_range_free_and_never_repeated() -> None:
    """Below the range, neither a port-0 bind nor an outgoing connection can take a picked
    port before the child binds it."""
    low, _ = ephemeral_range()
    ports = [free_port() for _ in range(64)]
    assert len(set(ports)) == len(ports)
    assert all(max(1024, low - cluster.PICKED_SPAN) <= p < low for p in ports), ports
    assert all(port_free("127.0.0.1", p) for p in ports)


def test_a_port_in_use_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the span narrowed to two ports, one of them listened on: the other one."""
    low, _ = ephemeral_range()
    monkeypatch.setattr(cluster, "PICKED_SPAN", 2)
    monkeypatch.setattr(cluster, "_picked", set())
    taken, other = low - 2, low - 1
    if not (port_free("127.0.0.1", taken) and port_free("127.0.0.1", other)):
        pytest.skip(f"ports {taken}, {other} are in use on this machine")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", taken))
        listener.listen()
        assert free_port() == other
        # Both handed out or in use: a port-0 pick, still one a server can listen on.
        fallback = free_port()
        assert fallback not in (taken, other) and port_free("127.0.0.1", fallback)


def test_a_block_of_ports_is_consecutive_free_and_never_handed_out_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``count``: a config's base_port for several shards, every port of it checked and kept
    from later picks. With the span narrowed to 8 ports, a block of 5 leaves 3 single
    picks; then no block of 2 is left (an error), and a single pick falls back to port 0."""
    low, _ = ephemeral_range()
    monkeypatch.setattr(cluster, "PICKED_SPAN", 8)
    monkeypatch.setattr(cluster, "_picked", set())
    span = range(low - 8, low)
    if not all(port_free("127.0.0.1", p) for p in span):
        pytest.skip(f"ports in [{span.start}, {span.stop}) are in use on this machine")
    base = free_port(count=5)
    block = range(base, base + 5)
    assert block.start >= span.start and block.stop <= span.stop
    singles = {free_port() for _ in range(3)}
    assert singles == set(span) - set(block)
    message = f"no 2 consecutive free ports in [{span.start}, {low})"
    with pytest.raises(ClusterError, match=re.escape(message)):
        free_port(count=2)
    assert free_port() >= low  # a port-0 pick: in the ephemeral range, but free


def test_a_local_cluster_listens_on_picked_ports(
    tmp_path: Path, two_shards: tuple[Catalogue, Bundle]
) -> None:
    """Every port of a LocalCluster on free ports (shards, router, metrics, admin) lies
    below the ephemeral range, and the cluster starts and serves."""
    _, bundle = two_shards
    config = ClusterConfig(
        data_dir=str(tmp_path / "data"),
        shards=ShardsConfig(grace_s=0.5),
        router=RouterConfig(grace_s=0.5),
    )
    low, _ = ephemeral_range()
    with LocalCluster(bundle.path, config, metrics=True, log_dir=tmp_path / "logs") as running:
        addresses = [c.target for c in running.children]
        addresses += [c.admin_target for c in running.children if c.admin_target]
        ports = [int(a.rsplit(":", 1)[1]) for a in addresses]
        ports += [c.metrics_port for c in running.children if c.metrics_port is not None]
        assert len(ports) == len(set(ports)) >= 6, ports  # 3 servers and their metrics
        assert all(p < low for p in ports), (low, ports)
        assert health_status(running.router_target) == "SERVING"


def test_ports_0_in_the_config_are_free_ports_up_knows(
    tmp_path: Path, two_shards: tuple[Catalogue, Bundle], capsys: pytest.CaptureFixture[str]
) -> None:
    """`annfleet up` (fixed ports from the config) with every port 0: each is picked by the
    supervisor, so it can wait for the router and show its addresses (the router's port 0
    used to reach the router as is: it listened on a port nobody knew, and up waited
    forever); `status` and `rollout --status` find the router's admin port in cluster.json."""
    from annfleet.cli import main

    cat, bundle = two_shards
    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(f"""
data_dir: {tmp_path / "data"}
shards: {{base_port: 0, metrics_base_port: 0, admin_base_port: 0, grace_s: 0.5}}
router: {{port: 0, metrics_port: 0, admin_port: 0, grace_s: 0.5}}
""")
    config = load_config(config_file)
    state = state_path(config)
    with LocalCluster(
        bundle.path, config, fixed_ports=True, log_dir=tmp_path / "logs", state_file=state
    ) as up:
        assert health_status(up.router_target) == "SERVING"
        assert router_address(config) == up.router_target
        assert router_address(config, admin=True) == up.router_admin_target
        assert main(["status", "--config", str(config_file)]) == 0
        assert "router admin:" not in capsys.readouterr().out  # (router admin: UNAVAILABLE)
        assert main(["rollout", "--status", "--config", str(config_file)]) == 0
        assert f"stable  {bundle.id}" in capsys.readouterr().out
        addresses = [c.target for c in up.children] + [up.router_admin_target]
        addresses += [c.admin_target for c in up.shards]
        assert all(int(a.rsplit(":", 1)[1]) > 0 for a in addresses), addresses
        assert all(c.metrics_port for c in up.children)
        with Client(up.router_target, retries=0) as client:
            assert client.search(cat.vectors[3], 3, timeout=5.0).ids[0, 0] == cat.ids[3]


def test_no_readable_range_means_linux_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cluster, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ephemeral_range() == (32768, 60999)
    garbled = tmp_path / "garbled"
    garbled.write_text("not numbers\n")
    monkeypatch.setattr(cluster, "EPHEMERAL_RANGE_FILE", garbled)
    assert ephemeral_range() == (32768, 60999)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_a_local_cluster_on_ipv6_loopback(
    tmp_path: Path, two_shards: tuple[Catalogue, Bundle]
) -> None:
    """Shards and router on ``::1``: every address the cluster hands out has the literal in
    brackets, the router reaches its shards, and the metrics ports serve over IPv6."""
    from annfleet.cli import main

    cat, bundle = two_shards
    config = ClusterConfig(
        data_dir=str(tmp_path / "data"),
        shards=ShardsConfig(host="::1", grace_s=0.5),
        router=RouterConfig(host="::1", grace_s=0.5),
    )
    with LocalCluster(bundle.path, config, metrics=True, log_dir=tmp_path / "logs") as running:
        addresses = [c.target for c in running.children]
        addresses += [c.admin_target for c in running.children if c.admin_target]
        assert all(re.fullmatch(r"\[::1\]:\d+", a) for a in addresses), addresses
        assert health_status(running.router_target) == "SERVING"
        port = running.router_target.rsplit(":", 1)[1]
        assert main(["probe", "--host", "::1", "--port", port]) == 0
        with Client(running.router_target, retries=0) as client:
            result = client.search(cat.vectors[7], 5, timeout=5.0)
        assert int(result.ids[0, 0]) == int(cat.ids[7])
        assert result.coverage.shards_answered == 2
        for child in running.children:
            assert child.metrics_port
            url = f"http://[::1]:{child.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as page:
                assert b"annfleet_" in page.read()
        busy = running.busy_ports()  # all taken (by this cluster), named as HOST:PORT
        assert len(busy) == 3 * 3, busy  # 3 servers: port, metrics port, admin port
        assert all(b.startswith("[::1]:") for b in busy), busy
