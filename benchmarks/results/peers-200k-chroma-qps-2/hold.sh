#!/usr/bin/env bash
# One lock hold: the Chroma peer comparison (the quiet/rerun command), twice back to back.
# usage: hold.sh HOLD  (run names HOLD-1, HOLD-2)
set -u
H=$1
OUT=/tmp/peersqps2
for n in 1 2; do
  tag=$H-run-$n
  echo "== $tag start $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
  ( cd /work/wt/steps13 && .venv/bin/annfleet bench recall-latency --items 200000 --dim 64 --shards 4,2 --systems faiss,scatter,router --peers chroma --ef 100,128,160,200,256,400,600,800 --max-seconds-per-point 5 --throughput --breakdown --name $tag --out $OUT --no-progress ) > $OUT/$tag.log 2>&1
  rc=$?
  echo "== $tag end $(date -u +%FT%TZ) $(uptime) rc=$rc" >> $OUT/uptime.txt
done
