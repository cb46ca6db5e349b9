"""With every source on (variant all), from the diagnosis dumps (hang_timings.py --dump): how
long before content's deadline each request's wait for its sources ended. slack = content's
deadline after the send (20 ms - reply_margin - min(return, 5 ms)) - (inbound + sources), ms.
The wait ends with the last source to answer, usually the ANN (remote, 250 ms budget): the
local sources end earlier, so this is how close they came at most. Requests that dropped a
source are counted apart.

    python slack.py   # in the directory of main-all.json and branch-all.json
"""

import json
from pathlib import Path

import numpy as np

for n in ("main-all", "branch-all"):
    rows = json.loads(Path(f"{n}.json").read_text())
    slack = []
    for _, _, t, dropped in rows:
        if dropped or "sources" not in t:
            continue
        keep = t["reply_margin"] + min(t.get("return", 0.0), 0.25 * 20.0)
        slack.append(20.0 - keep - (t.get("inbound", 0.0) + t["sources"]))
    a = np.array(slack)
    print(
        f"{n}: {len(rows)} requests, {sum(1 for r in rows if r[3])} dropped a source; slack (ms) "
        + " ".join(f"p{q}={np.percentile(a, 100 - q):.2f}" for q in (50, 90, 99))
        + f" min={a.min():.2f}; under 1 ms: {int((a < 1).sum())}, under 2 ms: {int((a < 2).sum())}"
    )
