"""``pytest -p stall_plugin``: the session's server loop (support.LoopThread) stalls at random.

What a starved test process looks like to the servers in it: their event loop gets no CPU
for STALL_S (default 0.3 s) at random moments, on average every STALL_EVERY_S (1 s), while
the test's own thread and its clients' clocks run on. Not a test and not used by the suite:
a way to reproduce load-dependent failures of tests that run servers on ``loop_thread``
without a loaded machine (``STALL_SEED`` picks the moments; 0 = fresh). One stall at a
time: the next is drawn once the last has run, so stalls scheduled while a test blocks the
loop itself do not pile up behind it.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator

import pytest
from support import LoopThread


@pytest.fixture(scope="session", autouse=True)
def _stall_loop(loop_thread: LoopThread) -> Iterator[None]:
    stall = float(os.environ.get("STALL_S", "0.3"))
    every = float(os.environ.get("STALL_EVERY_S", "1.0"))
    rng = random.Random(int(os.environ.get("STALL_SEED", "0")) or None)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(rng.uniform(0, 2 * every)):
            done = threading.Event()

            def stall_once(done: threading.Event = done) -> None:
                time.sleep(stall)
                done.set()

            loop_thread.loop.call_soon_threadsafe(stall_once)
            while not done.wait(0.1) and not stop.is_set():
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
