#!/bin/bash
set -u
B=/work/wt/swap9/.bench
NAME=swap-movielens-retrieve-5
common="--bundle-a $B/ml-v0 --bundle-b $B/ml-v1 --load retrieve --admission fixed --qps 100 --k 100 --before-s 10 --after-s 10"
run() {
  local v=$1 r=$2
  echo "=== $v-$r $(date -u +%H:%M:%S) $(uptime)"
  case $v in
    old) (cd /tmp/swap9-old && .venv/bin/python -m annfleet.benchmarks.swap $common --name $NAME/$v-$r) ;;
    new) (cd /work/wt/swap9 && .venv/bin/python -m annfleet.benchmarks.swap $common --name $NAME/$v-$r) ;;
  esac 2>&1 | grep -E "^\| (before|during_swap|after_swap|first second)|embedding cache|progress"
}
run new d; run old d; run old e; run new e
echo "=== end $(date -u +%H:%M:%S) $(uptime)"
