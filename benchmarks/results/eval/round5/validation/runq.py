"""runq.py JOBFILE: each line '<json overrides> SPLIT MODE SEED J' -> nice -n 19 member.py,
started whenever fewer than two member.py processes run (also counting ones started before)."""

import subprocess
import sys
import time
from pathlib import Path

here = Path(__file__).parent
py = "/work/wt/model10b/.venv/bin/python"


def running() -> int:
    out = subprocess.run(["pgrep", "-f", "validation/member.py"], capture_output=True, text=True)
    return len(out.stdout.split())


for line in (x.strip() for x in Path(sys.argv[1]).read_text().splitlines()):
    if not line:
        continue
    while running() >= 2:
        time.sleep(5)
    cfg, split, mode, seed, j = line.rsplit(maxsplit=4)
    with open(here / "log.txt", "a") as log:  # the child keeps its own copy of the fd
        subprocess.Popen(
            ["nice", "-n", "19", py, str(here / "member.py"), cfg, split, mode, seed, j],
            stdout=log,
            stderr=log,
        )
    time.sleep(3)
