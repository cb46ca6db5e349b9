#!/bin/bash
cd /work/wt/lead
OUT=/tmp/lead10m/out
NR=benchmarks/results/scale-10m-2-shards/diagnosis/norecall.yaml
echo "lock acquired $(date -u +%H:%M:%S)"
for s in 2n 4n; do
  echo "uptime: $(uptime)"
  echo "start $s $(date -u +%H:%M:%S)"
  if [ "$s" = 4n ]; then
    timeout 330 .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 4 --nprobe 32 --rerank 1000 \
      --step-s 15 --no-progress --config $NR --out $OUT --name lead-$s
  else
    timeout 330 .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 2 --build nlist=4096,pq_m=16,nbits=8 \
      --nprobe 56,64 --rerank 2000 --step-s 15 --no-progress --config $NR --out $OUT --name lead-$s
  fi
  echo "rc $? end $s $(date -u +%H:%M:%S)"
  pkill -f "serve-shard.*10000000x64" ; pkill -f "serve-router.*10000000x64"; sleep 1
done
echo "uptime: $(uptime)"
