# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from annfleet.benchmarks import datasets
from annfleet.benchmarks.recall_latency import local_cluster
from annfleet.benchmarks.systems import RouterSystem

B = Path(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s4-60c88f63bb49"
    )
)
TCK = os.sysconf("SC_CLK_TCK")
SPY = "/work/wt/scale12/.venv/bin/py-spy"


def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            st = open(f"/proc/{pid}/task/{t}/stat").read()
            name = st[st.index("(") + 1 : st.rindex(")")]
            f = st[st.rindex(")") + 2 :].split()
            out[t] = (name, (int(f[11]) + int(f[12])) / TCK)
        except OSError:
            pass
    return out


def run(queries, config, tag, n, spy):
    with local_cluster(B, 0, Path(config) if config else None) as cluster:
        pids = dict(cluster.pids)
        sysm = RouterSystem(cluster.router_target, timeout=10)
        P = {"nprobe": 32, "rerank": 1000}
        for i in range(300):
            try:
                sysm.search(queries[i], 1000, P)
            except Exception as e:
                print("warm", e)
        before = {k: threads(p) for k, p in pids.items()}
        procs = []
        if spy:
            for nme in ("router", "shard-00"):
                procs.append(
                    subprocess.Popen(
                        [
                            SPY,
                            "record",
                            "--pid",
                            str(pids[nme]),
                            "--duration",
                            "30",
                            "--rate",
                            "250",
                            "--native",
                            "--format",
                            "raw",
                            "--output",
                            f"/tmp/scale12/{tag}-{nme}.txt",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.STDOUT,
                    )
                )
        t0 = time.perf_counter()
        c0 = time.process_time()
        done = 0
        while done < n and (not spy or time.perf_counter() - t0 < 29):
            sysm.search(queries[done % 300], 1000, P)
            done += 1
        wall = time.perf_counter() - t0
        after = {k: threads(p) for k, p in pids.items()}
        for p in procs:
            p.wait()
        sysm.close()
        print(
            f"== {tag}: {done} queries in {wall:.1f}s ({done / wall:.1f}/s); client {1e3 * (time.process_time() - c0) / done:.2f} ms/q"
        )
        tot = 0
        for k in pids:
            per = {}
            for t, (name, s) in after[k].items():
                per[name] = per.get(name, 0) + s - before[k].get(t, (name, 0))[1]
            c = sum(per.values())
            tot += c
            print(
                f"  {k}: {1e3 * c / done:.2f} ms/q ",
                {
                    a: round(1e3 * b / done, 2)
                    for a, b in sorted(per.items(), key=lambda x: -x[1])
                    if b > 0
                },
            )
        print(f"  servers total {1e3 * tot / done:.2f} ms/q", flush=True)


def main():
    ds = datasets.synthetic(10_000_000, 64, queries=300)
    queries = np.array(ds.queries)
    del ds
    n = int(sys.argv[1])
    reps = int(sys.argv[2])
    for _rep in range(reps):
        for cfg in sys.argv[3:]:
            run(queries, cfg if cfg != "default" else None, cfg.rsplit("/", 1)[-1], n, False)


if __name__ == "__main__":
    main()
