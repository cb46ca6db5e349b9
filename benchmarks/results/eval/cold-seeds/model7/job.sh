#!/bin/bash
# job.sh SPLIT SEED: one cold-start run of the defaults (MODEL_VERSION 7; one process, one
# torch thread, nice 19) -> default/SPLIT-sSEED.json; the code of the cold7 worktree
set -o pipefail
cd "$(dirname "$0")"
SP=$1; S=$2
WT=/work/wt/cold7
CACHE=/tmp/cold7-evalcache
out=default/$SP-s$S.json
[ -s "$out" ] && exit 0
start=$(date -u +%FT%TZ); up0=$(uptime)
PYTHONPATH=$WT/build/typecheck nice -n 19 $WT/.venv/bin/python -m annfleet.cli eval --json \
  --no-progress --threads 1 --cache-dir $CACHE --split $SP --seeds $S --cold-seeds $S \
  --models cold_start > $out.tmp 2> default/$SP-s$S.log
rc=$?
end=$(date -u +%FT%TZ)
[ $rc = 0 ] && mv $out.tmp $out
echo "default $SP $S rc=$rc start=$start end=$end | before: $up0 | after: $(uptime)" >> runs.log
