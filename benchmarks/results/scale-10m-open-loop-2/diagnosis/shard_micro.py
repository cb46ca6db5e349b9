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
rng = np.random.default_rng(0)
q = sh.vectors[rng.choice(len(sh.ids), 300)].astype(np.float32) + rng.normal(
    0, 0.05, (300, 64)
).astype(np.float32)
P = dict(nprobe=32, rerank=1000)


def cpu(f, n):
    c0, t0 = time.thread_time(), time.perf_counter()
    f()
    return (time.thread_time() - c0) / n * 1e3, (time.perf_counter() - t0) / n * 1e3


for _rep in range(2):
    print(
        "one-at-a-time", cpu(lambda: [sh.search(q[i : i + 1], 500, **P) for i in range(300)], 300)
    )
    print("batched 300   ", cpu(lambda: sh.search(q, 500, **P), 300))
    # split faiss vs rerank
    import faiss

    params = faiss.SearchParametersIVF(nprobe=32)
    print(
        "faiss only 1  ",
        cpu(lambda: [sh.index.search(q[i : i + 1], 1000, params=params) for i in range(300)], 300),
    )
    print("faiss only 300", cpu(lambda: sh.index.search(q, 1000, params=params), 300))
    _, pos = sh.index.search(q, 1000, params=params)
    print(
        "rerank 1      ",
        cpu(lambda: [sh._rerank(q[i : i + 1], pos[i : i + 1], 500) for i in range(300)], 300),
    )
    print("rerank 300    ", cpu(lambda: sh._rerank(q, pos, 500), 300))
    print(
        "coarse 1      ",
        cpu(lambda: [sh.index.quantizer.search(q[i : i + 1], 32) for i in range(300)], 300),
    )
    print("coarse 300    ", cpu(lambda: sh.index.quantizer.search(q, 32), 300))
