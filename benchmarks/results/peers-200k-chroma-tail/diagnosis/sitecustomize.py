# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""tail12 instrument: GC pauses (monotonic stamps) in serve-router / serve-shard children."""

import os


def _role():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except OSError:
        return None
    for a in cmd:
        if a in (b"serve-router", b"serve-shard"):
            return a.decode()
    return None


_ROLE = _role()
if _ROLE and os.environ.get("TAIL12_OUT"):
    import gc
    import json
    import signal
    import time

    _ev = []
    _st = []

    def _cb(phase, info):
        if phase == "start":
            _st.append(time.monotonic())
        elif _st:
            t0 = _st.pop()
            _ev.append((t0, time.monotonic() - t0, info.get("generation"), info.get("collected")))

    gc.callbacks.append(_cb)

    def _dump(*_a):
        path = os.path.join(os.environ["TAIL12_OUT"], f"{_ROLE}-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump(
                {
                    "role": _ROLE,
                    "pid": os.getpid(),
                    "gc": _ev,
                    "threshold": gc.get_threshold(),
                    "frozen": gc.get_freeze_count(),
                    "count": gc.get_count(),
                },
                f,
            )

    signal.signal(signal.SIGUSR2, _dump)
    if os.environ.get("TAIL12_GC") == "off":
        _orig_freeze = gc.freeze

        def _freeze_then_disable():
            _orig_freeze()
            gc.disable()

        gc.freeze = _freeze_then_disable

if _ROLE and os.environ.get("TAIL12_OUT") and os.environ.get("TAIL12_STAMPS"):
    import functools
    import importlib.abc
    import importlib.machinery
    import sys

    _stamps = []
    _mono = time.monotonic

    def _wrap_async(cls, name, tag):
        fn = getattr(cls, name)

        @functools.wraps(fn)
        async def w(*a, **k):
            _stamps.append((_mono(), tag + ">"))
            try:
                return await fn(*a, **k)
            finally:
                _stamps.append((_mono(), tag + "<"))

        setattr(cls, name, w)

    def _wrap_sync(cls, name, tag):
        fn = getattr(cls, name)

        @functools.wraps(fn)
        def w(*a, **k):
            _stamps.append((_mono(), tag))
            return fn(*a, **k)

        setattr(cls, name, w)

    def _patch_router_service(m):
        _wrap_async(m.RetrievalService, "_search", "R")

    def _patch_streams(m):
        _wrap_async(m.SearchStreams, "search", "S")

    def _patch_shard_service(m):
        _wrap_sync(m.SearchStream, "_take", "T")
        _wrap_async(m.ShardService, "answer", "A")
        _wrap_async(m.SearchStream, "_write", "W")

    _TARGETS = {
        "annfleet.router.service": _patch_router_service,
        "annfleet.router.streams": _patch_streams,
        "annfleet.server.service": _patch_shard_service,
    }

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in _TARGETS:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                return None
            orig = spec.loader.exec_module
            patch = _TARGETS[name]

            def exec_module(module):
                orig(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Hook())
    _old_dump = _dump

    def _dump2(*_a):
        _old_dump()
        path = os.path.join(os.environ["TAIL12_OUT"], f"stamps-{_ROLE}-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump(_stamps, f)

    signal.signal(signal.SIGUSR2, _dump2)
