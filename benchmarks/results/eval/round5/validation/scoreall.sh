#!/bin/bash
# scoreall.sh: every score of this round (score.py over the saved members) -> scores.jsonl
cd "$(dirname "$0")"
PY="nice -n 19 /work/wt/model10b/.venv/bin/python score.py"
: > scores.jsonl
for cfg in default cold_loss=0.05 temperature=0.15 cold_loss=0.05_temperature=0.15; do
  A=per_user-warm-s0-m0-$cfg; B=per_user-warm-s0-m1-$cfg; C=per_user-warm-s0-m2-$cfg
  $PY per_user warm 0 $A >> scores.jsonl; $PY per_user warm 0 $B >> scores.jsonl
  for a in 1.0 1.1 1.2; do $PY --cold-scale $a per_user warm 0 $A $B >> scores.jsonl; done
  [ -f vecs/$C.npz ] || continue  # a third member (members=3)
  $PY per_user warm 0 $C >> scores.jsonl; $PY per_user warm 0 $A $B $C >> scores.jsonl
done
for cfg in default cold_loss=0.05 cold_loss=0.05_temperature=0.15; do
  for s in 0 1; do
    A=global-cold-s$s-m0-$cfg; B=global-cold-s$s-m1-$cfg
    [ -f vecs/$B.npz ] || continue
    $PY global cold $s $A >> scores.jsonl; $PY global cold $s $B >> scores.jsonl
    for a in 1.0 1.1 1.2; do $PY --cold-scale $a global cold $s $A $B >> scores.jsonl; done
    C=global-cold-s$s-m2-$cfg
    [ -f vecs/$C.npz ] || continue
    $PY global cold $s $C >> scores.jsonl; $PY global cold $s $A $B $C >> scores.jsonl
  done
done
