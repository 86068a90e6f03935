"""Delayed (15-20 min old) IB market data in live mode, end to end: refused at start unless
`[venues.ibkr] allow_delayed_data = true`; allowed, the header badge and every exit alert say
"delayed data"."""

from __future__ import annotations

import pytest

from engine.commands import Command
from engine.config import ConfigError
from engine.models import AlertKind
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import SPREAD, SPY, STRIKES, World, con_id
from tests.ibkr_world import world as world


def test_live_on_delayed_data_is_refused_at_start(world: World) -> None:
    with pytest.raises(ConfigError) as info:
        world.config(ibkr={"market_data_type": "delayed"})
    [line] = info.value.lines
    assert "allow_delayed_data" in line


async def test_allowed_delayed_data_is_on_the_badge_and_every_exit_alert(world: World) -> None:
    w = world
    # no live subscription anywhere: IB answers 10167 and sends delayed ticks
    w.gw.state.no_market_data.update({SPY.con_id, *(con_id(k, r) for k in STRIKES for r in "CP")})
    s = await w.start(w.config(ibkr={"market_data_type": "delayed", "allow_delayed_data": True}))
    async with w.market.ticking():
        await s.until(
            lambda: all(r.time_value is not None for r in s.engine.snapshot().trades), "quoted"
        )
        assert s.engine.snapshot().badge == "LIVE · DELAYED DATA"
        assert s.engine.real_money()
        spread = s.trades()[SPREAD]
        w.gw.state.queue_outcome(w.market.bag_fill())
        res = await s.engine.command(
            Command("set_overrides", spread.trade_id, {"min_time_value": 5.0})
        )
        assert res.ok
        await s.until(lambda: SPREAD not in s.trades(), "the spread closed")
    exits = [
        a
        for a in s.alerts()
        if a.trade_id == spread.trade_id
        and a.kind in (AlertKind.AUTO_STOP, AlertKind.EXIT_SIGNAL, AlertKind.EXECUTION_FAILURE)
    ]
    assert exits and all(a.message.endswith("[delayed data]") for a in exits)
    await s.close()
