"""TLS and mutual TLS on every gRPC port, from cert/key files named in the config.

A throwaway CA and certificates (trustme) serve a real router and shards over mTLS: a client
with a certificate from that CA gets answers; a plaintext client, a client without a
certificate and a client whose certificate another CA signed are refused.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import trustme
from support import Cluster, LoopThread, patient

from annfleet.bundle import Bundle
from annfleet.client import (
    AsyncClient,
    AsyncScatterClient,
    Client,
    ScatterClient,
    Unavailable,
    tls_credentials,
)
from annfleet.cluster import health_status
from annfleet.config import RouterConfig, ShardsConfig, SourcesConfig, TlsConfig, load_config
from annfleet.router.main import start_router
from annfleet.server.main import start_shard_server
from annfleet.serving import channel_credentials


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_cert: Path  # signed by another CA
    other_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")  # server and client auth
    stranger = other.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(root / "key.pem"))
    stranger.cert_chain_pems[0].write_to_path(str(root / "other-cert.pem"))
    stranger.private_key_pem.write_to_path(str(root / "other-key.pem"))
    return Pki(
        root / "ca.pem",
        root / "cert.pem",
        root / "key.pem",
        root / "other-cert.pem",
        root / "other-key.pem",
    )


@pytest.fixture(scope="module")
def mtls_cluster(loop_thread: LoopThread, flat_bundle: Bundle, pki: Pki) -> Iterator[Cluster]:
    tls = TlsConfig(
        enabled=True,
        cert=str(pki.cert),
        key=str(pki.key),
        ca=str(pki.ca),
        require_client_cert=True,
    )
    shards = [
        loop_thread.run(start_shard_server(flat_bundle.path, i, ShardsConfig(), tls=tls))
        for i in range(flat_bundle.num_shards)
    ]
    router = loop_thread.run(
        start_router(
            flat_bundle.path,
            [f"127.0.0.1:{s.port}" for s in shards],
            RouterConfig(connect_timeout_s=10),
            tls=tls,
        )
    )
    cluster = Cluster(loop_thread, flat_bundle, [[s] for s in shards], router)
    yield cluster
    cluster.close()


def query(dim: int = 32) -> np.ndarray:
    return np.ones(dim, np.float32)


def _tls(pki: Pki) -> TlsConfig:
    return TlsConfig(
        enabled=True, cert=str(pki.cert), key=str(pki.key), ca=str(pki.ca), require_client_cert=True
    )


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _replica_cluster(lt: LoopThread, bundle: Bundle, pki: Pki, plaintext_second: bool) -> Cluster:
    """2 replicas per shard behind an mTLS router; replica 1 serves plaintext if asked."""
    tls = _tls(pki)
    groups = [
        [
            lt.run(
                start_shard_server(
                    bundle.path,
                    i,
                    ShardsConfig(),
                    replica=r,
                    tls=None if plaintext_second and r == 1 else tls,
                )
            )
            for r in range(2)
        ]
        for i in range(bundle.num_shards)
    ]
    router = lt.run(
        start_router(
            bundle.path,
            [[f"127.0.0.1:{s.port}" for s in group] for group in groups],
            RouterConfig(connect_timeout_s=10, oversample=3.0),
            tls=tls,
            # Every Retrieve goes to the shards (no candidate cache): replica traffic is counted.
            sources=dataclasses.replace(patient(SourcesConfig()), candidate_cache_size=0),
        )
    )
    return Cluster(lt, bundle, groups, router)


def _replica_status(cluster: Cluster) -> list[list[str]]:
    state = cluster.router.service.state
    assert state is not None
    return [[r.status for r in state.scatter.groups[i].replicas] for i in range(3)]


def _answered(cluster: Cluster) -> list[list[int]]:
    state = cluster.router.service.state
    assert state is not None
    return [[r.answered for r in state.scatter.groups[i].replicas] for i in range(3)]


def test_router_reaches_every_shard_replica_over_mtls(
    loop_thread: LoopThread, flat_bundle: Bundle, pki: Pki
) -> None:
    """The router's TLS credentials reach every replica's channel: each replica's health
    stream (over mTLS) says SERVING, and with replica 0 of every shard gone, replica 1
    answers a Retrieve with full coverage."""
    cluster = _replica_cluster(loop_thread, flat_bundle, pki, plaintext_second=False)
    credentials = tls_credentials(ca=pki.ca, cert=pki.cert, key=pki.key)
    users = flat_bundle.users()
    assert users is not None
    user_ids = [int(u) for u in users[0][:20]]
    try:
        _wait_until(lambda: _replica_status(cluster) == [["SERVING", "SERVING"]] * 3)
        with Client(cluster.router_target, timeout=10, credentials=credentials) as client:
            for user in user_ids:
                result = client.retrieve(user, 10)
                assert result.coverage.shards_answered == 3 and not result.coverage.degraded
                assert len(result.ids) == 10
            for i in range(3):
                cluster.stop_replica(i, 0)
            before = _answered(cluster)
            for user in user_ids:
                result = client.retrieve(user, 10)
                assert result.coverage.shards_answered == 3 and not result.coverage.degraded
        after = _answered(cluster)
        assert all(after[i][1] > before[i][1] for i in range(3)), (before, after)
    finally:
        cluster.close()


def test_router_with_tls_refuses_a_plaintext_replica(
    loop_thread: LoopThread, flat_bundle: Bundle, pki: Pki
) -> None:
    """Replica 1 of every shard serves plaintext: the router's mTLS channel to it never
    completes a handshake, so it never enters rotation; the TLS replicas answer everything,
    and a shard left with only its plaintext replica does not answer (degraded)."""
    cluster = _replica_cluster(loop_thread, flat_bundle, pki, plaintext_second=True)
    credentials = tls_credentials(ca=pki.ca, cert=pki.cert, key=pki.key)
    users = flat_bundle.users()
    assert users is not None
    user_ids = [int(u) for u in users[0][:20]]
    try:
        _wait_until(lambda: all(s[0] == "SERVING" for s in _replica_status(cluster)))
        with Client(cluster.router_target, timeout=10, retries=0, credentials=credentials) as c:
            for user in user_ids:
                result = c.retrieve(user, 10)
                assert result.coverage.shards_answered == 3 and not result.coverage.degraded
            assert all(s[1] != "SERVING" for s in _replica_status(cluster))
            assert [a[1] for a in _answered(cluster)] == [0, 0, 0]
            cluster.stop_replica(0, 0)  # shard 0 keeps only its plaintext replica
            result = c.retrieve(user_ids[0], 10)
        assert result.coverage.degraded and 0 not in result.coverage.answered_shard_ids
        assert result.coverage.shards_answered == 2
        assert [a[1] for a in _answered(cluster)] == [0, 0, 0]
    finally:
        cluster.close()


def test_mtls_client_with_a_cert_from_the_ca_gets_answers(mtls_cluster: Cluster, pki: Pki) -> None:
    credentials = tls_credentials(ca=pki.ca, cert=pki.cert, key=pki.key)
    with Client(mtls_cluster.router_target, timeout=10, credentials=credentials) as client:
        result = client.search(query(), 5)
    # The router reached every shard over mTLS too.
    assert result.coverage.shards_answered == mtls_cluster.bundle.num_shards
    assert not result.coverage.degraded and result.ids.shape == (1, 5)
    with ScatterClient(mtls_cluster.shard_targets, timeout=10, credentials=credentials) as scatter:
        assert scatter.search(query(), 5).coverage.shards_answered == 3


def test_async_clients_take_the_same_credentials(
    mtls_cluster: Cluster, pki: Pki, loop_thread: LoopThread
) -> None:
    pem = tls_credentials(
        ca=pki.ca.read_bytes(), cert=pki.cert.read_bytes(), key=pki.key.read_bytes()
    )

    async def both() -> tuple[int, int]:
        async with AsyncClient(mtls_cluster.router_target, timeout=10, credentials=pem) as c:
            routed = await c.search(query(), 5)
        async with AsyncScatterClient(mtls_cluster.shard_targets, timeout=10, credentials=pem) as s:
            direct = await s.search(query(), 5)
        return routed.coverage.shards_answered, direct.coverage.shards_answered

    assert loop_thread.run(both()) == (3, 3)


@pytest.mark.parametrize("who", ["plaintext", "no client cert", "cert from another CA"])
def test_refused(mtls_cluster: Cluster, pki: Pki, who: str) -> None:
    credentials = {
        "plaintext": None,
        "no client cert": tls_credentials(ca=pki.ca),
        "cert from another CA": tls_credentials(ca=pki.ca, cert=pki.other_cert, key=pki.other_key),
    }[who]
    for target in [mtls_cluster.router_target, *mtls_cluster.shard_targets]:
        with (
            Client(target, timeout=2, retries=0, credentials=credentials) as client,
            pytest.raises(Unavailable),
        ):
            client.search(query(), 5)
        assert health_status(target, credentials=credentials) == "DOWN"
    # The servers keep serving the clients they trust.
    assert (
        health_status(
            mtls_cluster.router_target,
            credentials=tls_credentials(ca=pki.ca, cert=pki.cert, key=pki.key),
        )
        == "SERVING"
    )


def test_config_paths_are_resolved_against_the_config_file(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "certs").mkdir()
    for p in (pki.ca, pki.cert, pki.key):
        (tmp_path / "certs" / p.name).write_bytes(p.read_bytes())
    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(
        "tls:\n  enabled: true\n  cert: certs/cert.pem\n  key: certs/key.pem\n"
        "  ca: certs/ca.pem\n  require_client_cert: true\n"
    )
    tls = load_config(config_file).tls
    assert tls.cert == str(tmp_path / "certs" / "cert.pem")
    assert tls.ca == str(tmp_path / "certs" / "ca.pem")
    assert channel_credentials(tls) is not None


def test_tls_config_errors_name_the_key(tmp_path: Path) -> None:
    from annfleet.errors import ConfigError

    config_file = tmp_path / "c.yaml"
    config_file.write_text("tls:\n  enabled: true\n")
    with pytest.raises(ConfigError, match=r"tls\.cert and tls\.key"):
        load_config(config_file)
    config_file.write_text(
        "tls:\n  enabled: true\n  cert: a.pem\n  key: b.pem\n  require_client_cert: true\n"
    )
    with pytest.raises(ConfigError, match=r"tls\.ca"):
        load_config(config_file)


def test_cli_query_and_status_over_mtls(mtls_cluster: Cluster, pki: Pki, tmp_path: Path) -> None:
    users = mtls_cluster.bundle.users()
    assert users is not None
    user = int(users[0][0])
    base = [
        sys.executable,
        "-m",
        "annfleet.cli",
        "query",
        "--user",
        str(user),
        "--k",
        "3",
        "--json",
        "--target",
        mtls_cluster.router_target,
    ]
    flags = ["--ca", str(pki.ca), "--cert", str(pki.cert), "--key", str(pki.key)]
    done = subprocess.run([*base, *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"candidates"' in done.stdout
    refused = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr


def test_local_cluster_processes_serve_mtls_from_the_config_file(
    flat_bundle: Bundle, pki: Pki, tmp_path: Path
) -> None:
    """`annfleet up`'s children (serve-shard / serve-router processes) read tls from the
    config file; the supervisor's health checks and `annfleet query --config` use it too."""
    from annfleet.cluster import LocalCluster

    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(
        f"tls:\n  enabled: true\n  cert: {pki.cert}\n  key: {pki.key}\n  ca: {pki.ca}\n"
        "  require_client_cert: true\n"
    )
    config = load_config(config_file)
    with LocalCluster(
        flat_bundle.path, config, log_dir=tmp_path / "logs", config_path=config_file
    ) as cluster:
        for target in [cluster.router_target, *cluster.shard_targets]:
            assert health_status(target) == "DOWN"  # plaintext is refused
            assert health_status(target, credentials=cluster.credentials) == "SERVING"
        users = flat_bundle.users()
        assert users is not None
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "annfleet.cli",
                "query",
                "--user",
                str(int(users[0][0])),
                "--json",
                "--target",
                cluster.router_target,
                "--config",
                str(config_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert '"degraded": false' in done.stdout


def test_local_cluster_with_tls_needs_the_config_file(flat_bundle: Bundle, pki: Pki) -> None:
    from annfleet.cluster import LocalCluster
    from annfleet.config import ClusterConfig
    from annfleet.errors import ConfigError

    tls = TlsConfig(enabled=True, cert=str(pki.cert), key=str(pki.key), ca=str(pki.ca))
    with pytest.raises(ConfigError, match="config_path"):
        LocalCluster(flat_bundle.path, ClusterConfig(tls=tls))
