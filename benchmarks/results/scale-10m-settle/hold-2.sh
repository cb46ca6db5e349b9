#!/bin/bash
# One lock hold: bench scale at 10M, 2 shards, a step far past the limit (500/s) then a bisect
# step well below it (275/s): main before the settle (d57fac9, idle 3 s cooldown) vs with it.
cd /work/wt/steps13
OUT=/tmp/steps13-10m
PAT='/work/wt/steps13/.venv/.*serve-(shard|router).*10000000x64'
echo "lock acquired $(date -u +%F\ %H:%M:%S)"
for v in old new; do
  if [ $v = old ]; then git checkout -q --detach d57fac9; else git checkout -q steps13; fi
  echo "uptime before $v: $(uptime)"
  echo "start $v $(git rev-parse --short HEAD) $(git status --porcelain -uno | wc -l) modified"
  timeout 280 .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 2 \
    --build nlist=4096,pq_m=16,nbits=8 --nprobe 64 --rerank 2000 --step-s 10 \
    --rates 50,500 --bisect 1 --no-progress --out $OUT --name carry-$v > $OUT/carry-$v.log 2>&1
  echo "rc $? end $v $(date -u +%H:%M:%S)"
  for pid in $(pgrep -f "$PAT"); do echo "ending leftover $pid"; kill $pid; done
  sleep 1
done
git checkout -q steps13
echo "uptime after: $(uptime)"
