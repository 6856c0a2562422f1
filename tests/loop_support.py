"""Proof that awaited work leaves the event loop free: a ticker counts loop turns."""

from __future__ import annotations

import asyncio
from types import TracebackType


class Ticker:
    """``async with Ticker() as t: await work()``; afterwards ``t.ticks`` is how many times
    the loop ran the ticker meanwhile (about ``duration / interval``; near 0 when the work
    blocked the loop)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
