"""The client is what ranking services install (grpcio, protobuf, numpy): it must import with
nothing else, and never reach into the server or router packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import imported_modules

# Everything outside the base install, and the packages the client must never import.
BLOCKED = (
    "faiss",
    "torch",
    "yaml",
    "prometheus_client",
    "cachetools",
    "grpc_health",
    "grpc_reflection",
    "tqdm",
    "uvloop",
    "annfleet.server",
    "annfleet.router",
    "annfleet.model",
    "annfleet.benchmarks",
)
# The core modules the client may use: the wire helpers and what they stand on.
ALLOWED_CORE = {
    "annfleet",
    "annfleet.arrays",
    "annfleet.errors",
    "annfleet.merge",
    "annfleet.names",
    "annfleet.queue_time",
    "annfleet.recent",
    "annfleet.return_time",
    "annfleet.validation",
}


def test_client_imports_with_only_its_base_install() -> None:
    code = (
        "import pkgutil, sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None  # an import of it now raises ImportError\n"
        "import annfleet.client as c\n"
        "for m in pkgutil.walk_packages(c.__path__, 'annfleet.client.'):\n"
        "    __import__(m.name)\n"
        "loaded = [m for m, mod in sys.modules.items() if mod is not None]\n"
        "print(' '.join(sorted(m for m in loaded if m.startswith('annfleet'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "annfleet.client.sync" in loaded and "annfleet.client.aio" in loaded
    core = {m for m in loaded if not m.startswith(("annfleet.client", "annfleet.v1"))}
    assert core <= ALLOWED_CORE, core - ALLOWED_CORE


def test_no_client_source_imports_server_router_or_other_core_modules() -> None:
    """Also sees imports inside functions, which importing the modules does not exercise."""
    import annfleet.client

    allowed = ALLOWED_CORE | {"annfleet.client", "annfleet.v1"}
    for file, names in imported_modules(Path(annfleet.client.__path__[0])).items():
        # annfleet.<package or module>, e.g. "from annfleet.arrays import F32" -> annfleet.arrays
        ours = {".".join(n.split(".")[:2]) for n in names if n.split(".")[0] == "annfleet"}
        bad = (ours - allowed) | {n for n in names if n.startswith(BLOCKED)}
        assert not bad, f"client/{file} imports {sorted(bad)}"
