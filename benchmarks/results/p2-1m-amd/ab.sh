#!/bin/bash
# P2 at 1M: builds alternated under the bench lock: fe13 = fe1327a (rerun-8's "new"), s25 = 4b44757, main = 27edb5e
uptime > /tmp/p2/ab-uptime-before.txt
for step in fe13:1 s25:1 main:1 main:2 s25:2 fe13:2; do
  b=${step%:*}; n=${step#*:}
  if [ $b = main ]; then cd /work/main; PP=""; else cd /work/wt/$b; PP=/work/wt/$b/build/typecheck; fi
  PYTHONPATH=$PP /work/main/.venv/bin/annfleet bench recall-latency --items 1000000 --dim 64 --shards 4 --index ivfpq --nprobe 32 --rerank 200,800 --peers none --throughput --max-seconds-per-point 6 --no-progress --name ab-$b-$n --out /tmp/p2 > /tmp/p2/ab-$b-$n.log 2>&1
  echo "ab-$b-$n rc=$? $(date +%T)" >> /tmp/p2/ab-done.txt
done
uptime > /tmp/p2/ab-uptime-after.txt
