#!/bin/bash
# P2 at 1M x 64 IVF-PQ, 4 shards: main (27edb5e) four times under the bench lock
cd /work/main
uptime > /tmp/p2/uptime-before.txt
for n in 1 2 3 4; do
  /work/main/.venv/bin/annfleet bench recall-latency --items 1000000 --dim 64 --shards 4 --index ivfpq --nprobe 32 --rerank 200,800 --peers none --throughput --max-seconds-per-point 6 --no-progress --name run-$n --out /tmp/p2 > /tmp/p2/run-$n.log 2>&1
  echo "run-$n rc=$? $(date +%T)" >> /tmp/p2/done.txt
done
uptime > /tmp/p2/uptime-after.txt
