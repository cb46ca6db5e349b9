set -x
date -u
uptime
for step in $STEPS; do
  build=${step%%:*}; n=${step##*:}
  if [ $build = main ]; then wt=/work/wt/hang10c-base; else wt=/work/wt/hang10c-b; fi
  cd $wt
  git log --oneline -1 | cut -c1-60
  git status --short | head -3
  $wt/.venv/bin/annfleet bench sources --rounds 1 --duration 15 --qps 30 --name $build-$n --out /tmp/hang10c/ab
  date -u
  uptime
done
