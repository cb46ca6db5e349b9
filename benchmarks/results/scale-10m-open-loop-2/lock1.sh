set -x
OUT=/work/wt/scale12/benchmarks/results/scale-10m-open-loop-2
ARGS="-v bench scale --items 10000000 --dim 64 --shards 4 --nprobe 32 --rerank 1000 --step-s 15 --no-progress --out $OUT"
cd /work/wt/scale12 && .venv/bin/annfleet $ARGS --name run-2-exact-thread
cd /work/wt/scale12base && .venv/bin/annfleet $ARGS --name run-3-base
cd /work/wt/scale12 && .venv/bin/annfleet $ARGS --name run-4-norecall --config benchmarks/results/scale-10m-open-loop-2/norecall.yaml
