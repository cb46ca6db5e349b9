#!/bin/bash
# ab.sh OUT [STEP ...]: annfleet bench sources, old (4b44757, /work/wt/s25) and new (f03e97f,
# /work/wt/s26) alternated, one round each, the MovieLens MODEL_VERSION 7 bundle
set -x
OUT=$1
B=/tmp/up7/bundles/movielens-a07bbdeb3593
date -u; uptime
shift
steps=("$@")
[ ${#steps[@]} = 0 ] && steps=(old:1 new:1 new:2 old:2 old:3 new:3)
for step in "${steps[@]}"; do
  build=${step%:*}; n=${step#*:}
  if [ "$build" = old ]; then wt=/work/wt/s25; else wt=/work/wt/s26; fi
  cd $wt && git log --oneline -1 | cut -c1-60
  PYTHONPATH=$wt/build/typecheck /work/main/.venv/bin/python -m annfleet.cli bench sources \
    --bundle $B --rounds 1 --duration 15 --qps 30 --name $build-$n --out $OUT
  date -u; uptime
done
