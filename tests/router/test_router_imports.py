"""The router process never loads faiss, and loads torch only for a bundle with a user tower."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import imported_modules

IMPORT_ALL = (
    "import pkgutil, sys\n"
    "sys.modules['faiss'] = None  # an import of faiss now raises ImportError\n"
    "{block_torch}"
    "import annfleet.router as router\n"
    "names = [m.name for m in pkgutil.walk_packages(router.__path__, 'annfleet.router.')]\n"
    "names = [n for n in names if {keep}]\n"
    "for name in names:\n"
    "    __import__(name)\n"
    "print(' '.join(names))\n"
)


def _import_router_modules(block_torch: bool) -> list[str]:
    code = IMPORT_ALL.format(
        block_torch="sys.modules['torch'] = None\n" if block_torch else "",
        # tower.py runs the TorchScript user tower: imported only for a bundle that has one.
        keep="n != 'annfleet.router.tower'" if block_torch else "True",
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_every_router_module_imports_without_faiss_or_torch() -> None:
    names = _import_router_modules(block_torch=True)
    assert {"annfleet.router.main", "annfleet.router.service", "annfleet.router.scatter"} <= set(
        names
    )


def test_the_tower_module_needs_torch_but_not_faiss() -> None:
    pytest.importorskip("torch")
    assert "annfleet.router.tower" in _import_router_modules(block_torch=False)


def test_no_router_source_imports_faiss_or_the_server() -> None:
    """Also sees imports inside functions; torch is for tower.py alone."""
    import annfleet.router

    for file, names in imported_modules(Path(annfleet.router.__path__[0])).items():
        bad = {n for n in names if n.startswith(("faiss", "annfleet.server", "annfleet.model"))}
        if file != "tower.py":
            bad |= {n for n in names if n.split(".")[0] == "torch"}
        assert not bad, f"router/{file} imports {sorted(bad)}"
