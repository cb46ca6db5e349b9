"""py-spy's raw (collapsed) stacks -> busy samples by category, top frames, and an SVG flame graph.

py-spy with ``--native`` also samples threads blocked in the kernel (an idle executor thread
in ``SimpleQueue.get``, the event loop in ``epoll_pwait``, a thread waiting for the GIL), so
stacks that contain a waiting call are counted as idle and left out: what remains is CPU.

A busy sample is charged to the first frame, from the leaf towards the root, that decides:
faiss (``faiss``), (de)serialisation (protobuf / upb, ``core/arrays.py``), gRPC (grpc's Cython
core and ``grpc/aio``, incl. the socket syscalls it makes), or our own / asyncio / uvloop code
(Python glue). A stack nothing decides (interpreter internals only) is glue.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

CATEGORIES = ("faiss", "grpc", "serde", "glue")
LABELS = {
    "faiss": "faiss",
    "grpc": "gRPC",
    "serde": "(de)serialisation",
    "glue": "Python glue",
}
COLOURS = {
    "faiss": (230, 120, 40),
    "grpc": (70, 130, 200),
    "serde": (90, 170, 90),
    "glue": (220, 190, 60),
    "": (190, 190, 190),
}
WAITING = re.compile(
    r"\b(epoll_wait|epoll_pwait|pthread_cond_timedwait|pthread_cond_wait|"
    r"PyThread_acquire_lock_timed|take_gil|sem_timedwait|sem_wait|nanosleep|clock_nanosleep|"
    r"do_futex_wait|futex_wait)\b"
)
_SERDE = ("protobuf", "_upb", "upb_", "core/arrays.py", "SerializeToString", "FromString")
# annfleet's own modules as py-spy prints them ("(core/merge.py:33)"; numpy's "_core/" is not)
_OURS = re.compile(r"\((core|router|server|client|benchmarks|model)/\w+\.py:")
_GLUE = (
    "asyncio/",
    "uvloop",
    "(loop.c",
    "_asynciomodule",
    "concurrent/futures",
    "threading.py",
    "prometheus_client",
)


def frame_category(frame: str) -> str:
    """The category one frame decides, or "" when it does not decide."""
    if "faiss" in frame:
        return "faiss"
    if any(s in frame for s in _SERDE):
        return "serde"
    if "grpc" in frame:
        return "grpc"
    if _OURS.search(frame) or any(s in frame for s in _GLUE):
        return "glue"
    return ""


def stack_category(frames: list[str]) -> str:
    for frame in reversed(frames):
        category = frame_category(frame)
        if category:
            return category
    return "glue"


def parse_raw(lines: Iterable[str]) -> tuple[Counter[str], int]:
    """py-spy ``--format raw`` lines ("f1;f2;...;leaf N") -> (busy stacks, idle samples)."""
    busy: Counter[str] = Counter()
    idle = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if WAITING.search(stack):
            idle += int(count)
        else:
            busy[stack] += int(count)
    return busy, idle


@dataclass
class Profile:
    busy: Counter[str]  # collapsed stack -> samples, idle stacks removed
    idle: int
    by_category: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        counts = Counter({c: 0 for c in CATEGORIES})
        for stack, n in self.busy.items():
            counts[stack_category(stack.split(";"))] += n
        self.by_category = dict(counts)

    @property
    def samples(self) -> int:
        return sum(self.busy.values())

    def shares(self) -> dict[str, float]:
        total = max(1, self.samples)
        return {c: self.by_category[c] / total for c in CATEGORIES}

    def top_frames(self, n: int = 15) -> list[tuple[str, str, float]]:
        """Where busy samples are, most first: (innermost named frame, with the innermost
        Python frame above it when that is another one; category of the sample; share)."""
        counts: Counter[tuple[str, str]] = Counter()
        for stack, c in self.busy.items():
            frames = stack.split(";")
            named = [f for f in frames if not f.startswith("0x")] or frames
            python = [f for f in frames if ".py:" in f]
            where = named[-1]
            if python and python[-1] != where:
                where = f"{where} < {python[-1]}"
            counts[(where, stack_category(frames))] += c
        total = max(1, self.samples)
        return [(f, cat, k / total) for (f, cat), k in counts.most_common(n)]


def _trie(busy: Counter[str]) -> dict[str, object]:
    root: dict[str, object] = {"n": 0, "kids": {}}
    for stack, count in busy.items():
        node = root
        node["n"] = int(node["n"]) + count  # type: ignore[call-overload]
        for frame in stack.split(";"):
            kids = node["kids"]
            assert isinstance(kids, dict)
            node = kids.setdefault(frame, {"n": 0, "kids": {}})
            node["n"] = int(node["n"]) + count  # type: ignore[call-overload]
    return root


def svg(profile: Profile, title: str, width: int = 1600, row: int = 16) -> str:
    """A flame graph (root at the bottom) of the busy samples, coloured by category; hover a
    frame for its name, samples and share."""
    root = _trie(profile.busy)
    total = max(1, int(root["n"]))  # type: ignore[call-overload]
    boxes: list[tuple[str, int, float, int, float, str]] = []

    def walk(node: dict[str, object], x: float, depth: int, inherited: str) -> None:
        kids = node["kids"]
        assert isinstance(kids, dict)
        for frame, kid in sorted(kids.items()):
            n = int(kid["n"])
            w = n / total * width
            category = frame_category(frame) or inherited
            if w >= 0.5:
                boxes.append((frame, n, x, depth, w, category))
                walk(kid, x, depth + 1, category)
            x += w

    walk(root, 0.0, 0, "")
    depth_max = max((b[3] for b in boxes), default=0)
    height = (depth_max + 1) * row + 50
    base = height - 4
    rects = []
    for frame, n, x, depth, w, category in boxes:
        r, g, b = COLOURS[category]
        chars = int(w / 7)
        text = html.escape(frame[:chars]) if chars >= 3 else ""
        y = base - (depth + 1) * row
        rects.append(
            f"<g><title>{html.escape(frame)} ({n} samples, {n / total:.1%})</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
            f'fill="rgb({r},{g},{b})"/><text x="{x + 2:.1f}" y="{y + row - 4}">{text}</text></g>'
        )
    shares = ", ".join(f"{LABELS[c]} {s:.0%}" for c, s in profile.shares().items())
    body = "\n".join(rects)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">\n'
        f'<text x="4" y="16" font-size="14">{html.escape(title)}</text>\n'
        f'<text x="4" y="34">{profile.samples} busy samples ({profile.idle} idle left out): '
        f"{html.escape(shares)}</text>\n{body}\n</svg>\n"
    )
