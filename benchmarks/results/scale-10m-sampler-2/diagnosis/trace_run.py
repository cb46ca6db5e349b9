"""`annfleet` CLI with every open-loop step's per-request records saved (diagnosis only).

usage: trace_run.py TRACE_DIR annfleet-args...   (e.g. -v bench scale ...)
Wraps annfleet.benchmarks.load.run_load (the bench imports it at call time) and, after each
step, writes TRACE_DIR/stepNN-RATE.csv: scheduled send time (time.time()), latency ms,
"OK" or the status code, degraded flag. Nothing else changes.
"""

import sys
from pathlib import Path

import annfleet.benchmarks.load as load
from annfleet.cli import main

_orig = load.run_load
_n = [0]


def _traced(spec, *args, **kwargs):  # type: ignore[no-untyped-def]
    result = _orig(spec, *args, **kwargs)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    _n[0] += 1
    with open(out / f"step{_n[0]:02d}-{spec.qps:.1f}.csv", "w") as f:
        f.write("t_sched,latency_ms,code,degraded\n")
        for t, lat, code, deg in result.get("records", ()):
            f.write(f"{t:.4f},{lat * 1e3:.2f},{code},{int(deg)}\n")
    return result


if __name__ == "__main__":  # the load's spawned workers import this file as __mp_main__
    load.run_load = _traced
    sys.exit(main(sys.argv[2:]))
