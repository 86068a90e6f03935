"""The real venues (Kalshi, IB) send an order only while the engine's mode is live: a mode that
changed at run time (or none yet) gets a rejection naming it, and nothing reaches the venue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import IbkrConfig
from engine.ibkr_runtime import _LiveOnly as IbLiveOnly
from engine.kalshi_runtime import _LiveOnly as KalshiLiveOnly
from engine.models import Mode
from engine.venues.base import OrderRequest, VenueError

REQ = OrderRequest("x-1", "KXBTCD-26NOV2121-T97000", "yes", "sell", 10, 0.45)


class _Sent(Exception):
    """The order reached the Kalshi client."""


class _Client:
    async def create_order(self, *_a: Any, **_kw: Any) -> None:
        raise _Sent


@pytest.mark.parametrize("mode", [Mode.DRY_RUN, Mode.ALERT_ONLY, None])
async def test_kalshi_refuses_unless_live(mode: Mode | None) -> None:
    venue = KalshiLiveOnly(_Client(), lambda: mode)
    res = await venue.submit(REQ)
    assert res.status == "rejected" and res.filled_qty == 0.0
    assert (
        res.reason == f"not sent to kalshi: mode is {mode.value if mode else 'unknown'}, not live"
    )
    live = KalshiLiveOnly(_Client(), lambda: Mode.LIVE)
    with pytest.raises(_Sent):
        await live.submit(REQ)


async def test_ib_refuses_unless_live(tmp_path: Path) -> None:
    def venue(mode: Mode) -> IbLiveOnly:
        return IbLiveOnly(lambda: mode, lambda: None, IbkrConfig(), tmp_path)

    res = await venue(Mode.DRY_RUN).submit(REQ)
    assert (res.status, res.reason) == ("rejected", "not sent to IB: mode is dry_run, not live")
    with pytest.raises(VenueError, match="GATEWAY_UNREACHABLE"):  # live: on to IB (not connected)
        await venue(Mode.LIVE).submit(REQ)
