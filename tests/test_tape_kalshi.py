"""A live Kalshi session against the loopback servers (tests/kalshi_world.py), taped by
`build_runtime`, replayed under the same config: the same trade, closed by the same rule at the
same tick; and where the fill depended on the live book, the difference is on the tape and
explained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.replay import live_differences, replay
from engine.store import TRADE_STATES
from engine.tape import TAPES_DIRNAME, tape_lines, utc_day
from tests.kalshi_world import HELD, World, step
from tests.kalshi_world import world as world  # the fixture


def _tape(w: World) -> Path:
    [path] = sorted((w.data / TAPES_DIRNAME).iterdir())
    assert path.name == f"kalshi-{utc_day(w.clock.now())}.jsonl.gz"
    return path


async def test_a_taped_kalshi_session_replays_to_the_same_exit(world: World) -> None:
    w = world
    cfg = w.config()
    rt = await w.start(cfg)
    try:
        [t] = rt.engine.trades.values()  # adopted from the account at start
        await step(w, rt)
        w.book("0.30", "0.32")  # -50 % at the bid: max_loss
        await step(w, rt)
        fired_at = w.clock.now()
        for _ in range(3):
            await step(w, rt)
        [live] = [x for x in await rt.store.load_trades(TRADE_STATES) if x.trade_id == t.trade_id]
    finally:
        await rt.close()
    assert live.exit_reason == "max_loss" and live.closed_ts == fired_at

    warnings: list[str] = []
    result = await replay(tape_lines(_tape(w), warnings.append), cfg)
    assert warnings == [] and result.errors == []
    [again] = result.final_trades
    assert (again.trade_id, again.contract_id, again.side, again.qty) == (
        live.trade_id,
        HELD,
        "yes",
        10.0,
    )
    assert again.entry_price == pytest.approx(live.entry_price)
    assert (again.exit_reason, again.closed_ts) == (live.exit_reason, live.closed_ts)
    assert again.exit_price == pytest.approx(live.exit_price)  # the book's bid was the mark
    taped = {r.kind: r.data for r in result.taped}
    assert taped["header"]["venue"] == "kalshi"
    assert taped["exit"]["trade_id"] == live.trade_id and taped["exit"]["rule"] == "max_loss"
    assert taped["fill"]["price"] == pytest.approx(live.exit_price)
    assert live_differences(result) == []


async def test_a_fill_that_depended_on_the_live_book_is_the_listed_difference(
    world: World,
) -> None:
    """The quote says YES bid 0.30, the resting bids are at 0.28: live, the IOC ladder sells at
    0.30 and 0.29 for nothing and fills at 0.28 two steps later. The replay has no book: its paper
    venue fills the first attempt at the mark. Same trade, same rule, same trigger tick; the exit
    price and close time differ, and the tape's fill lines say why."""
    w = world
    cfg = w.config(ladder_tick=0.01, ladder_step_seconds=2.0, ladder_max_attempts=5)
    rt = await w.start(cfg)
    try:
        [t] = rt.engine.trades.values()
        w.book("0.30", "0.32")
        w.kalshi.state.set_book(HELD, yes=[("0.28", "50")])
        await step(w, rt)
        fired_at = w.clock.now()
        for _ in range(6):
            await step(w, rt)
        [live] = [x for x in await rt.store.load_trades(TRADE_STATES) if x.trade_id == t.trade_id]
    finally:
        await rt.close()
    assert live.exit_reason == "max_loss" and live.exit_price == pytest.approx(0.28)
    assert live.closed_ts == fired_at + 4  # the third attempt, two steps of 2 s later

    result = await replay(tape_lines(_tape(w), lambda m: None), cfg)
    [again] = result.final_trades
    assert again.trade_id == live.trade_id and again.exit_reason == live.exit_reason
    assert again.closed_ts == fired_at  # the same trigger tick, filled at once
    assert again.exit_price == pytest.approx(0.30)  # the mark: the replay's paper fill
    # The difference, from the tape: the live fill was at the book, after the ladder's steps.
    fills = [r for r in result.taped if r.kind == "fill"]
    assert [(f.ts, f.data["price"]) for f in fills] == [(fired_at + 4, pytest.approx(0.28))]
    [replay_exit] = result.exits
    assert replay_exit["mark"] == pytest.approx(0.30)
    # `replay` prints the same difference (live vs replay) after its summary.
    [d] = live_differences(result)
    assert d["trade_id"] == live.trade_id
    assert d["live"] == {"rule": "max_loss", "ts": fired_at + 4, "price": pytest.approx(0.28)}
    assert d["replay"] == {"rule": "max_loss", "ts": fired_at, "price": pytest.approx(0.30)}
