#!/bin/bash
# quiet box: old = main 67b8efc (fixed oversample 2), new = topk 8f55dc7; alternated, 3 rounds
set -u
OUT=/tmp/topk-m/res2
mkdir -p $OUT
uptime > $OUT/uptime-before.txt
for r in 1 2 3; do
for k in 10 100 1000; do
  for b in old new; do
    if [ $b = old ]; then cd /work/main; PP=""; else cd /work/wt/topk; PP=/work/wt/topk/build/typecheck; fi
    [ $r = 2 ] && { [ $b = old ] && b2=new || b2=old; } || b2=$b
    if [ $b2 = old ]; then cd /work/main; PP=""; else cd /work/wt/topk; PP=/work/wt/topk/build/typecheck; fi
    PYTHONPATH=$PP /work/main/.venv/bin/annfleet bench recall-latency --items 200000 --dim 64 --index hnsw --ef 200 --shards 4 -k $k --systems router --peers none --no-progress --name $b2-k$k-r$r --out $OUT > $OUT/$b2-k$k-r$r.log 2>&1
    echo "$b2 k=$k r=$r rc=$? $(date +%T)" >> $OUT/done.txt
  done
done
done
uptime > $OUT/uptime-after.txt
