#!/bin/bash
# Alternate generator nice 0 / 10 on the headline overload bench (cooperative client only).
# Run under the bench lock from the checkout of the build: OUT=/tmp/gn bash hold.sh
set -u
OUT=${OUT:-/tmp/gn}
mkdir -p "$OUT"
for i in 1 2 3; do
  for n in 0 10; do
    for t in 1.0 0.1; do
      uptime >> "$OUT/uptime.txt"
      annfleet bench load --overload 4 --generator client --throttle-k 2 --report-timeout on \
        --processes 2 --duration 10 --warmup 3 --probe-qps 50 --cooperative-only --timeout $t \
        --generator-nice $n --name run-$i-nice$n-t$t --out "$OUT" > "$OUT/run-$i-nice$n-t$t.log" 2>&1
      echo "run-$i nice $n timeout $t rc=$?" >> "$OUT/done.txt"
    done
  done
done
uptime >> "$OUT/uptime.txt"
