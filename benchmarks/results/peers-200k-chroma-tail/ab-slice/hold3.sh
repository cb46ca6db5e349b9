#!/usr/bin/env bash
# Hold 3: A/B main (tail12-base) vs tail12 (short scheduler slice), ABBA order, one
# instrumented branch run (perf sched) at the end.
set -u
OUT=/tmp/tail12/ab
mkdir -p $OUT
C="--items 200000 --dim 64 --shards 2 --systems router --peers chroma --ef 200,256,400,600,800 --max-seconds-per-point 5 --no-progress"
run() { # tag worktree
  local tag=$1 wt=$2
  echo "== $tag start $(date -u +%FT%TZ) $(uptime) $(git -C $wt rev-parse --short HEAD)" >> $OUT/uptime.txt
  ( cd $wt && .venv/bin/annfleet bench recall-latency $C --name $tag --out $OUT ) > $OUT/$tag.log 2>&1
  echo "== $tag end $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
}
B=/work/wt/tail12-base; A=/work/wt/tail12
run base-1 $B; run slice-1 $A; run slice-2 $A; run base-2 $B
run base-3 $B; run slice-3 $A; run slice-4 $A; run base-4 $B
cd $A && TAIL12_PERF=1 TAIL12_STAMPS=1 PYTHONPATH=/tmp/tail12/inst .venv/bin/python /tmp/tail12/drive.py $OUT/perf-slice 200 1000 router > $OUT/perf-slice.log 2>&1
echo "== done $(date -u +%FT%TZ) $(uptime)" >> $OUT/uptime.txt
