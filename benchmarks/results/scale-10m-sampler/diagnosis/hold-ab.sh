#!/bin/bash
# usage: hold-ab.sh H WHICH... (WHICH: base | branch); 2 shards, the defaults, one run each
H=$1; shift
OUT=/tmp/tenm3/out
mkdir -p $OUT
echo "lock acquired $(date -u +%F\ %H:%M:%S)"
reap() {  # this hold's own cluster processes only (our worktrees' venvs), by PID
  for pid in $(pgrep -f "/work/wt/tenm3(-base)?/.venv/.*serve-(shard|router).*10000000x64"); do
    echo "ending leftover $pid: $(tr '\0' ' ' </proc/$pid/cmdline | cut -c1-120)"; kill $pid
  done
  sleep 1
}
i=0
for w in "$@"; do
  i=$((i+1))
  if [ "$w" = base ]; then cd /work/wt/tenm3-base; else cd /work/wt/tenm3; fi
  echo "uptime: $(uptime)"
  echo "start $w $(date -u +%H:%M:%S) $(git rev-parse --short HEAD) $(git status --porcelain -uno | wc -l) modified"
  timeout 300 .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 2 --build nlist=4096,pq_m=16,nbits=8 \
      --nprobe 56,64 --rerank 2000 --step-s 15 --no-progress --out $OUT --name hold$H-$i-$w
  echo "rc $? end $w $(date -u +%H:%M:%S)"
  reap
done
echo "uptime: $(uptime)"; echo "end $(date -u +%H:%M:%S)"
