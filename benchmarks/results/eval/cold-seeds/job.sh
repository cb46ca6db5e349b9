#!/bin/bash
# job.sh VARIANT SPLIT SEED: one cold-start run (one process, one torch thread) -> VARIANT/SPLIT-sSEED.json
set -o pipefail
cd "$(dirname "$0")"
V=$1; SP=$2; S=$3
WT=/work/wt/cold10c
CACHE=/tmp/cold10c-evalcache
out=$V/$SP-s$S.json
[ -s "$out" ] && exit 0
start=$(date -u +%FT%TZ); up0=$(uptime)
if [ "$V" = default ]; then
  nice -n 19 $WT/.venv/bin/annfleet eval --json --no-progress --threads 1 --cache-dir $CACHE \
    --split $SP --seeds $S --cold-seeds $S --models cold_start > $out.tmp 2> $V/$SP-s$S.log
else
  nice -n 19 $WT/.venv/bin/python coldloss.py $SP $S $CACHE > $out.tmp 2> $V/$SP-s$S.log
fi
rc=$?
end=$(date -u +%FT%TZ)
[ $rc = 0 ] && mv $out.tmp $out
echo "$V $SP $S rc=$rc start=$start end=$end | before: $up0 | after: $(uptime)" >> runs.log
