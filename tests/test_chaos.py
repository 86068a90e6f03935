"""Chaos: half an hour of a market where everything goes wrong at random (issue 15).

Seeded and on the manual clock, so a failure repeats exactly. Each second, at random:
a contract's feed stalls or sends garbage, a trade's rules raise, another program writes a bad
row into the journal, and the venue answers late, cuts its answer off after filling, or never
gets the order. Throughout, two things must hold:

1. No silence: every open trade the test did not let the engine evaluate on fresh, valid data
   for longer than the watchdog's limit is reported unprotected (and no trade is reported that
   was evaluable all along).
2. No double exit: every trade is closed at most once (one exit intent, the venue never fills
   more than it held), and at the end — a calm minute where every rule fires — every trade is
   closed exactly once, booked at the venue's own fills.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.models import Contract, ContractEvent, TradeState
from engine.venues.base import OrderRequest, OrderResult, VenueError
from tests.engine_harness import T0, Harness, RecordingVenue, config

pytestmark = pytest.mark.slow

SEED = 20261208
SECONDS = 1800
LIMIT = 13.0  # the default watchdog limit: 10 s quote age + 3 ticks
CONTRACTS = [f"KXBTCD-25NOV2415-T{k}" for k in (96500, 97000, 97500, 98000)]


class ChaosVenue(RecordingVenue):
    """The paper broker behind a bad line: each order, at random, is answered at once, held
    for a few seconds, filled with its answer cut off, or lost before it reached the venue.

    Each order's fate is drawn from its trade and attempt, not from the order orders arrive in
    (that follows set iteration, which changes with the hash seed), so a failure repeats."""

    answers_inline = False  # a venue over a network: the engine sends in a task of its own

    def __init__(self, *a: Any, trade_of: Any, now: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.trade_of = trade_of  # client order id -> trade id
        self.now = now
        self.attempts: dict[str, int] = {}
        self.held: list[tuple[float, asyncio.Event]] = []
        self.fills: dict[str, OrderResult] = {}  # client order id -> what the venue did
        self.lost = 0
        self.cut = 0
        self.late = 0

    async def submit(self, req: OrderRequest) -> OrderResult:
        self.submitted.append(req)
        tid = self.trade_of(req.client_order_id)
        n = self.attempts[tid] = self.attempts.get(tid, 0) + 1
        rng = random.Random(f"{SEED}:{tid}:{n}")
        fate = rng.random()
        if fate < 0.15:
            self.lost += 1
            raise VenueError("timed out before the venue saw it")
        if fate < 0.35:
            self.late += 1
            gate = asyncio.Event()
            self.held.append((self.now() + rng.uniform(1, 15), gate))
            await gate.wait()
        result = self.execute(req)
        self.fills[req.client_order_id] = result
        if fate > 0.85:
            self.cut += 1
            raise VenueError("connection reset after the venue filled it")
        return result

    def release_due(self, everything: bool = False) -> None:
        keep = []
        for due, gate in self.held:
            if everything or self.now() >= due:
                gate.set()
            else:
                keep.append((due, gate))
        self.held = keep


def write_bad_row(path: Path, n: int, rng: random.Random) -> str | None:
    """A bad trades row as another program would write it; None when the journal's CHECK
    constraints refused it outright (what SQLite can check never gets in)."""
    kind = rng.choice(["blank", "huge", "price", "venue", "overrides"])
    row: dict[str, Any] = {
        "trade_id": f"bad-{n}",
        "contract_id": CONTRACTS[n % len(CONTRACTS)],
        "side": "yes",
        "qty": 10.0,
        "entry_price": 0.5,
        "opened_ts": T0,
        "venue": "sim",
        "overrides": "{}",
        "fees": 0.0,
    }
    if kind == "blank":
        row["trade_id"] = "   "
    elif kind == "huge":
        row["qty"] = 1e15
    elif kind == "price":
        row["entry_price"] = 7.5
    elif kind == "venue":
        row["venue"] = "paper"
    else:
        row["overrides"] = "[1, 2]"
    con = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        names = ", ".join(row)
        con.execute(
            f"INSERT INTO trades ({names}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
    except sqlite3.IntegrityError:
        return None
    finally:
        con.close()
    return str(row["trade_id"])


async def test_half_an_hour_of_chaos_no_silence_no_double_exit(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    cfg = config(auto_stop={"criteria": {"max_loss_percent": 30}})
    h = await Harness(tmp_path, cfg).open()
    def trade_of(coid: str) -> str:
        return next(tid for tid, ex in h.engine.exits.items() if coid.startswith(ex.intent_id))

    venue = ChaosVenue(
        cfg.paper,
        h.quotes.get,
        state_path=tmp_path / "p.json",
        name="sim",
        trade_of=trade_of,
        now=h.clock.now,
    )
    h.venue = venue
    h.engine.venue = venue
    for i, cid in enumerate(CONTRACTS):
        c = Contract(cid, "BTC-USD", "binary_above", 96500.0 + 500 * i, T0 + 7200.0, event_id="E")
        await h.engine.handle(ContractEvent(T0, c))
    bid = dict.fromkeys(CONTRACTS, 0.50)
    held: dict[str, float | None] = dict.fromkeys(CONTRACTS, T0)  # contract -> its valid quote's time
    for cid in CONTRACTS:
        await h.quote(bid[cid], bid[cid] + 0.02, cid=cid)
    await h.spot(97100.0)
    await h.start()

    evaluable: dict[str, float] = {}  # trade -> the last second the test let it be evaluated
    contract_of: dict[str, str] = {}
    opened: list[str] = []
    bad_ids: set[str] = set()
    bad_since: dict[str, float] = {}  # bad row's trade_id -> when it was written

    async def open_one(now: float) -> None:
        tid = f"t{len(opened)}"
        cid = rng.choice(CONTRACTS)
        await h.open_trade(tid, price=round(bid[cid], 2), cid=cid)
        opened.append(tid)
        contract_of[tid] = cid
        evaluable[tid] = now  # the watchdog's grace starts at adoption

    for _ in range(12):
        await open_one(T0)

    feed_fault: dict[str, tuple[str, float]] = {}  # contract -> (stall | garbage, until)
    rule_fault: dict[str, float] = {}  # trade -> until
    real_criteria = h.engine._criteria

    def criteria(t: Any, st: Any) -> Any:
        until = rule_fault.get(t.trade_id)
        if until is not None and h.clock.now() < until:
            raise RuntimeError(f"chaos: a rule of {t.trade_id} blew up")
        return real_criteria(t, st)

    h.engine._criteria = criteria  # type: ignore[method-assign]

    def update_evaluable(now: float) -> None:
        """What the engine could evaluate each trade on: its contract's quote while that is
        valid and fresh (10 s), when no fault is in its rules. Protection counts from the
        data's time: a trade evaluated on a 5 s old quote is protected as of 5 s ago."""
        for tid, cid in contract_of.items():
            ts = held[cid]
            ruled_out = tid in rule_fault and now < rule_fault[tid]
            if ts is not None and now - ts <= 10.0 and not ruled_out:
                evaluable[tid] = max(evaluable[tid], ts)
    checked_silence = checked_alarms = refused = 0

    for sec in range(1, SECONDS + 1):
        now = h.at(sec)
        calm = sec > SECONDS - 60  # the last minute: no faults, every rule fires
        if not calm:
            for cid in CONTRACTS:
                if cid not in feed_fault and rng.random() < 0.02:
                    feed_fault[cid] = (rng.choice(["stall", "garbage"]), now + rng.uniform(3, 30))
            for tid in list(h.engine.trades):
                if tid not in rule_fault and rng.random() < 0.005:
                    rule_fault[tid] = now + rng.uniform(3, 30)
            if rng.random() < 0.03:
                # Another program: its own thread and connection, never the engine's loop.
                bad = await asyncio.to_thread(write_bad_row, h.tmp / "trades.db", sec, rng)
                refused += bad is None
                if bad is not None:
                    bad_ids.add(bad)
                    bad_since[bad] = now
            if rng.random() < 0.05 and len(h.engine.trades) < 20:
                await open_one(now)
        else:
            feed_fault.clear()
            rule_fault.clear()
            venue.release_due(everything=True)
        feed_fault = {c: f for c, f in feed_fault.items() if f[1] > now}

        await h.spot(97100.0 + rng.uniform(-20, 20))
        update_evaluable(now)  # a spot update re-evaluates the trades that had a problem
        for cid in CONTRACTS:
            if calm:
                bid[cid] = 0.05  # −80 % or worse: max_loss for everyone
            elif rng.random() < 0.01:
                bid[cid] = 0.25  # a drop: the stops on this contract fire
            else:
                bid[cid] = min(0.70, max(0.40, bid[cid] + rng.uniform(-0.02, 0.02)))
            fault = feed_fault.get(cid)
            if fault is not None and fault[0] == "stall":
                continue
            if fault is not None:
                await h.quote(float("nan"), 0.52, cid=cid)
                held[cid] = None  # the engine holds garbage now: nothing to evaluate on
                continue
            await h.quote(round(bid[cid], 2), round(bid[cid], 2) + 0.02, cid=cid)
            held[cid] = now
        await h.engine.tick()
        update_evaluable(now)
        venue.release_due()
        for _ in range(3):
            await asyncio.sleep(0)  # the released orders' tasks take their answers

        snap = h.engine.snapshot()
        reported = {u.trade_id for u in snap.unprotected if not u.trade_id.startswith("row ")}
        # A bad row is an open position nothing protects: counted once the journal poll (every
        # 5 s) has seen it.
        rows = {u.trade_id.split(": ", 1)[1] for u in snap.unprotected if u.trade_id.startswith("row ")}
        for bad, since in bad_since.items():
            if now - since > 6 and bad.strip():
                assert bad in rows, f"{sec}s: bad row {bad} not counted unprotected"
        for tid in h.engine.trades:
            if tid in bad_ids:
                continue
            age = now - evaluable[tid]
            if age > LIMIT + 1:
                assert tid in reported, f"{sec}s: {tid} not evaluable for {age:.0f}s, not reported"
                checked_silence += 1
        for tid in reported:
            age = now - evaluable[tid]
            assert age > LIMIT - 1, f"{sec}s: {tid} reported unprotected, evaluable {age:.0f}s ago"
            checked_alarms += 1
        assert not (bad_ids & set(h.engine.trades)), "a bad row was supervised"
        assert not any(r.client_order_id.startswith("bad") for r in venue.submitted)

    await h.engine.drain_exits(timeout=5)
    for sec in range(SECONDS + 1, SECONDS + 40):  # lookups and resends of the last exits
        h.at(sec)
        await h.spot(97100.0)
        for cid in CONTRACTS:
            await h.quote(0.05, 0.07, cid=cid)
        await h.engine.tick()
        await h.engine.drain_exits(timeout=5)
        if not h.engine.trades:
            break

    # The run really exercised what it claims to.
    assert checked_silence > 20 and checked_alarms > 20
    assert venue.lost > 3 and venue.cut > 3 and venue.late > 3 and len(bad_ids) > 3 and refused > 1
    bad_alerts = [a for a in h.alerts if a.data.get("rowid") is not None]
    assert len(bad_alerts) >= len(bad_ids)  # each bad row that got in was named
    assert h.engine.trades == {}, f"still open after the calm minute: {sorted(h.engine.trades)}"
    for tid in opened:
        t = await h.store.get_trade(tid)
        assert t is not None and t.state == TradeState.CLOSED, tid
        [intent] = await h.store.intents_for_trade(tid)  # one exit, never two
        results = [
            r
            for coid, r in venue.fills.items()
            if coid == intent["intent_id"] or coid.startswith(intent["intent_id"] + "-")
        ]
        filled = sum(r.filled_qty for r in results)
        assert filled == pytest.approx(t.qty), tid  # the venue filled exactly what was held
        vwap = sum(r.filled_qty * (r.avg_price or 0.0) for r in results) / filled
        assert t.exit_price == pytest.approx(vwap), tid  # booked at the venue's fills
    await h.close()
