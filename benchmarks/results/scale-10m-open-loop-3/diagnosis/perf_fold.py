# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Fold `perf script` output (dwarf call graphs): share of samples per frame, inclusive,
and per thread. usage: perf_fold.py SCRIPT.txt [TOP]"""

import collections, sys


def load(path):
    samples = []
    cur = None
    for line in open(path):
        if not line.strip():
            if cur is not None:
                samples.append(cur)
                cur = None
            continue
        if not line.startswith((" ", "\t")):
            cur = {"head": line.strip(), "frames": []}
        elif cur is not None:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                sym, _, dso = parts[1].rpartition(" (")
                cur["frames"].append((sym.split("+0x")[0], dso[:-1].rsplit("/", 1)[-1]))
    if cur is not None:
        samples.append(cur)
    return samples


s = load(sys.argv[1])
n = len(s)
print("samples", n)
th = collections.Counter(x["head"].split()[1] for x in s)
print("threads", th.most_common(10))
inc = collections.Counter()
for x in s:
    seen = set()
    for f, d in x["frames"]:
        k = f if f != "[unknown]" else d
        if k not in seen:
            seen.add(k)
            inc[k] += 1
for k, v in inc.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 80):
    print(f"{100 * v / n:5.1f}% {k}")
print("== per thread, top markers")
marks = [
    "faiss::IndexIVF::search",
    "array_subscript",
    "cygrpc.cpython-311-x86_64-linux-gnu.so",
    "finish_task_switch.isra.0",
    "_message.abi3.so",
    "do_epoll_wait",
    "__futex_wait",
    "tcp_sendmsg",
    "PyArray_ArgSort",
    "_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
]
for t, _ in th.most_common(8):
    c = collections.Counter()
    tot = 0
    for x in s:
        if x["head"].split()[1] != t:
            continue
        tot += 1
        names = set((f if f != "[unknown]" else d) for f, d in x["frames"])
        for m in marks:
            if m in names:
                c[m] += 1
    print(
        t,
        x["head"].split()[0] if False else "",
        tot,
        {m.split(".")[0][:28]: v for m, v in c.most_common()},
    )
