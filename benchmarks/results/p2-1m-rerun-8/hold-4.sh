#!/usr/bin/env bash
# Hold 4: repeat of holds 1 and 2 in reverse order of builds (new first): BAAB for each.
set -u
OUT=/tmp/rerun8/h4
F="--items 200000 --dim 64 --shards 4 --ef 128,200,256,384 --peers hnswlib --breakdown --max-seconds-per-point 10"
P="--items 1000000 --dim 64 --shards 4 --index ivfpq --nprobe 32 --rerank 200,800 --peers none --throughput --max-seconds-per-point 6"
run() { # worktree tag args
  local wt=$1 tag=$2; shift 2
  echo "== $tag start $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
  ( cd $wt && .venv/bin/annfleet bench recall-latency "$@" --no-progress --name $tag --out $OUT ) > $OUT/$tag.log 2>&1
  echo "== $tag end $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
}
run /work/wt/rerun8 f-new-3 $F
run /work/wt/rerun8-old f-old-3 $F
run /work/wt/rerun8-old f-old-4 $F
run /work/wt/rerun8 f-new-4 $F
run /work/wt/rerun8 p-new-3 $P
run /work/wt/rerun8-old p-old-3 $P
run /work/wt/rerun8-old p-old-4 $P
run /work/wt/rerun8 p-new-4 $P
