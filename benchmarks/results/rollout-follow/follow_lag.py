"""A second router over a running cluster's shards, polled with Retrieve (one every ~20 ms)
while a rollout command runs through the first: when it first answers from each bundle, and
how many answers were degraded or failed. Usage (a cluster from `annfleet up`, a second
router started with `annfleet serve-router ... --port 50071 --shard-admins ...`):

    AFTER=8 python benchmarks/results/rollout-follow/follow_lag.py \\
        annfleet rollout --bundle B --router 127.0.0.1:50052 --token-file T --grace 5
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from annfleet.client import Client

SECOND = os.environ.get("SECOND", "127.0.0.1:50071")


def main(command: list[str]) -> None:
    seen: list[tuple[float, str, bool]] = []  # (time, bundle id or "" on error, degraded)
    stop = threading.Event()

    def poll() -> None:
        with Client(SECOND, timeout=5) as client:
            while not stop.is_set():
                at = time.monotonic()
                try:
                    answer = client.retrieve(1, 10)
                    seen.append((at, answer.bundle_id, answer.coverage.degraded))
                except Exception:
                    seen.append((at, "", True))
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1)
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    returned = time.monotonic()
    time.sleep(float(os.environ.get("AFTER", "8")))
    stop.set()
    poller.join()
    print(done.stdout[-600:], done.stderr[-300:])
    print(
        f"rollout command {returned - began:.2f} s; answers {len(seen)}, "
        f"degraded/failed {sum(1 for _, _, bad in seen if bad)}"
    )
    first: dict[str, float] = {}
    for at, bundle_id, _ in seen:
        first.setdefault(bundle_id or "ERROR", at)
    for bundle_id, at in first.items():
        print(
            f"second router's first answer from {bundle_id}: {at - returned:+.2f} s after the "
            "rollout command returned"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
