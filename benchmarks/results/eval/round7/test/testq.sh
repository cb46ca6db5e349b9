#!/bin/bash
# testq.sh: the round's test runs (test.py), each started when fewer than two trainings of
# this round (validation member.py or test.py) run; output test/<split>-s<seed>[-cold].json.
# Round 7: the longest run (global: the warm ensemble and the cold-start one) first.
cd "$(dirname "$0")"
export PYTHONPATH=/work/wt/tune7/build/typecheck
PY=/work/wt/tune7/.venv/bin/python
OV='{"members":3,"weight_decay":0.0001}'
running() { pgrep -f 'round7/(validation/member|test/test)\.py' | wc -l; }
start() {  # out-name args...
  while [ "$(running)" -ge 2 ]; do sleep 5; done
  echo "$1 start $(date -u +%T): $(uptime)" >> uptime.txt
  (nice -n 10 $PY "$PWD/test.py" "$OV" "${@:2}" > "$1.json" 2> "$1.err"; echo "$1 end   $(date -u +%T): $(uptime)" >> uptime.txt) &
  sleep 5
}
start global-s0 global 0 two_tower two_tower_ann cold_start
start per_user-s0 per_user 0 two_tower two_tower_ann
start per_user-s1 per_user 1 two_tower two_tower_ann
start per_user-s2 per_user 2 two_tower two_tower_ann
start per_user-s0-cold per_user 0 cold_start
wait
