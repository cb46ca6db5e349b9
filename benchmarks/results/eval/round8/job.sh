#!/bin/bash
# job.sh SPLIT val|test COLD_SEED|none: one cold_scale.py run (one torch thread, nice 10)
# -> validation|test/SPLIT-cSEED.json; the code of the cold7 worktree (main 477c098)
set -o pipefail
cd "$(dirname "$0")"
SP=$1; W=$2; S=$3
WT=/work/wt/cold7
dir=$([ "$W" = val ] && echo validation || echo test)
out=$dir/$SP-c$S.json
[ -s "$out" ] && exit 0
grep -qx "$SP $W $S" skip.txt 2>/dev/null && exit 0  # dropped once round 8 was decided
start=$(date -u +%FT%TZ); up0=$(uptime)
PYTHONPATH=$WT/build/typecheck nice -n 10 $WT/.venv/bin/python cold_scale.py $SP $W $S $out \
  > $dir/$SP-c$S.log 2>&1
rc=$?
echo "$SP $W $S rc=$rc start=$start end=$(date -u +%FT%TZ) | before: $up0 | after: $(uptime)" >> runs.log
