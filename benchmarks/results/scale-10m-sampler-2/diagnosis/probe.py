"""Every INTERVAL s (run at nice 19): the box's /proc/stat CPU columns and, for each cluster
process of this worktree (serve-shard / serve-router over the 10M bundle), its total CPU and
the CPU of its threads at nice > 0 (a shard's exact-scan thread runs at shards.exact_nice 10),
cumulative, in clock ticks. One line per tick; diagnosis only.

usage: probe.py OUT INTERVAL PATTERN
"""

import os
import re
import sys
import time

out, interval, pattern = sys.argv[1], float(sys.argv[2]), re.compile(sys.argv[3])


def procs() -> dict[int, str]:
    found = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern.search(cmd):
            m = re.search(r"--shard (\d+)", cmd)
            found[int(p)] = f"s{m.group(1)}" if m and "serve-shard" in cmd else "router"
    return found


with open(out, "a", buffering=1) as f:
    f.write(
        "# t user nice system idle iowait irq softirq steal | name:pid:total:niced:ntasks_niced\n"
    )
    pids: dict[int, str] = {}
    last_scan = 0.0
    while True:
        now = time.time()
        if now - last_scan > 2.0:
            pids, last_scan = procs(), now
        with open("/proc/stat") as fh:
            cpu = fh.readline().split()[1:9]
        parts = []
        for pid, name in sorted(pids.items(), key=lambda x: x[1]):
            total = niced = nn = 0
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                        st = fh.read()
                    fields = st[st.rindex(")") + 2 :].split()
                    t = int(fields[11]) + int(fields[12])
                    total += t
                    if int(fields[16]) > 0:
                        niced += t
                        nn += 1
            except OSError:
                continue
            parts.append(f"{name}:{pid}:{total}:{niced}:{nn}")
        f.write(f"{now:.3f} {' '.join(cpu)} | {' '.join(parts)}\n")
        time.sleep(interval)
