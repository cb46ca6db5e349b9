"""``annfleet probe``: exit 0 when a process's gRPC health says SERVING, else 1.

What a container health check or a Kubernetes exec probe runs where the native gRPC probe
cannot be used (TLS: the kubelet's gRPC probe speaks plaintext only). It checks the overall
service ("") by default, the one that goes SERVING only once the bundle is loaded.
"""

from __future__ import annotations

import argparse

import grpc

from annfleet.cluster import health_status
from annfleet.config import host_port


def tls_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """Channel credentials from PEM files: the CA to trust, and a client cert/key for mTLS."""
    from annfleet.client import AnnfleetError, tls_credentials

    try:
        return tls_credentials(ca=ca, cert=cert or None, key=key or None)
    except AnnfleetError as exc:
        raise SystemExit(f"annfleet probe: {exc.details}") from exc


def cmd_probe(args: argparse.Namespace) -> int:
    from annfleet.client import AnnfleetError

    target = args.target or host_port(args.host, args.port)
    credentials = None
    options: list[tuple[str, str]] = []
    if args.ca:
        credentials = tls_credentials(args.ca, args.cert, args.key)
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
    try:  # a malformed target (gRPC would dial --port 99999 as 34463) is named
        status = health_status(
            target, args.timeout, service=args.service, credentials=credentials, options=options
        )
    except AnnfleetError as exc:
        raise SystemExit(f"annfleet probe: {exc.details}") from exc
    print(f"{target} {args.service or '(overall)'}: {status}")
    return 0 if status == "SERVING" else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from annfleet.cli import positive_seconds

    p = sub.add_parser(
        "probe",
        help="exit 0 if a process's gRPC health is SERVING (container / exec probes)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--target", help="HOST:PORT (default: --host:--port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--service", default="", help='health service name ("" = overall)')
    p.add_argument("--timeout", type=positive_seconds, default=2.0, help="seconds")
    p.add_argument("--ca", default="", help="CA bundle (PEM): probe over TLS")
    p.add_argument("--cert", default="", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", default="", help="client private key (PEM) for mutual TLS")
    p.add_argument(
        "--server-name",
        default="localhost",
        help="name checked against the server certificate with --ca (default: localhost)",
    )
    p.set_defaults(func=cmd_probe)
