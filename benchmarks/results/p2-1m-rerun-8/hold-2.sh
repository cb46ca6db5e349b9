#!/usr/bin/env bash
# Hold 2: 1M P2 throughput, old (839cc19) vs new (main) ABBA, one lock hold.
set -u
OUT=/tmp/rerun8/h2
run() { # arm tag
  local wt=$1 tag=$2
  echo "== $tag start $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
  ( cd $wt && .venv/bin/annfleet bench recall-latency --items 1000000 --dim 64 --shards 4 --index ivfpq --nprobe 32 --rerank 200,800 --peers none --throughput --max-seconds-per-point 6 --no-progress --name $tag --out $OUT ) > $OUT/$tag.log 2>&1
  echo "== $tag end $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
}
run /work/wt/rerun8-old old-1
run /work/wt/rerun8 new-1
run /work/wt/rerun8 new-2
run /work/wt/rerun8-old old-2
