"""Channels the client opens: explicit message-size limits, plaintext or TLS."""

from __future__ import annotations

from pathlib import Path

import grpc

from annfleet.arrays import GRPC_OPTIONS
from annfleet.client.errors import InvalidArgument

Pem = str | Path | bytes | None


def _pem(source: Pem, what: str) -> bytes | None:
    """PEM bytes from bytes or a file path; None or "" -> None."""
    if source is None or source == "":
        return None
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the TLS {what} {source}: {exc.strerror}") from exc


def tls_credentials(ca: Pem = None, cert: Pem = None, key: Pem = None) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files (paths) or PEM bytes.

    ``ca``: the CA certificates that signed the servers' certificates (None: the system
    roots). ``cert`` + ``key``: this client's certificate chain and private key, presented
    to servers that require client certificates (mutual TLS).
    """
    chain, private = _pem(cert, "certificate"), _pem(key, "key")
    if (chain is None) != (private is None):
        raise InvalidArgument("a client certificate and its key go together (cert= and key=)")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca, "CA"), private_key=private, certificate_chain=chain
    )


# gRPC target URIs (unix:/path, dns:///host:port, ipv4:a.b.c.d:p, ...): gRPC's to check
URI_SCHEMES = ("unix:", "unix-abstract:", "vsock:", "ipv4:", "ipv6:", "dns:")


def check_target(target: str) -> str:
    """``target`` if it is HOST:PORT, [IPV6]:PORT (port in 1..65535) or a gRPC URI; else
    InvalidArgument. gRPC itself takes a port above 65535 modulo 65536 (99999 dials 34463),
    a bare host as port 443, and an empty target fails inside its channel code (UNKNOWN)."""
    if not target.strip():
        raise InvalidArgument("target: empty; expected HOST:PORT, e.g. 127.0.0.1:50051")
    if "/" in target or target.startswith(URI_SCHEMES):
        return target
    host, sep, port = target.rpartition(":")
    if not sep or not host or (":" in host and not host.startswith("[")):
        raise InvalidArgument(f"target {target!r}: expected HOST:PORT or [IPV6]:PORT")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidArgument(f"target {target!r}: port {port!r} is not in 1..65535")
    return target


def open_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A blocking channel: plaintext when ``credentials`` is None, else TLS."""
    check_target(target)
    if credentials is None:
        return grpc.insecure_channel(target, options=GRPC_OPTIONS)
    return grpc.secure_channel(target, credentials, options=GRPC_OPTIONS)


def open_aio_channel(
    target: str, credentials: grpc.ChannelCredentials | None, *, own_subchannels: bool = False
) -> grpc.aio.Channel:
    """The asyncio twin of ``open_channel``.

    ``own_subchannels``: connections of this channel's own, not shared through gRPC's
    process-wide subchannel pool with other channels to the same target; a new such channel
    connects at once even while another one to the target waits out a reconnect backoff.
    """
    check_target(target)
    options = (
        [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if own_subchannels else GRPC_OPTIONS
    )
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
