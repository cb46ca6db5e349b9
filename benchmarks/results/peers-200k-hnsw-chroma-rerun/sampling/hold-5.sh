#!/usr/bin/env bash
# Hold 5: is live recall sampling (1% of requests, ANN + exact on every shard) the router's
# one-at-a-time p99 vs Chroma? 2 shards, router with the default config (A, with Chroma in
# the same run) vs router.recall_sample_rate 0 (B), B A B A B A.
set -u
OUT=/tmp/rerun8/h5
C="--items 200000 --dim 64 --shards 2 --systems router --ef 200,256,400,600,800 --max-seconds-per-point 5"
run() { # tag args
  local tag=$1; shift
  echo "== $tag start $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
  ( cd /work/wt/rerun8 && .venv/bin/annfleet bench recall-latency $C "$@" --no-progress --name $tag --out $OUT ) > $OUT/$tag.log 2>&1
  echo "== $tag end $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
}
for i in 1 2 3; do
  run norecall-$i --peers none --config $OUT/norecall.yaml
  run default-$i --peers chroma
done
