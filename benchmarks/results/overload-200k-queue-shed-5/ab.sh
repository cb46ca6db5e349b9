#!/bin/bash
# usage: ab.sh ROUND SPEC...   SPEC = rev:deadline_name:timeout (rev: base|branch|client|combo) or closed:rev
R=overload-200k-queue-shed-5
OUT=/work/wt/wave8/benchmarks/results  # every run's results; base runs ran from /work/wt/wave8-base, branch runs from /work/wt/wave8, client and combo runs from /work/wt/wave8c (client: 5331575 on main; combo: the same commit on top of branch wave8)
round=$1; shift
worktree() { case $1 in base) echo wave8-base;; branch) echo wave8;; client|combo) echo wave8c;; esac; }
for spec in "$@"; do
  IFS=: read -r a b c <<< "$spec"
  if [ "$a" = closed ]; then
    wt=$(worktree "$b")
    cd /work/wt/$wt
    echo "== closed-$b start $(date -u +%T) rev $(git rev-parse --short HEAD) uptime: $(uptime)"
    .venv/bin/annfleet bench load --mode closed --concurrency 32 --processes 2 --duration 10 --warmup 3 \
      --name $R/$round/closed-loop-32-$b --out $OUT
    echo "== closed-$b end $(date -u +%T) uptime: $(uptime)"
    continue
  fi
  wt=$(worktree "$a")
  cd /work/wt/$wt
  echo "== $a-$b start $(date -u +%T) rev $(git rev-parse --short HEAD) uptime: $(uptime)"
  .venv/bin/annfleet bench load --overload 4 --generator client --throttle-k 2 --cooperative-only \
    --processes 2 --duration 10 --warmup 3 --probe-qps 50 --timeout $c --name $R/$round/$a-$b --out $OUT
  echo "== $a-$b end $(date -u +%T) uptime: $(uptime)"
done
