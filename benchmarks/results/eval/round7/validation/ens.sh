#!/bin/bash
# ens.sh SEED TAG_m0 [TAG ...] or ens.sh SEED m0:TAG m1:TAG ...: score the ensemble of saved
# members (score.py per_user warm) -> appended to scores.jsonl and printed.
# "TAG" alone = member j of that config for j = 0, 1, ... in order; "mJ:TAG" = member J of TAG.
cd "$(dirname "$0")"
export PYTHONPATH=/work/wt/tune7/build/typecheck
s=$1; shift
names=(); j=0
for a in "$@"; do
  if [[ $a == m[0-9]:* ]]; then names+=("per_user-warm-s$s-${a%%:*}-${a#*:}")
  else names+=("per_user-warm-s$s-m$j-$a"); j=$((j+1)); fi
done
nice -n 10 /work/wt/tune7/.venv/bin/python score.py per_user warm "$s" "${names[@]}" | tee -a scores.jsonl
