#!/bin/bash
# usage: hold-ab.sh H WHICH... (WHICH: base | branch); 2 shards, the defaults, one run each
H=$1; shift
[ -f /tmp/tenm3/hold$H.runs ] && set -- $(cat /tmp/tenm3/hold$H.runs)
echo "runs: $*"
OUT=/tmp/tenm3/out
mkdir -p $OUT
echo "lock acquired $(date -u +%F\ %H:%M:%S)"
reap() {  # this hold's own cluster processes only (our worktrees' venvs), by PID
  for pid in $(pgrep -f "/work/wt/tenm3(-base)?/.venv/.*serve-(shard|router).*10000000x64"); do
    echo "ending leftover $pid: $(tr '\0' ' ' </proc/$pid/cmdline | cut -c1-120)"; kill $pid
  done
  sleep 1
}
samples() {  # the router's live recall gauge and its sample count every 15 s (untimed, nice 19)
  while sleep 15; do
    pid=$(pgrep -f "/work/wt/tenm3(-base)?/.venv/.*serve-router.*10000000x64" | head -1)
    [ -n "$pid" ] || continue
    ap=$(tr '\0' '\n' </proc/$pid/cmdline | grep -A1 -x -- --admin-port | tail -1)
    flt=""
    for sp in $(pgrep -f "/work/wt/tenm3(-base)?/.venv/.*serve-shard.*10000000x64"); do
      flt="$flt $(awk '{print "majflt=" $12 " minflt=" $10}' /proc/$sp/stat)"
    done
    echo "faults $(date -u +%H:%M:%S)$flt workingset_refault_file=$(awk '$1=="workingset_refault_file"{print $2}' /proc/vmstat)"
    echo "samples $(date -u +%H:%M:%S) $(timeout 10 /work/wt/tenm3/.venv/bin/annfleet rollout --status --router 127.0.0.1:$ap --token-file /root/.cache/annfleet/admin.token 2>&1 | grep 'recall@')"
  done
}
i=0
for w in "$@"; do
  i=$((i+1))
  if [ "$w" = base ]; then cd /work/wt/tenm3-base; else cd /work/wt/tenm3; fi
  extra=""
  [ "$w" = nomlock ] && extra="--config /tmp/tenm3/nomlock.yaml"
  echo "uptime: $(uptime)"
  echo "start $w $(date -u +%H:%M:%S) $(git rev-parse --short HEAD) $(git status --porcelain -uno | wc -l) modified"
  nice -n 19 bash -c "$(declare -f samples); samples" &
  sp=$!
  timeout 300 .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 2 --build nlist=4096,pq_m=16,nbits=8 \
      --nprobe 56,64 --rerank 2000 --step-s 15 --no-progress --out $OUT --name hold$H-$i-$w $extra
  echo "rc $? end $w $(date -u +%H:%M:%S)"
  kill $sp
  reap
done
echo "uptime: $(uptime)"; echo "end $(date -u +%H:%M:%S)"
