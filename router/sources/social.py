"""``social``: recent items of the users this user follows (pluggable: any
:class:`FollowGraph`; the one here reads a file). MovieLens has no follow graph, so the
source is off in the default config.

Graph file: one ``follower followee`` pair of user ids per line (whitespace or a comma
between), ``#`` starts a comment. For the user's followees (at most ``max_followees``, file
order), item j scores ``sum_f recency_decay ** i_f(j)`` where i_f(j) is j's position from the
newest in followee f's last ``recent`` items (state store): items many followees engaged
with lately come first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from annfleet.config import SocialSourceConfig
from annfleet.errors import ConfigError
from annfleet.router.sources import Candidates, Source, SourceRequest, top_k
from annfleet.router.state import StateStore


class FollowGraph(Protocol):
    def followees(self, user_id: int) -> list[int]: ...


class FileFollowGraph:
    """A follow graph held in memory: follower -> followees in file order, deduplicated."""

    def __init__(self, edges: Iterable[tuple[int, int]]) -> None:
        graph: dict[int, dict[int, None]] = {}
        for a, b in edges:
            if a != b:
                graph.setdefault(a, {})[b] = None
        self._graph = {a: list(bs) for a, bs in graph.items()}

    def followees(self, user_id: int) -> list[int]:
        return self._graph.get(int(user_id), [])

    def __len__(self) -> int:
        return sum(len(v) for v in self._graph.values())

    @classmethod
    def load(cls, path: Path | str) -> FileFollowGraph:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read follow graph: {exc.strerror}") from exc
        edges = []
        for n, line in enumerate(text.splitlines(), start=1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            parts = re.split(r"[\s,]+", body)
            if len(parts) != 2 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
                raise ConfigError(
                    f"{path}:{n}: expected 'follower followee' user ids, got {line!r}"
                )
            edges.append((int(parts[0]), int(parts[1])))
        return cls(edges)


class SocialSource(Source):
    name = "social"

    def __init__(self, settings: SocialSourceConfig, state: StateStore, graph: FollowGraph) -> None:
        super().__init__(settings)
        self.config = settings
        self.state = state
        self.graph = graph

    async def fetch(self, request: SourceRequest) -> Candidates:
        followees = self.graph.followees(request.user_id)[: self.config.max_followees]
        if not followees:
            return Candidates.empty()
        recent = await self.state.users_recent(followees, self.config.recent)
        score: dict[int, float] = {}
        for items in recent.values():
            for age, item in enumerate(reversed(items)):
                score[item] = score.get(item, 0.0) + self.config.recency_decay**age
        if not score:
            return Candidates.empty()
        ids = np.fromiter(score, np.int64, len(score))
        values = np.fromiter(score.values(), np.float64, len(score))
        return top_k(ids, values, request.k, request.exclude)
