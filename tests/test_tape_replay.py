"""Replay equivalence: a session taped by `build_runtime` (the simulated venue, the tape on)
replayed under the same config reproduces its exits: the same trades, closed by the same rules at
the same ticks.

The live session is driven as `Engine.run` would drive it, on a manual clock: at each whole second
the periodic tick, then the simulated market's events of that second (the replay's order).

What can differ, and is checked rather than hidden: the fill price. The live paper venue fills an
exit at the book (the YES bid for a YES position: `fill_at="quote"`), the replay at the engine's
mark (`fill_at="reference"`, it has no book of its own). The test lists every trade whose exit
price differs and asserts that each difference is exactly the live book vs the mark.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.clock import ManualClock
from engine.config import Config, parse_config
from engine.replay import replay
from engine.runtime import build_runtime
from engine.store import TRADE_STATES
from engine.tape import TAPES_DIRNAME, tape_lines, utc_day

# 2026-12-07 10:00:30 UTC: inside an hourly ladder of the simulated market.
T0 = 1_796_637_630.0
SECONDS = 1200


def session_config(data: Path, **criteria: Any) -> Config:
    return parse_config(
        {
            "engine": {"venue": "sim", "data_dir": str(data)},
            "alerts": {"log_file": "", "cooldown_seconds": 0.0},
            "sim": {"strikes": 5, "demo_trades": 6, "annual_vol": 2.5, "seed": 11},
            "auto_stop": {
                "criteria": criteria
                or {
                    "max_loss_percent": 12,
                    "trailing_drawdown_percent": 8,
                    "profit_target_percent": 15,
                }
            },
        }
    )


async def tape_a_session(data: Path) -> tuple[Config, list[Any], list[dict[str, Any]]]:
    cfg = session_config(data)
    clock = ManualClock(T0)
    rt = await build_runtime(cfg, None, clock=clock)
    exits: list[dict[str, Any]] = []
    rt.engine.exit_listeners.append(exits.append)
    market = rt.feeds[0].market
    try:
        for s in range(1, SECONDS + 1):
            clock.set(T0 + s)
            await rt.engine.tick()
            for ev in market.advance_to(clock.now()):
                await rt.engine.handle_safely(ev)
        trades = await rt.store.load_trades(TRADE_STATES)
    finally:
        await rt.close()
    return cfg, trades, exits


async def test_a_taped_session_replays_to_the_same_exits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg, live_trades, live_exits = await tape_a_session(data)
    tapes = sorted((data / TAPES_DIRNAME).iterdir())
    assert [p.name for p in tapes] == [f"sim-{utc_day(T0)}.jsonl.gz"]
    warnings: list[str] = []
    replay_cfg = cfg.model_copy(deep=True)
    replay_cfg.tape.enabled = False
    errors: list[tuple[int, str]] = []
    result = await replay(
        tape_lines(tapes[0], warnings.append),
        replay_cfg,
        on_error=lambda n, m: errors.append((n, m)),
    )
    assert warnings == [] and errors == []

    live = {t.trade_id: t for t in live_trades}
    again = {t.trade_id: t for t in result.final_trades}
    assert len(live) == 6 and set(again) == set(live)  # the same trades
    closed = [t for t in live.values() if str(t.state) == "closed"]
    assert len(live_exits) >= 2, "the session should exercise the rules"

    def how(t: Any) -> tuple[Any, ...]:
        return (t.trade_id, str(t.state), t.exit_reason, t.closed_ts)

    assert sorted(map(how, again.values())) == sorted(map(how, live.values()))  # rules, ticks

    # The tape's own record of the live exits matches the replay's exits.
    taped = [r.data for r in result.taped if r.kind == "exit"]
    assert [(x["trade_id"], x["rule"]) for x in taped] == [
        (x["trade_id"], x["rule"]) for x in live_exits
    ]
    assert [(x["trade_id"], x["rule"], x["ts"]) for x in result.exits] == [
        (x["trade_id"], x["rule"], x["ts"]) for x in live_exits
    ]

    # Fill prices: listed, and each difference is the live book (bid) against the replay's mark.
    fills = {r.data["trade_id"]: r.data["price"] for r in result.taped if r.kind == "fill"}
    differ = []
    for t in closed:
        r = again[t.trade_id]
        if t.exit_reason == "settled":
            assert r.exit_price == pytest.approx(t.exit_price)
            continue
        assert fills[t.trade_id] == pytest.approx(t.exit_price)  # the tape holds the live fill
        if abs((r.exit_price or 0) - (t.exit_price or 0)) > 1e-9:
            differ.append((t.trade_id, t.exit_price, r.exit_price))
    replay_marks = {x["trade_id"]: x["mark"] for x in result.exits}
    print("exit prices that differ (trade, live fill, replay fill):", differ)
    for tid, _live_fill, replay_fill in differ:
        assert replay_fill == pytest.approx(replay_marks[tid])  # the replay filled at its mark


def test_replay_takes_a_range_over_data_dir_tapes(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    asyncio.run(tape_a_session(data))
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[engine]\ndata_dir = "{data}"\n[auto_stop.criteria]\nmax_loss_percent = 12\n'
        "trailing_drawdown_percent = 8\nprofit_target_percent = 15\n",
        encoding="utf-8",
    )
    b = tmp_path / "b.toml"
    b.write_text("[auto_stop.criteria]\nmax_loss_percent = 40\n", encoding="utf-8")
    day = utc_day(T0)
    before = [(p.name, p.stat().st_size) for p in (data / TAPES_DIRNAME).iterdir()]
    rc = main(["--config", str(cfg), "replay", "--from", day, "--to", day, "--compare", str(b)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "total realised P&L" in out.out
    assert main(["--config", str(cfg), "replay", "--from", day]) == 0
    assert "live vs replay: every trade ended as it did live" in capsys.readouterr().out
    # A replay does not tape: still the one file of the live session, as it was.
    assert [(p.name, p.stat().st_size) for p in (data / TAPES_DIRNAME).iterdir()] == before


async def test_a_tape_keeps_its_own_time(tmp_path: Path, monkeypatch: Any) -> None:
    """A trade adopted at start is taped with its old open time, and a later session of the same
    day follows a gap when no engine ran: the replay neither rewinds to the open time nor ticks
    through the gaps, and the trade's age still counts from its open time."""
    from engine.models import Contract, ContractEvent, OpenEvent, Quote, QuoteEvent, SpotEvent
    from engine.supervisor import Engine
    from engine.tape import Tape

    cid = "KXBTCD-26DEC0712-T97000"
    clock = ManualClock(T0)
    folder = tmp_path / "tapes"
    for start in (T0, T0 + 7200):  # two sessions, two hours apart
        clock.set(start)
        tape = Tape(folder, "sim", clock)
        tape.start()
        tape.record(
            ContractEvent(start, Contract(cid, "BTC-USD", "binary_above", 97000.0, T0 + 86400))
        )
        if start == T0:  # adopted from the journal: opened three days before the tape
            tape.record(OpenEvent(T0 - 3 * 86400, "old", cid, "yes", 10, 0.50))
            tape.record(OpenEvent(start, "new", cid, "yes", 10, 0.50))
        for s in range(10):
            clock.set(start + s)
            tape.record(SpotEvent(clock.now(), "BTC-USD", 97000.0 + s))
            tape.record(QuoteEvent(clock.now(), Quote(cid, 0.50, 0.52, clock.now())))
        tape.close()
    ticks = 0
    real_tick = Engine.tick

    async def counted(self: Engine) -> None:
        nonlocal ticks
        ticks += 1
        await real_tick(self)

    monkeypatch.setattr(Engine, "tick", counted)
    cfg = session_config(tmp_path / "data", max_holding_time_minutes=60)
    cfg.engine.max_quote_age_seconds = 30
    path = folder / f"sim-{utc_day(T0)}.jsonl.gz"
    result = await replay(tape_lines(path, lambda m: None), cfg)
    assert ticks <= 2 * 10 + 2  # the two sessions' seconds, not three days and a two-hour gap
    old = next(t for t in result.final_trades if t.trade_id == "old")
    new = next(t for t in result.final_trades if t.trade_id == "new")
    assert old.opened_ts == T0 - 3 * 86400
    assert old.exit_reason == "max_holding_time" and T0 <= (old.closed_ts or 0) < T0 + 10
    # Opened at the first session, older than an hour at the second: closed when it starts.
    assert new.exit_reason == "max_holding_time"
    assert T0 + 7200 <= (new.closed_ts or 0) < T0 + 7210


def _momentum_tape(folder: Path, with_history: bool) -> Path:
    """30 minutes of spot closes falling 5 % (the spot feed's start-up backfill), then a YES
    trade on a flat quote: only the history says the market is running against it."""
    from engine.models import Contract, ContractEvent, OpenEvent, Quote, QuoteEvent, SpotEvent
    from engine.tape import Tape

    cid = "KXBTCD-26DEC0712-T97000"
    clock = ManualClock(T0)
    tape = Tape(folder, "sim", clock)
    tape.start()
    tape.record(ContractEvent(T0, Contract(cid, "BTC-USD", "binary_above", 97000.0, T0 + 86400)))
    closes = [[T0 - 1800 + 60 * i, 102000.0 - 166.0 * i] for i in range(31)]  # to 97020
    if with_history:
        tape.on_journal("spot_history", {"ts": T0, "closes": closes})
    for s in range(5):
        clock.set(T0 + s)
        tape.record(SpotEvent(clock.now(), "BTC-USD", 97020.0))
        tape.record(QuoteEvent(clock.now(), Quote(cid, 0.50, 0.52, clock.now())))
        if s == 1:
            tape.record(OpenEvent(clock.now(), "t1", cid, "yes", 10, 0.50))
    tape.close()
    return folder / f"sim-{utc_day(T0)}.jsonl.gz"


@pytest.mark.parametrize("with_history", [True, False])
async def test_the_spot_feeds_backfill_is_taped_and_seeded_again(
    tmp_path: Path, with_history: bool
) -> None:
    cfg = session_config(tmp_path / "data", momentum_threshold_bps=50)
    path = _momentum_tape(tmp_path / "tapes", with_history)
    result = await replay(tape_lines(path, lambda m: None), cfg)
    [t] = result.final_trades
    if with_history:  # seeded as the live engine was: the momentum against YES is there at once
        assert t.exit_reason == "momentum"
    else:
        assert str(t.state) == "open"


async def test_seed_spot_history_reaches_the_tape(tmp_path: Path) -> None:
    from engine.replay_format import InfoRecord, parse_record
    from engine.tape import Tape
    from tests.engine_harness import Harness

    h = await Harness(tmp_path).open()
    tape = Tape(tmp_path / "tapes", "sim", h.clock)
    tape.attach(h.engine)
    tape.start()
    closes = [(h.clock.now() - 120.0, 97000.0), (h.clock.now() - 60.0, 97010.0)]
    assert h.engine.seed_spot_history(closes) == 2
    tape.close()
    await h.close()
    [path] = (tmp_path / "tapes").iterdir()
    recs = [parse_record(x) for x in tape_lines(path, lambda m: None)]
    [hist] = [r for r in recs if isinstance(r, InfoRecord) and r.kind == "spot_history"]
    assert [tuple(c) for c in hist.data["closes"]] == closes


async def test_quotes_a_feed_held_are_held_again_in_the_replay(tmp_path: Path) -> None:
    """The feed holds a contract's quotes (a reconnect); a quote past max_loss arrives meanwhile
    and nothing may fire on it; once released, the next one fires. The tape has the feed's calls,
    so the replay exits at the same tick, not at the held quote."""
    from engine.tape import Tape
    from tests.engine_harness import CID, Harness, config

    cfg = config(auto_stop={"criteria": {"max_loss_percent": 30}})
    h = await Harness(tmp_path, cfg).open()
    tape = Tape(tmp_path / "tapes", "sim", h.clock)
    tape.attach(h.engine)
    tape.start()
    try:
        await h.contract()
        await h.spot(97100.0)
        await h.quote(0.50, 0.52)
        await h.start()
        await h.open_trade()
        h.at(1)
        h.engine.hold_quotes([CID], "the feed is reconnecting")
        h.at(2)
        await h.spot(97100.0)
        await h.quote(0.30, 0.32)  # -40 %, but held
        assert h.exits == []
        h.at(3)
        h.engine.release_quotes([CID])
        await h.spot(97100.0)
        await h.quote(0.31, 0.33)
        [live] = h.exits
    finally:
        tape.close()
        await h.close()
    assert live["ts"] == h.clock.now()
    [path] = (tmp_path / "tapes").iterdir()
    result = await replay(tape_lines(path, lambda m: None), cfg)
    assert [(x["trade_id"], x["rule"], x["ts"]) for x in result.exits] == [
        ("t1", "max_loss", live["ts"])
    ]
    calls = [r.data["call"] for r in result.taped if r.kind == "call"]
    assert calls == ["hold_quotes", "release_quotes"]
