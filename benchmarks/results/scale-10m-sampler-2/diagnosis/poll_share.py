"""Over the runs with the recall-gauge poller on: of the requests over 50 ms (or failed) in
each step that held or broke near the limit, how many were sent within 2.5 s after a poll
started, against the share of all requests sent then (reads the stalls.txt of each run).

usage: poll_share.py RUN_DIR...
"""

import re
import sys
from pathlib import Path

for d in map(Path, sys.argv[1:]):
    lines = (d / "stalls.txt").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(step\d+-[\d.]+)\.csv\S* \(.*?\): (\d+) requests, (\d+) slow", line)
        if not m or int(m.group(3)) == 0:
            continue
        n = next((x for x in lines[i + 1 : i + 3] if "gauge poll" in x), "")
        p = re.search(r"requests ([\d.]+), slow ones ([\d.na]+)", n)
        share = f"{p.group(1)} of all, {p.group(2)} of the slow" if p else "no poller"
        print(
            f"{d.name} {m.group(1)}: {m.group(3)} slow of {m.group(2)}; "
            f"within 2.5 s of a poll: {share}"
        )
