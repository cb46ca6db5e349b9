set -x
date -u
uptime
for step in branch:all main:all branch:hang-content main:hang-content; do
  build=${step%%:*}; variant=${step#*:}
  if [ $build = main ]; then wt=/work/wt/hang10c-base; else wt=/work/wt/hang10c-b; fi
  cd $wt
  git log --oneline -1 | cut -c1-60
  $wt/.venv/bin/python /tmp/hang10c/diag/hang_timings.py --variant $variant --duration 30 --qps 30 --dump /tmp/hang10c/diag/$build-$variant.json
  date -u
  uptime
done
