"""What the loopback test servers and the venue tests share: an aiohttp app served on 127.0.0.1,
and a stand-in for `asyncio.sleep` that records backoff waits instead of waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serve(app: web.Application, shutdown_timeout: float = 0.5) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1 on a free port (yielded) for the duration of the block."""
    runner = web.AppRunner(
        app, handle_signals=False, handler_cancellation=True, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class RecordedSleeps:
    """Stands in for `asyncio.sleep`: records each wait, yields to the loop once, returns."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)
