#!/bin/bash
# Usage: run.sh LABEL PYTHONPATH  (PYTHONPATH: the build's package tree, "" = the installed one)
# `annfleet up` on the cached MovieLens bundle in a data dir of its own; Retrieve timed with
# no blocked item, then with 100,000 blocked ids (`annfleet items block`). Bench lock held.
set -u
SELF=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/bsc}; REPO=${REPO:-$PWD}; mkdir -p "$OUT"
LABEL=$1; export PYTHONPATH=$2
D=$OUT/data-$LABEL; rm -rf $D; mkdir -p $D/bundles
ln -s /tmp/up7/bundles/movielens-a07bbdeb3593 $D/bundles/movielens-a07bbdeb3593
cd "$REPO"
ANNFLEET_DATA=$D setsid .venv/bin/annfleet up > $OUT/up-$LABEL.log 2>&1 &
for i in $(seq 60); do grep -q "Ctrl-C stops" $OUT/up-$LABEL.log && break; sleep 1; done
RP=$(python3 -c "import json;print([c['pid'] for c in json.load(open('$D/cluster.json'))['children'] if c['name']=='router'][0])")
.venv/bin/python "$SELF/measure.py" 127.0.0.1:50051 0 $RP
.venv/bin/python -c "import numpy as np; np.save('$OUT/big.npy', np.arange(10**7, 10**7 + 100000, dtype=np.int64))"
ANNFLEET_DATA=$D .venv/bin/annfleet items block --ids $OUT/big.npy 2>&1 | tail -1
.venv/bin/python "$SELF/measure.py" 127.0.0.1:50051 100000 $RP
pkill -INT -f "annfleet up"; sleep 4
