#!/bin/bash
# One lock hold: bench scale at 10M, 2 shards (the scale-10m-sampler-2 "s2" run), current main.
cd /work/wt/steps13
OUT=/tmp/steps13-10m
PAT='/work/wt/steps13/.venv/.*serve-(shard|router).*10000000x64'
echo "lock acquired $(date -u +%F\ %H:%M:%S)"
echo "uptime before: $(uptime)"
echo "start $(git rev-parse --short HEAD) $(git status --porcelain -uno | wc -l) modified"
timeout 560 .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 2 \
  --build nlist=4096,pq_m=16,nbits=8 --nprobe 56,64 --rerank 2000 --step-s 15 \
  --no-progress --out $OUT --name settle-s2 > $OUT/run.log 2>&1
echo "rc $? end $(date -u +%H:%M:%S)"
for pid in $(pgrep -f "$PAT"); do echo "ending leftover $pid"; kill $pid; done
echo "uptime after: $(uptime)"
