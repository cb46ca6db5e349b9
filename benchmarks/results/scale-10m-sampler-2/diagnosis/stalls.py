"""Where a run's slow requests fall (diagnosis, not timed): per open-loop step, the share of
requests over 50 ms, the share of the step's time a shard was scanning (exact search: CPU of its
nice-10 thread) and the share of the slow requests sent while one was; then each burst of slow
requests (gaps < 0.3 s) with what the 0.1 s probe saw around it: scanning shards, the box's
CPU columns (user / nice = the co-tenants at nice 19 / system / idle / iowait / steal, in
cores) and the servers' cores.

With HOLD_LOG, also the share of requests (and of the slow ones) sent within POLL_S (2.5) s
after a `samples HH:MM:SS` line of the hold log (the start of an `annfleet rollout --status`
poll of the router's recall gauge, a CLI process at nice 19).

usage: stalls.py TRACE_DIR PROBE_FILE [SLOW_MS [HOLD_LOG]]
"""

import csv
import gzip
import sys
import time
from pathlib import Path

import numpy as np


def hms(x: float) -> str:
    c = int(x * 100)
    return time.strftime("%H:%M:%S", time.gmtime(c // 100)) + f".{c % 100:02d}"


HZ = 100.0
trace_dir, probe_file = Path(sys.argv[1]), Path(sys.argv[2])
slow_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 50.0
POLL_S = 2.5
polls: list[float] = []
if len(sys.argv) > 4:
    for line in Path(sys.argv[4]).read_text().splitlines():
        if line.startswith("samples "):
            polls.append(line.split()[1])  # type: ignore[arg-type]

# ---- probe: times, box columns, per-process cumulative (total, niced) ticks
times: list[float] = []
box: list[list[int]] = []
procs: list[dict[str, tuple[int, int]]] = []
if probe_file.suffix == ".gz":
    with gzip.open(probe_file, "rt") as fh:
        probe_text = fh.read()
else:
    probe_text = probe_file.read_text()
for line in probe_text.splitlines():
    if line.startswith("#"):
        continue
    left, _, right = line.partition("|")
    f = left.split()
    times.append(float(f[0]))
    box.append([int(x) for x in f[1:9]])
    d: dict[str, tuple[int, int]] = {}
    for part in right.split():
        pname, pid, ptotal, pniced, _n = part.split(":")
        d[f"{pname}:{pid}"] = (int(ptotal), int(pniced))
    procs.append(d)
t = np.array(times)
box_a = np.array(box, dtype=float)
# one pid per name: the busiest (a probe may also have matched a helper process as "router")
busiest: dict[str, tuple[float, str]] = {}
for d in procs:
    for key, (tot, _niced) in d.items():
        pname = key.split(":")[0]
        if tot >= busiest.get(pname, (-1.0, ""))[0]:
            busiest[pname] = (tot, key)
keys = {pname: key for pname, (_, key) in busiest.items()}
procs = [{pname: d[key] for pname, key in keys.items() if key in d} for d in procs]
names = sorted(keys)
shards = [n for n in names if n.startswith("s")]


def series(name: str, i: int) -> np.ndarray:
    return np.array([d.get(name, (np.nan, np.nan))[i] for d in procs], dtype=float)


niced = {s: series(s, 1) for s in shards}
total = {n: series(n, 0) for n in names}

# scanning intervals per shard: probe ticks where its niced CPU grew, joined over gaps < 0.5 s
scan_iv: dict[str, list[tuple[float, float]]] = {}
for s in shards:
    grow = np.where(np.diff(niced[s]) > 0)[0]
    ivs: list[tuple[float, float]] = []
    for i in grow:
        a, b = t[i], t[i + 1]
        if ivs and a - ivs[-1][1] < 0.5:
            ivs[-1] = (ivs[-1][0], b)
        else:
            ivs.append((a, b))
    scan_iv[s] = ivs


def scanning(x: float) -> list[str]:
    return [s for s in shards if any(a <= x <= b for a, b in scan_iv[s])]


def window(a: float, b: float) -> str:
    i = max(int(np.searchsorted(t, a)) - 1, 0)
    j = min(int(np.searchsorted(t, b)) + 1, len(t) - 1)
    dt = t[j] - t[i]
    if dt <= 0:
        return "no probe"
    cols = (box_a[j] - box_a[i]) / HZ / dt
    col = dict(
        zip(["user", "nice", "sys", "idle", "iowait", "irq", "softirq", "steal"], cols, strict=True)
    )
    srv = sum((total[n][j] - total[n][i]) for n in names) / HZ / dt
    scan = {s: (niced[s][j] - niced[s][i]) / HZ / dt for s in shards}
    return (
        f"[{dt:.1f}s] user {col['user']:.2f} nice {col['nice']:.2f} sys {col['sys']:.2f} "
        f"idle {col['idle']:.2f} iowait {col['iowait']:.2f} steal {col['steal']:.2f} | servers "
        f"{srv:.2f} cores, scan cores " + " ".join(f"{s}={v:.2f}" for s, v in scan.items())
    )


print("scan intervals: " + "; ".join(f"{s}: {len(v)}" for s, v in scan_iv.items()))
for s, v in scan_iv.items():
    print(f"  {s}: " + ", ".join(f"{hms(a)}-{hms(b)[6:]} ({b - a:.1f}s)" for a, b in v))
for path in sorted(trace_dir.glob("step*.csv*")):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        continue
    ts = np.array([float(r["t_sched"]) for r in rows])
    lat = np.array([float(r["latency_ms"]) for r in rows])
    bad = np.array([r["code"] != "OK" for r in rows])
    slow = (lat > slow_ms) | bad
    a, b = ts.min(), ts.max()
    scan_any = np.array([bool(scanning(x)) for x in ts])
    day = time.strftime("%Y-%m-%d", time.gmtime(a))
    poll_t = [
        float(time.mktime(time.strptime(f"{day} {p}", "%Y-%m-%d %H:%M:%S"))) - time.timezone
        for p in polls
    ]
    poll_t = [p if abs(p - a) < 43200 else p + 86400 for p in poll_t]  # past midnight
    in_poll = np.array([any(0 <= x - p < POLL_S for p in poll_t) for x in ts])
    scan_time = sum(
        max(0.0, min(y, b) - max(x, a)) for s in shards for x, y in scan_iv[s]
    )  # summed over shards
    print(
        f"\n{path.name} ({hms(a)}-{hms(b)[6:]}): {len(ts)} requests, {slow.sum()} slow "
        f"(> {slow_ms:.0f} ms or failed, "
        f"{bad.sum()} failed); requests sent while a shard scanned {scan_any.mean():.2f}, "
        f"slow ones {scan_any[slow].mean() if slow.any() else float('nan'):.2f}; "
        f"shard-scan seconds {scan_time:.1f} of {b - a:.1f}; whole step: {window(a, b)}"
    )
    if poll_t:
        print(
            f"  within {POLL_S} s after a gauge poll: requests {in_poll.mean():.2f}, slow ones "
            f"{in_poll[slow].mean() if slow.any() else float('nan'):.2f}"
        )
    idx = np.where(slow)[0]
    bursts: list[list[int]] = []
    for i in idx:
        if bursts and ts[i] - ts[bursts[-1][-1]] < 0.3:
            bursts[-1].append(i)
        else:
            bursts.append([i])
    for bl in bursts:
        if len(bl) < 3:
            continue
        x, y = ts[bl[0]], ts[bl[-1]]
        print(
            f"  burst {hms(x)}-{hms(y)[6:]} ({y - x:.2f}s): {len(bl)} slow, max "
            f"{lat[bl].max():.0f} ms, {bad[bl].sum()} failed; scanning at start "
            f"{scanning(x) or '-'}; {window(x - 0.3, y + lat[bl].max() / 1e3)}"
        )
