set -x
OUT=/work/wt/scale12/benchmarks/results/scale-10m-open-loop-2
ARGS="-v bench scale --items 10000000 --dim 64 --shards 4 --nprobe 32 --rerank 1000 --step-s 15 --no-progress --out $OUT"
cd /work/wt/scale12 && .venv/bin/annfleet $ARGS --name run-5-exact-nice0 --config benchmarks/results/scale-10m-open-loop-2/exact-nice0.yaml
cd /work/wt/scale12 && .venv/bin/annfleet $ARGS --name run-6-exact-nice10
