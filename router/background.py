"""Work a router runs beside serving on its event loop (live recall, diversity of lists)."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod


class SampledBackground(ABC):
    """A monitor that samples ``rate`` of the traffic and works on it in one background task:
    ``start`` (on the running loop, once, and only when ``rate`` > 0) and ``close``."""

    rate: float
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.rate > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @abstractmethod
    async def _run(self) -> None:
        """The background task's body; runs until cancelled."""
