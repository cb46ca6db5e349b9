#!/bin/bash
# usage: hold.sh HOLD ORDER...   (ORDER items: 4, 2, or 2n = 2 shards with router.recall_sample_rate 0)
cd /work/wt/tenm2
OUT=benchmarks/results/scale-10m-2-shards
H=$1; shift
T=300
ORDER="$@"
if [ "$H" = 3 ]; then ORDER="$ORDER 2n"; T=200; fi
echo "lock acquired $(date -u +%H:%M:%S) order $ORDER timeout $T"
i=0
for s in $ORDER; do
  i=$((i+1))
  echo "uptime: $(uptime)"
  echo "start $s shards $(date -u +%H:%M:%S)"
  if [ "$s" = 4 ]; then
    timeout $T .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 4 --nprobe 32 --rerank 1000 \
      --step-s 15 --no-progress --out $OUT --name hold$H-$i-4-shards
  elif [ "$s" = 2 ]; then
    timeout $T .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 2 --build nlist=4096,pq_m=16,nbits=8 \
      --nprobe 56,64 --rerank 2000 --step-s 15 --no-progress --out $OUT --name hold$H-$i-2-shards
  else
    timeout $T .venv/bin/annfleet -v bench scale --items 10000000 --dim 64 --shards 2 --build nlist=4096,pq_m=16,nbits=8 \
      --nprobe 56,64 --rerank 2000 --step-s 15 --no-progress --config $OUT/diagnosis/norecall.yaml \
      --out $OUT --name hold$H-$i-2-shards-no-recall-sampling
  fi
  echo "rc $? end $s shards $(date -u +%H:%M:%S)"
done
echo "uptime: $(uptime)"
