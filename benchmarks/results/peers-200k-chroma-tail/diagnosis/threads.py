# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
import json, sys
from pathlib import Path
import numpy as np

d = Path(sys.argv[1])
tags = sorted(p.stem for p in d.glob("*-ef*.npz"))
pgc = {}
for f in d.glob("serve-*.json"):
    j = json.loads(f.read_text())
    pgc[j["pid"]] = j
pids = json.loads((d / "pids.json").read_text())
byname = {v: k for k, v in pids.items()}
for tag in tags:
    z = np.load(d / f"{tag}.npz")
    m = json.loads((d / f"{tag}.json").read_text())
    snaps, tt = z["snaps"], z["tt"]
    delta = np.diff(snaps, axis=0)[:, :-1]  # (N, T, 3)
    lat = (tt[:, 1] - tt[:, 0]) * 1e3
    meta = m["meta"]
    procs = sorted(set(x[0] for x in meta))
    idx = {p: [i for i, x in enumerate(meta) if x[0] == p] for p in procs}
    order = np.argsort(lat)
    med = order[len(order) // 2 - 25 : len(order) // 2 + 25]
    print(f"== {tag}: p50 {np.median(lat):.2f} p99 {np.sort(lat)[-10]:.2f}  threads {len(meta)}")

    def row(i):
        s = f"{lat[i]:7.2f} ms |"
        for p in procs:
            cpu = delta[i, idx[p], 0].sum() / 1e6
            wait = delta[i, idx[p], 1].sum() / 1e6
            s += f" {p[:10]:>10} cpu {cpu:5.2f} wait {wait:5.2f} |"
        return s

    avg = f"{np.mean(lat[med]):7.2f} ms |"
    for p in procs:
        avg += f" {p[:10]:>10} cpu {delta[med][:, idx[p], 0].sum(1).mean() / 1e6:5.2f} wait {delta[med][:, idx[p], 1].sum(1).mean() / 1e6:5.2f} |"
    print("median50", avg)
    for i in order[-12:][::-1]:
        print(row(i))
        # top threads by cpu+wait
        tot = delta[i, :, 0] + delta[i, :, 1]
        top = np.argsort(tot)[-4:][::-1]
        print(
            "      top:",
            ", ".join(
                f"{meta[t][0][:8]}/{meta[t][2]} c{delta[i, t, 0] / 1e6:.2f} w{delta[i, t, 1] / 1e6:.2f}"
                for t in top
                if tot[t] > 2e5
            ),
        )
        t0, t1 = tt[i]
        for pid, j in pgc.items():
            for g0, dur, gen, col in j["gc"]:
                if g0 < t1 and g0 + dur > t0:
                    print(f"      GC {byname.get(pid, pid)} gen{gen} {dur * 1e3:.2f} ms")
        for g0, dur, gen in m["client_gc"]:
            if g0 < t1 and g0 + dur > t0:
                print(f"      GC client gen{gen} {dur * 1e3:.2f} ms")
for pid, j in pgc.items():
    g = np.array([x[1] for x in j["gc"]]) * 1e3 if j["gc"] else np.zeros(0)
    gens = [x[2] for x in j["gc"]]
    print(
        byname.get(pid, pid),
        "gc n",
        len(g),
        "by gen",
        {k: gens.count(k) for k in set(gens)},
        "max ms %.2f" % (g.max() if len(g) else 0),
        "sum ms %.1f" % g.sum(),
        "thr",
        j["threshold"],
        "frozen",
        j["frozen"],
    )
