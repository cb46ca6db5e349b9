#!/usr/bin/env bash
# Hold 3: Chroma peer comparison on main, the quiet run's command, twice in one hold.
set -u
OUT=/tmp/rerun8/h3
for tag in run-1 run-2; do
  echo "== $tag start $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
  ( cd /work/wt/rerun8 && .venv/bin/annfleet bench recall-latency --items 200000 --dim 64 --shards 4,2 --systems faiss,scatter,router --peers chroma --ef 100,128,160,200,256,400,600,800 --max-seconds-per-point 5 --throughput --breakdown --name $tag --out $OUT --no-progress ) > $OUT/$tag.log 2>&1
  echo "== $tag end $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
done
