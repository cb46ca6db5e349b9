# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
import sys, re, collections, json

lines = open(sys.argv[1]).read().splitlines()
ours = set(json.load(open(sys.argv[2])).values())
pat = re.compile(
    r"^\s*([\d.]+)\s+\[(\d+)\]\s+(\S+)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
)
last = {}
cnt = collections.Counter()
tot = collections.Counter()
n = 0
delay_sum = 0
for l in lines:
    m = pat.match(l)
    if not m:
        continue
    t, cpu, comm, tid, pid, wait, sch, run = m.groups()
    pid = int(pid or tid)
    sch = float(sch)
    run = float(run)
    if pid in ours and sch > 1.5:
        prev = last.get(cpu)
        n += 1
        delay_sum += sch
        if prev:
            cnt[prev[0]] += 1
            tot[prev[0]] += sch
    last[cpu] = (f"{comm}[{pid}]" if pid not in ours else f"OURS:{comm}", run)
print("our threads delayed >1.5ms:", n, "total ms %.1f" % delay_sum)
for k, v in cnt.most_common(15):
    print(f"  ran before: {k:35s} {v:4d} times, {tot[k]:.1f} ms")
