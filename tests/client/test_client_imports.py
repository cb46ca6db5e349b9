"""The client is what ranking services install: it must work without faiss and torch."""

from __future__ import annotations

import subprocess
import sys


def test_client_imports_without_faiss_or_torch() -> None:
    code = (
        "import sys\n"
        "sys.modules['faiss'] = None\n"  # any import of faiss now raises ImportError
        "sys.modules['torch'] = None\n"
        "import annfleet.client as c\n"
        "import annfleet.router.merge\n"
        "assert 'faiss' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(sorted(c.__all__)[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "AnnfleetError"
