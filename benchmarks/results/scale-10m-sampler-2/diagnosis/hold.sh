#!/bin/bash
# usage: hold.sh H RUN... (RUN: s4 | s2 | s2duty1); current main in /work/wt/tenm4, the defaults
# (s2duty1: diagnosis/duty1.yaml). Each run capped at 300 s and the hold at ~590 s (a run with < 200 s left is skipped); per-request traces, a 0.1 s probe
# of the box's CPU and the cluster threads' CPU (nice 19), the router's recall gauge every 15 s
# (`annfleet rollout --status`; SAMPLES=0: not polled, holds 3 on: each poll was a CPU burst).
H=$1; shift
D=/work/wt/tenm4/benchmarks/results/scale-10m-sampler-2/diagnosis
OUT=/tmp/tenm4/out
mkdir -p $OUT
cd /work/wt/tenm4
PAT='/work/wt/tenm4/.venv/.*serve-(shard|router).*10000000x64'
echo "lock acquired $(date -u +%F\ %H:%M:%S)"
reap() {  # this hold's own cluster processes only, by PID
  for pid in $(pgrep -f "$PAT"); do
    echo "ending leftover $pid: $(tr '\0' ' ' </proc/$pid/cmdline | cut -c1-120)"; kill $pid
  done
  sleep 1
}
samples() {
  while sleep 15; do
    # (rout[e]r: not to match this shell's own command line, which holds the pattern)
    pid=$(pgrep -f "/work/wt/tenm4/.venv/.*serve-rout[e]r.*10000000x64" | head -1)
    [ -n "$pid" ] || continue
    ap=$(tr '\0' '\n' </proc/$pid/cmdline | grep -A1 -x -- --admin-port | tail -1)
    echo "samples $(date -u +%H:%M:%S) $(timeout 10 /work/wt/tenm4/.venv/bin/annfleet rollout --status --router 127.0.0.1:$ap --token-file /root/.cache/annfleet/admin.token 2>&1 | grep 'recall@')"
  done
}
reap
T0=$(date +%s)
i=0
for w in "$@"; do
  i=$((i+1))
  left=$((590 - ($(date +%s) - T0)))
  if [ $left -lt 200 ]; then echo "skipping $w: ${left}s left of the hold"; continue; fi
  cap=$(( left < 300 ? left : 300 ))
  name=hold$H-$i-$w
  case $w in
    s4) args="--shards 4 --nprobe 32 --rerank 1000 --step-s 15" ;;
    s2) args="--shards 2 --build nlist=4096,pq_m=16,nbits=8 --nprobe 56,64 --rerank 2000 --step-s 15" ;;
    s2duty1) args="--shards 2 --build nlist=4096,pq_m=16,nbits=8 --nprobe 56,64 --rerank 2000 --step-s 15 --config $D/duty1.yaml" ;;
  esac
  echo "uptime: $(uptime)"
  echo "start $name $(date -u +%H:%M:%S) $(git rev-parse --short HEAD) $(git status --porcelain -uno | wc -l) modified"
  nice -n 19 .venv/bin/python $D/probe.py $OUT/$name.probe 0.1 "$PAT" &
  pp=$!
  sp=""
  if [ "${SAMPLES:-1}" != 0 ]; then
    nice -n 19 bash -c "$(declare -f samples); samples" &
    sp=$!
  fi
  timeout $cap .venv/bin/python $D/trace_run.py $OUT/$name.trace -v bench scale --items 10000000 --dim 64 \
      $args --no-progress --out $OUT --name $name
  echo "rc $? end $name $(date -u +%H:%M:%S)"
  kill $sp $pp
  reap
done
echo "uptime: $(uptime)"; echo "end $(date -u +%H:%M:%S)"
