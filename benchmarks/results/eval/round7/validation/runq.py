"""runq.py JOBFILE: each line '<json overrides> SPLIT MODE SEED J' -> nice -n 10 member.py,
started whenever fewer than two member.py processes run (also counting ones started before).
The file is read again before each job, so lines can be appended while it runs; it stops
after a line 'end'."""

import os
import subprocess
import sys
import time
from pathlib import Path

here = Path(__file__).parent
py = "/work/wt/tune7/.venv/bin/python"
env = {**os.environ, "PYTHONPATH": "/work/wt/tune7/build/typecheck"}


def running() -> int:
    out = subprocess.run(
        ["pgrep", "-f", r"round7/(validation/member|test/test)\.py"], capture_output=True, text=True
    )
    return len(out.stdout.split())


done = 0
while True:
    lines = [x.strip() for x in Path(sys.argv[1]).read_text().splitlines() if x.strip()]
    if done >= len(lines):
        time.sleep(5)
        continue
    line = lines[done]
    done += 1
    if line == "end":
        break
    while running() >= 2:
        time.sleep(5)
    cfg, split, mode, seed, j = line.rsplit(maxsplit=4)
    with open(here / "log.txt", "a") as log:  # the child keeps its own copy of the fd
        subprocess.Popen(
            ["nice", "-n", "10", py, str(here / "member.py"), cfg, split, mode, seed, j],
            stdout=log,
            stderr=log,
            env=env,
        )
    time.sleep(3)
