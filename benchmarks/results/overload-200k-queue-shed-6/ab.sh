#!/bin/bash
# usage: ab.sh ROUND SPEC...   SPEC = arm:name:timeout
#   arm: k2 | k1.1 | k1.5 (main's build at /work/wt/shed8d-base, --throttle-k 2 / 1.1 / 1.5)
#        bk2 | bk1.1 | ... (this branch's build at /work/wt/shed8d with $EXTRA (the base arms never), e.g. --unloaded-duration)
R=overload-200k-queue-shed-6
OUT=/work/wt/shed8d/benchmarks/results  # every run's results
round=$1; shift
for spec in "$@"; do
  IFS=: read -r a b c <<< "$spec"
  case $a in
    b*) wt=shed8d; k=${a#bk}; extra=$EXTRA;;
    *) wt=shed8d-base; k=${a#k}; extra="";;
  esac
  cd /work/wt/$wt
  echo "== $a-$b start $(date -u +%T) rev $(git rev-parse --short HEAD) uptime: $(uptime)"
  .venv/bin/annfleet bench load --overload 4 --generator client --throttle-k $k --cooperative-only \
    --processes 2 --duration 10 --warmup 3 --probe-qps 50 --timeout $c $extra --name $R/$round/$a-$b --out $OUT
  echo "== $a-$b end $(date -u +%T) uptime: $(uptime)"
done
