#!/bin/bash
# copy a hold's runs from /tmp/tenm4/out into this directory: the run's own files, its
# per-request traces and probe (gzipped), the hold log; then the stall analysis of each run
set -e
R=/work/wt/tenm4/benchmarks/results/scale-10m-sampler-2
H=$1
cp /tmp/tenm4/hold$H.log $R/diagnosis/hold$H.log
for d in /tmp/tenm4/out/hold$H-*; do
  n=$(basename $d); n=${n%.probe}; n=${n%.trace}
  [ -d /tmp/tenm4/out/$n ] || [ -d /tmp/tenm4/out/$n.trace ] || continue
  mkdir -p $R/$n
  [ -d /tmp/tenm4/out/$n ] && cp /tmp/tenm4/out/$n/* $R/$n/
  if [ -d /tmp/tenm4/out/$n.trace ] && ls /tmp/tenm4/out/$n.trace/*.csv >/dev/null 2>&1; then
    mkdir -p $R/$n/trace; for f in /tmp/tenm4/out/$n.trace/*.csv; do gzip -c $f > $R/$n/trace/$(basename $f).gz; done
  fi
  gzip -c /tmp/tenm4/out/$n.probe > $R/$n/probe.txt.gz
done
