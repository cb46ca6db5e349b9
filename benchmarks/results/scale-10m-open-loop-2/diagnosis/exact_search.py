# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
import os
import time
from pathlib import Path

import numpy as np

from annfleet.bundle import Bundle
from annfleet.server.index import IndexSpec, ShardIndex, set_threads

B = Path(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s4-60c88f63bb49"
    )
)
b = Bundle.open(B, verify=False)
idx = b.shard(0)["index"]
sh = ShardIndex.load(b.shard_dir(0), b.metric, IndexSpec(idx["type"], idx["params"]))
set_threads(1)
q = np.ascontiguousarray(sh.vectors[:4] + 0.01, dtype=np.float32)
print("metric", b.metric)
for i in range(4):
    c0, t0 = time.thread_time(), time.perf_counter()
    sh.exact(q[i : i + 1], 100)
    print(
        "exact k=100 cpu ms",
        (time.thread_time() - c0) * 1e3,
        "wall",
        (time.perf_counter() - t0) * 1e3,
        flush=True,
    )
