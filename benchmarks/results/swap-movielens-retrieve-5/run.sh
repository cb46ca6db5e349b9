#!/bin/bash
# The interleaved old/new MovieLens swap runs of swap-movielens-retrieve-5 (one lock hold).
set -u
B=/work/wt/swap9/.bench
NAME=swap-movielens-retrieve-5
common="--bundle-a $B/ml-v0 --bundle-b $B/ml-v1 --load retrieve --admission fixed --qps 100 --k 100 --before-s 10 --after-s 10"
run() {  # variant run
  local v=$1 r=$2
  echo "=== $v-$r $(date -u +%H:%M:%S) $(uptime)"
  case $v in
    old) (cd /tmp/swap9-old && .venv/bin/python -m annfleet.benchmarks.swap $common --name $NAME/$v-$r) ;;
    new) (cd /work/wt/swap9 && .venv/bin/python -m annfleet.benchmarks.swap $common --name $NAME/$v-$r) ;;
    warmonly) (cd /work/wt/swap9 && .venv/bin/python -m annfleet.benchmarks.swap $common --tower-threads 0 --name $NAME/$v-$r) ;;
    threadonly) (cd /work/wt/swap9 && .venv/bin/python -m annfleet.benchmarks.swap $common --warm-users 0 --name $NAME/$v-$r) ;;
  esac 2>&1 | grep -E "^\| (before|during_swap|after_swap|first second)|embedding cache|progress"
}
run old a; run new a; run warmonly a; run threadonly a
run new b; run old b; run threadonly b; run warmonly b
run warmonly c; run threadonly c; run old c; run new c
echo "=== end $(date -u +%H:%M:%S) $(uptime)"
