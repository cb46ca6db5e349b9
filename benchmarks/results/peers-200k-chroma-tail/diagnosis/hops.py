# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
import json, sys, glob
from pathlib import Path
import numpy as np


def hops(d, tag):
    z = np.load(d / f"{tag}.npz")
    tt = z["tt"]
    pids = json.loads((d / "pids.json").read_text())
    byp = {v: k for k, v in pids.items()}
    R = None
    S = {}
    for f in glob.glob(str(d / "stamps-*.json")):
        pid = int(f.rsplit("-", 1)[1].split(".")[0])
        s = json.loads(Path(f).read_text())
        if byp[pid] == "router":
            R = np.array([t for t, c in s]), [c for t, c in s]
        else:
            S[byp[pid]] = (np.array([t for t, c in s]), [c for t, c in s])

    def within(st, t0, t1, code):
        ts, cs = st
        a, b = np.searchsorted(ts, [t0, t1])
        return [ts[i] for i in range(a, b) if cs[i] == code]

    lat = (tt[:, 1] - tt[:, 0]) * 1e3
    out = []
    for i in np.argsort(lat)[::-1][:10]:
        t0, t1 = tt[i]
        rin = within(R, t0, t1, "R>")
        rout = within(R, t0, t1, "R<")
        so = within(R, t0, t1, "S>")
        sb = within(R, t0, t1, "S<")
        h = {
            "client->router": rin[0] - t0 if rin else None,
            "router->client": t1 - rout[-1] if rout else None,
        }
        for name, st in S.items():
            T = within(st, t0, t1, "T")
            A0 = within(st, t0, t1, "A>")
            A1 = within(st, t0, t1, "A<")
            W0 = within(st, t0, t1, "W>")
            if T and so:
                h[f"router->{name}"] = T[0] - so[0]
            if A0 and A1:
                h[f"{name} search"] = A1[0] - A0[0]
            if W0 and sb:
                h[f"{name}->router"] = min([t for t in sb if t >= W0[0]] or [np.nan]) - W0[0]
        if sb and rout:
            h["merge"] = rout[-1] - max(sb)
        h = {k: v * 1e3 for k, v in h.items() if v is not None and v == v}
        worst = max(h, key=h.get)
        out.append((lat[i], worst, h[worst], len(so)))
    return out


for d, tag in [(Path(a.split(":")[0]), a.split(":")[1]) for a in sys.argv[1:]]:
    o = hops(d, tag)
    print(
        d,
        tag,
        "; ".join(f"{l:.1f}ms: {w} {v:.1f}" + (" [sampled]" if n > 2 else "") for l, w, v, n in o),
    )
