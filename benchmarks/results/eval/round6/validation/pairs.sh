#!/bin/bash
# pairs.sh: the pairs of this round (score.py over two saved members: what members=2 trains)
# -> appended to scores.jsonl. The single members: scorenew.sh.
cd "$(dirname "$0")"
export PYTHONPATH=/work/wt/tune6/build/typecheck
PY="nice -n 10 /work/wt/tune6/.venv/bin/python score.py"
for cfg in default context_shift=4_lr=0.01_weight_decay=1e-05; do
  for s in 0 1; do
    $PY per_user warm $s per_user-warm-s$s-m0-$cfg per_user-warm-s$s-m1-$cfg >> scores.jsonl
  done
done
