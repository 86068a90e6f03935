"""Building the screen's picture never holds up a reaction: `Engine.snapshot_async` gives the loop
back between slices and waits while an event is being handled; `tui.wire.encode_snapshot` does the
same between chunks, and what it encodes comes back equal."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.models import Contract, ContractEvent
from engine.snapshot import Snapshot
from tests.engine_harness import CID, T0, Harness, config
from tui import wire

STRIKES = 60
TRADES = 20


async def _busy_market(tmp: Path) -> Harness:
    """60 strikes of one event, quoted, and 20 trades (t0..t19) on the first contract."""
    h = await Harness(tmp, config(auto_stop={"criteria": {"max_loss_percent": 30}})).open()
    await h.contract()
    for i in range(1, STRIKES):
        cid = f"{CID}-{i}"
        c = Contract(cid, "BTC-USD", "binary_above", 97000.0 + 50 * i, T0 + 3600.0, event_id="E")
        await h.engine.handle(ContractEvent(h.clock.now(), c))
    # One event: the strike table lists the contracts closing next, all at T0 + 3600.
    await h.spot(97100.0)
    await h.quote(0.50, 0.52)
    await h.start()
    for i in range(TRADES):
        await h.open_trade(f"t{i}")
    return h


def _picture(s: Snapshot) -> tuple[object, ...]:
    return (s.market, s.strikes, s.trades, s.alerts, s.health, s.risk, s.armed, s.badge)


async def test_the_sliced_build_shows_what_the_one_piece_build_shows(tmp_path: Path) -> None:
    h = await _busy_market(tmp_path)
    try:
        sliced = await h.engine.snapshot_async(slice_seconds=0.0)  # a turn after every row
        h.engine._dirty = True  # rebuild the same state in one piece
        whole = h.engine.snapshot()
        assert len(sliced.trades) == TRADES and len(sliced.strikes) >= 2
        assert _picture(sliced) == _picture(whole)
        assert whole.seq == sliced.seq + 1
    finally:
        await h.close()


async def test_the_build_never_goes_on_while_an_exit_is_under_way(tmp_path: Path) -> None:
    h = await _busy_market(tmp_path)
    engine = h.engine
    busy_on_resume: list[int] = []  # events being handled each time the build goes on
    let_through = engine.let_reactions_through

    async def recording() -> None:
        await let_through()
        busy_on_resume.append(engine._busy.count)

    engine.let_reactions_through = recording  # type: ignore[method-assign]
    try:
        build = asyncio.create_task(engine.snapshot_async(slice_seconds=0.0))
        await asyncio.sleep(0)  # the build has started and given the loop a turn
        # A quote that puts every trade past max_loss (30%): 20 exits, each awaiting its
        # journal commit, while the build is half-way.
        await h.quote(0.30, 0.32)
        snap = await build
        assert sorted(e["trade_id"] for e in h.exits) == sorted(f"t{i}" for i in range(TRADES))
        assert len(busy_on_resume) >= STRIKES - 1 and set(busy_on_resume) == {0}
        # The trades closed during the build are not in its picture, and the next picture
        # is rebuilt (the build left the engine dirty).
        assert snap.trades == ()
        assert engine.snapshot().seq > snap.seq
    finally:
        await h.close()


async def test_a_picture_taken_during_the_build_wins(tmp_path: Path) -> None:
    h = await _busy_market(tmp_path)
    try:
        build = asyncio.create_task(h.engine.snapshot_async(slice_seconds=0.0))
        await asyncio.sleep(0)
        await h.quote(0.49, 0.51)  # something changes ...
        newer = h.engine.snapshot()  # ... and the UI's sync takes a picture meanwhile
        assert await build is newer  # the slower, older build does not replace it
    finally:
        await h.close()


async def test_encoded_snapshots_come_back_equal_and_give_the_loop_turns(tmp_path: Path) -> None:
    h = await _busy_market(tmp_path)
    try:
        await h.quote(0.30, 0.32)  # exits: alerts with trades in the picture
        await h.open_trade("t-new", price=0.31)
        snap = h.engine.snapshot()
    finally:
        await h.close()
    turns = 0

    async def pause() -> None:
        nonlocal turns
        turns += 1

    data = await wire.encode_snapshot(snap, pause, rows=7)
    assert wire.decode_snapshot(wire.loads(wire.dumps(data))) == snap
    assert (len(snap.strikes), len(snap.trades)) == (STRIKES, 1)
    assert turns == STRIKES // 7  # a turn between chunks: 9 strike chunks, 1 trade chunk
    assert snap.alerts and snap.trades and snap.strikes
