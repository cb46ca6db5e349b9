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


def open_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A blocking channel: plaintext when ``credentials`` is None, else TLS."""
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
    options = (
        [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if own_subchannels else GRPC_OPTIONS
    )
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
