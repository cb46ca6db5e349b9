"""The ports LocalCluster hands its children (core/cluster.py ``free_port``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from annfleet import cluster
from annfleet.cluster import ephemeral_range, free_port, port_free


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


def test_no_readable_range_means_linux_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cluster, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ephemeral_range() == (32768, 60999)
    garbled = tmp_path / "garbled"
    garbled.write_text("not numbers\n")
    monkeypatch.setattr(cluster, "EPHEMERAL_RANGE_FILE", garbled)
    assert ephemeral_range() == (32768, 60999)
