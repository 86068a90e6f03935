"""A Kalshi session end to end, against loopback servers only (Kalshi REST, Coinbase, Kraken).

`build_runtime` with `engine.venue = "kalshi"` wires the real `KalshiClient` / `KalshiVenue`,
`KalshiMarketFeed` and `SpotFeed`; the test drives the feeds' polls and the engine's tick on a
`ManualClock`. The account holds YES 10 of one KXBTCD market bought at 0.60: the engine adopts
it with its entry from the fill, the book drops, max_loss fires, exactly one IOC reduce-only
order reaches the server with the exit intent id as client order id, it fills, and the journal
shows the trade closed with exit_reason max_loss.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from engine.config import ConfigError
from engine.models import Mode, TradeState
from engine.runtime import build_runtime
from engine.venues.kalshi import KalshiVenue
from tests.kalshi_world import HELD, KEY_ID, World, step
from tests.kalshi_world import world as world  # the fixture


async def test_adopted_kalshi_position_is_closed_by_max_loss_with_one_ioc_order(
    world: World,
) -> None:
    w = world
    rt = await build_runtime(w.config(), None, clock=w.clock)
    try:
        assert isinstance(rt.engine.venue, KalshiVenue)
        assert rt.engine.contracts.keys() >= {HELD}  # the ladder was read before start
        [t] = rt.engine.trades.values()  # adopted from the account at start
        assert (t.contract_id, t.side, t.qty) == (HELD, "yes", 10.0)
        assert t.entry_price == pytest.approx(0.60)  # from the fill
        await step(w, rt)
        assert rt.engine.spot_source == "coinbase"
        assert w.kalshi.state.order_posts() == []  # -3 %: nothing fires

        w.book("0.30", "0.32")  # the book drops: -50 % at the bid
        await step(w, rt)

        [post] = w.kalshi.state.order_posts()
        body = post.body
        assert body["ticker"] == HELD and body["side"] == "ask"
        assert body["time_in_force"] == "immediate_or_cancel" and body["reduce_only"] is True
        [intent] = await rt.store.intents_for_trade(t.trade_id)
        assert body["client_order_id"] == intent["intent_id"]
        assert intent["status"] == "filled"
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "max_loss"
        assert closed.exit_price == pytest.approx(0.30)
        assert w.kalshi.state.positions[HELD]["position_fp"] == "0.00"

        for _ in range(6):  # later ticks and position polls send nothing more
            await step(w, rt)
        assert len(w.kalshi.state.order_posts()) == 1
        assert t.trade_id not in rt.engine.trades  # closed trades leave the engine's book
        assert [x.state for x in await rt.store.all_trades()] == [TradeState.CLOSED]
    finally:
        await rt.close()


async def test_the_exit_ladder_steps_down_when_the_first_attempts_do_not_fill(
    world: World,
) -> None:
    """The market's quote says YES bid 0.30, but the resting bids are at 0.28 (the book moved
    between the quote and the order): the IOC sells at 0.30 and 0.29 fill nothing, the third
    attempt, two seconds later each, fills at 0.28."""
    w = world
    rt = await build_runtime(
        w.config(ladder_tick=0.01, ladder_step_seconds=2.0, ladder_max_attempts=5),
        None,
        clock=w.clock,
    )
    try:
        [t] = rt.engine.trades.values()
        w.book("0.30", "0.32")
        w.kalshi.state.set_book(HELD, yes=[("0.28", "50")])
        await step(w, rt)
        for _ in range(6):
            await step(w, rt)
        posts = w.kalshi.state.order_posts()
        assert [p.body["price"] for p in posts] == ["0.3000", "0.2900", "0.2800"]
        assert all(p.body["time_in_force"] == "immediate_or_cancel" for p in posts)
        [intent] = await rt.store.intents_for_trade(t.trade_id)
        coids = [p.body["client_order_id"] for p in posts]
        assert coids == [
            intent["intent_id"],
            f"{intent['intent_id']}-2",
            f"{intent['intent_id']}-3",
        ]
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_price == pytest.approx(0.28)
        assert w.kalshi.state.positions[HELD]["position_fp"] == "0.00"
    finally:
        await rt.close()


async def test_crash_between_journal_and_send_reconciles_and_sends_once(world: World) -> None:
    w = world
    rt = await build_runtime(w.config(), None, clock=w.clock)
    [t] = rt.engine.trades.values()

    reached = asyncio.Event()

    async def crash(req: Any) -> Any:
        reached.set()  # the exit's task is about to send: the process dies right here
        await asyncio.Event().wait()

    rt.engine.venue.submit = crash  # type: ignore[method-assign]
    w.book("0.30", "0.32")
    await step(w, rt, drain=False)
    await reached.wait()
    for task in list(rt.engine._exit_tasks):  # the process "dies": nothing more is written
        task.cancel()
    await rt.store.close()
    assert w.kalshi.state.order_posts() == []
    [intent] = await _intents(w, t.trade_id)
    assert intent["status"] not in ("filled", "cancelled")

    rt2 = await build_runtime(w.config(), None, clock=w.clock)
    try:
        for _ in range(4):
            await step(w, rt2, seconds=2.0)
        [post] = w.kalshi.state.order_posts()
        assert post.body["client_order_id"] == intent["intent_id"]
        closed = await rt2.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "max_loss"
        assert len(await rt2.store.intents_for_trade(t.trade_id)) == 1
    finally:
        await rt2.close()
    assert len(w.kalshi.state.order_posts()) == 1


async def test_no_order_reaches_kalshi_unless_the_mode_is_live(world: World) -> None:
    """dry_run is refused by the config with venue "kalshi"; a mode changed at run time (e.g. a
    reload) is still stopped at the venue: the exit is rejected there, nothing is sent."""
    w = world
    rt = await build_runtime(w.config(), None, clock=w.clock)
    try:
        assert isinstance(rt.engine.venue, KalshiVenue)
        rt.engine.mode = Mode.DRY_RUN
        w.book("0.30", "0.32")
        for _ in range(3):
            await step(w, rt, seconds=3.0)
        assert w.kalshi.state.order_posts() == []
        [t] = rt.engine.trades.values()
        assert t.state != TradeState.CLOSED
    finally:
        await rt.close()


async def _intents(w: World, trade_id: str) -> list[dict[str, Any]]:
    from engine.store import JOURNAL_FILENAME, Store

    store = Store(w.data / JOURNAL_FILENAME)
    await store.open()
    try:
        return await store.intents_for_trade(trade_id)
    finally:
        await store.close()


async def test_a_bad_key_file_is_a_clear_start_up_error(world: World) -> None:
    os.chmod(world.key_path, 0o644)
    with pytest.raises(ConfigError) as info:
        await build_runtime(world.config(), None, clock=world.clock)
    [line] = info.value.lines
    assert "venues.kalshi.private_key_path" in line and "chmod 600" in line
    world.key_path.write_text("not a key")
    os.chmod(world.key_path, 0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        await build_runtime(world.config(), None, clock=world.clock)
    assert not world.data.exists()  # refused before the journal was created


def test_the_demo_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import load_config

    monkeypatch.setenv("KALSHI_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PATH", "/nonexistent/key.pem")
    cfg = load_config(Path(__file__).resolve().parent.parent / "docs" / "kalshi-demo.toml")
    assert cfg.engine.venue == "kalshi" and cfg.venues.kalshi.environment == "demo"
    assert cfg.auto_stop.mode is Mode.ALERT_ONLY
    assert (cfg.spot.primary, cfg.spot.fallback) == ("coinbase", "kraken")
