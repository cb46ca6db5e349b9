"""The diagnosis run's requests (hang_timings.py --dump) split into the router's measured way
in, its handler, the client's own sending lateness and what is left (the reply's way out and
the client's parsing); over all requests and outside the stalls at 8-16 s. The slow ones
listed one by one.

    python split.py diag.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def pct(values: list[float]) -> str:
    a = np.asarray(values)
    return (
        " ".join(f"p{q}={np.percentile(a, q):6.2f}" for q in (50, 90, 99)) + f" max={a.max():6.2f}"
    )


rows = json.loads(Path(sys.argv[1]).read_text())
t0 = rows[0][0]
for name, sel in [("all", rows), ("outside 8-16 s", [r for r in rows if not 8 <= r[0] - t0 <= 16])]:
    print(f"{name}: {len(sel)} requests")
    print(" client      ", pct([r[1] for r in sel]))
    print(" inbound     ", pct([r[2]["inbound"] for r in sel]))
    print(" total       ", pct([r[2]["total"] for r in sel]))
    print(" inbound+total", pct([r[2]["total"] + r[2]["inbound"] for r in sel]))
    print(" c_late      ", pct([r[2]["c_late"] for r in sel]))
    out = [r[1] - r[2]["total"] - r[2]["inbound"] - r[2]["c_late"] for r in sel]
    print(" rest (out)  ", pct(out))
    print(
        " inbound 0 (below gRPC's 1 ms rounding):",
        f"{np.mean([r[2]['inbound'] == 0 for r in sel]):.2f}",
    )
print("over 22 ms:")
for r in rows:
    if r[1] > 22:
        t = r[2]
        rest = r[1] - t["total"] - t["inbound"] - t["c_late"]
        print(
            f"{r[0] - t0:7.3f} s client {r[1]:6.2f} c_late {t['c_late']:5.2f} inbound "
            f"{t['inbound']:6.2f} total {t['total']:6.2f} sources {t.get('sources', 0):6.2f} "
            f"rest {rest:6.2f} dropped {','.join(sorted(r[3]))}"
        )
