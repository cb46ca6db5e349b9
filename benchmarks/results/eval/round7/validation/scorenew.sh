#!/bin/bash
# scorenew.sh: score every saved member (VECS, default /tmp/tune7-vecs) not yet scored alone
# -> scores.jsonl (one JSON line each, score.py)
cd "$(dirname "$0")"
VECS=${VECS:-/tmp/tune7-vecs}
PY="nice -n 10 /work/wt/tune7/.venv/bin/python score.py"
export PYTHONPATH=/work/wt/tune7/build/typecheck
for f in "$VECS"/*.npz; do
  n=$(basename "$f" .npz)
  grep -q "\"members\": \[\"$n\"\]" scores.jsonl 2>/dev/null && continue
  IFS=- read -r split mode s _ <<< "$n"
  $PY "$split" "$mode" "${s#s}" "$n" >> scores.jsonl
done
