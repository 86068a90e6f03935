"""The protection watchdog and isolation between trades (issue 15, items 1 and 2).

Every open trade has a "last evaluated on fresh, valid data" time; one that goes past
[engine] unprotected_after_seconds, for any reason, is UNPROTECTED: the snapshot, the header,
the heartbeat (`status`) and one critical alert per episode say so. The causes here are broken
on purpose in ways the engine does not anticipate: a rule that raises, a feed that stalls, a
venue answering garbage, a tick that hangs.
"""

from __future__ import annotations

import asyncio
import math

from engine.models import Contract, ContractEvent, Quote, QuoteEvent, Severity
from engine.watchdog import ProtectionWatchdog, describe_new
from tests.engine_harness import CID, T0, Harness, config, standard

LIMIT = 13.0  # the default: max_quote_age_seconds 10 + 3 ticks of 1 s
CID2 = "KXBTCD-25NOV2415-T98000"


class InOrder(set):
    """A set that iterates in the order given (which trade of a contract is evaluated first)."""

    def __init__(self, items):
        super().__init__(items)
        self.order = list(items)

    def __iter__(self):
        return iter([x for x in self.order if x in self])


def count_ticks(h: Harness) -> asyncio.Queue:
    """A queue that gets one item per completed tick (the engine runs on its own tasks)."""
    done: asyncio.Queue = asyncio.Queue()
    real = h.engine._tick

    async def tick():
        await real()
        done.put_nowait(h.clock.now())

    h.engine._tick = tick  # type: ignore[method-assign]
    return done


async def next_tick(done: asyncio.Queue) -> None:
    async with asyncio.timeout(10):  # a bound, not a timing: a tick takes milliseconds
        await done.get()
        while not done.empty():
            done.get_nowait()
        await done.get()


async def alert_matching(h: Harness, text: str) -> None:
    async with asyncio.timeout(10):
        while not any(text in a.message for a in h.alerts):
            await asyncio.sleep(0)


def unprotected_alerts(h: Harness) -> list:
    return [a for a in h.alerts if "UNPROTECTED" in a.message]


def protected_again(h: Harness) -> list:
    return [a for a in h.alerts if "protected again" in a.message]


async def test_a_trade_whose_quotes_stop_is_reported_unprotected_once_then_protected_again(
    tmp_path,
):
    h = await standard(tmp_path)
    for s in range(1, int(LIMIT) + 1):  # the spot goes on; only the quote stops
        h.at(s)
        await h.spot(97100.0)
        await h.tick()
    snap = h.engine.snapshot()
    assert snap.unprotected == () and unprotected_alerts(h) == []
    for s in range(int(LIMIT) + 1, int(LIMIT) + 6):
        h.at(s)
        await h.spot(97100.0)
        await h.tick()
    snap = h.engine.snapshot()
    assert [u.trade_id for u in snap.unprotected] == ["t1"]
    assert "quote" in snap.unprotected[0].reason and "old" in snap.unprotected[0].reason
    assert snap.trades[0].state == "unprotected" and snap.trades[0].unprotected
    [alert] = unprotected_alerts(h)  # one per episode, however many ticks it lasts
    assert alert.severity == Severity.CRITICAL
    assert alert.message.startswith("1 trade UNPROTECTED") and CID in alert.message
    hb = h.engine._heartbeat(h.clock.now())
    assert set(hb["unprotected"]) == {"t1"}

    await h.quote(0.50, 0.52)  # the venue answers again
    await h.tick()
    snap = h.engine.snapshot()
    assert snap.unprotected == () and snap.trades[0].state == "armed"
    [back] = protected_again(h)
    assert "t1" in back.message
    # A second outage is a second episode: alerted again.
    h.at(h.clock.now() - T0 + LIMIT + 2)
    await h.spot(97100.0)
    await h.tick()
    assert len(unprotected_alerts(h)) == 2
    await h.close()


async def test_a_rule_that_raises_leaves_only_its_trade_unprotected(tmp_path, monkeypatch):
    """An exception while evaluating one trade stays with that trade: the trade after it on
    the same contract is still evaluated, and its stop still fires."""
    cfg = config(auto_stop={"criteria": {"max_loss_percent": 30}})
    h = await Harness(tmp_path, cfg).open()
    await h.contract()
    await h.spot(97100.0)
    await h.quote(0.50, 0.52)
    await h.start()
    await h.open_trade("bad", price=0.50)
    await h.open_trade("good", price=0.50)
    real = h.engine._criteria
    broken = {"on": True}

    def criteria(t, st):
        if t.trade_id == "bad" and broken["on"]:
            raise ZeroDivisionError("a bug in a rule")
        return real(t, st)

    monkeypatch.setattr(h.engine, "_criteria", criteria)
    # "bad" is evaluated first on its contract (and raises); "good" after it.
    h.engine.by_contract[CID] = InOrder(["bad", "good"])
    await h.engine.handle(QuoteEvent(T0, Quote(CID, 0.20, 0.22, T0)))  # −60 %: max_loss
    assert [e["trade_id"] for e in h.exits] == ["good"]
    faults = [a for a in h.alerts if "while evaluating its rules" in a.message]
    assert len(faults) == 1 and faults[0].trade_id == "bad"
    assert faults[0].severity == Severity.CRITICAL
    # Repeats of the same fault are not re-alerted; the watchdog counts the trade unprotected.
    for s in range(1, int(LIMIT) + 3):
        h.at(s)
        await h.spot(97100.0)
        await h.quote(0.20, 0.22)
        await h.tick()
    assert len([a for a in h.alerts if "while evaluating its rules" in a.message]) == 1
    snap = h.engine.snapshot()
    assert [u.trade_id for u in snap.unprotected] == ["bad"]
    assert "internal error" in snap.unprotected[0].reason
    assert "ZeroDivisionError" in unprotected_alerts(h)[0].message
    # Fixed (the rule stops raising): evaluated again, its stop fires, nothing unprotected.
    broken["on"] = False
    await h.quote(0.20, 0.22)
    await h.tick()
    assert [e["trade_id"] for e in h.exits] == ["good", "bad"]
    assert h.engine.snapshot().unprotected == ()
    await h.close()


async def test_garbage_quotes_that_keep_arriving_do_not_count_as_protection(tmp_path):
    """A venue that answers on time but with nonsense (NaN, crossed) is no protection."""
    h = await standard(tmp_path)
    for s in range(1, int(LIMIT) + 3):
        h.at(s)
        await h.spot(97100.0)
        await h.quote(math.nan, 0.52)
        await h.tick()
    snap = h.engine.snapshot()
    assert [u.trade_id for u in snap.unprotected] == ["t1"]
    assert "not a number" in snap.unprotected[0].reason
    assert h.venue.submitted == []
    await h.close()


async def test_a_trade_on_a_contract_never_described_is_unprotected(tmp_path):
    h = await standard(tmp_path)
    await h.open_trade("orphan", cid="KXBTCD-NOPE-T1")
    for s in range(1, int(LIMIT) + 3):
        h.at(s)
        await h.spot(97100.0)
        await h.quote(0.50, 0.52)
        await h.tick()
    snap = h.engine.snapshot()
    assert [u.trade_id for u in snap.unprotected] == ["orphan"]
    assert "no contract details" in snap.unprotected[0].reason
    await h.close()


async def test_many_trades_of_one_outage_are_one_grouped_alert(tmp_path):
    h = await standard(tmp_path)
    c2 = Contract(CID2, "BTC-USD", "binary_above", 98000.0, T0 + 3600.0, event_id="KXBTCD-25NOV2415")
    await h.engine.handle(ContractEvent(T0, c2))
    await h.quote(0.50, 0.52, cid=CID2)
    for i in range(2, 8):
        await h.open_trade(f"t{i}", cid=CID if i % 2 else CID2)
    for s in range(1, int(LIMIT) + 3):
        h.at(s)
        await h.spot(97100.0)
        await h.tick()
    [alert] = unprotected_alerts(h)
    assert alert.message.startswith("7 trades UNPROTECTED")
    assert CID in alert.message and CID2 in alert.message
    assert len(h.engine.snapshot().unprotected) == 7
    # The quotes going stale was one venue-level warning too, naming every trade, not one per
    # contract; and their return is one alert.
    [stale] = [x for x in h.alerts if "auto-stop suspended" in x.message]
    assert "quotes of 2 contracts" in stale.message and "7 trades" in stale.message
    await h.engine.handle_quotes(
        [Quote(CID, 0.50, 0.52, h.clock.now()), Quote(CID2, 0.50, 0.52, h.clock.now())]
    )
    [recovered] = [x for x in h.alerts if "data recovered" in x.message]
    assert "quotes of 2 contracts" in recovered.message
    await h.close()


async def test_a_stalled_feed_task_is_caught_by_the_watchdog_while_the_engine_runs(tmp_path):
    """The engine as in production (`run` with a feed task): the feed delivers, then hangs
    forever without raising. Nothing in the engine knows; the watchdog does."""
    h = await standard(tmp_path)
    stalled = asyncio.Event()

    class StallingFeed:
        name = "stalling"

        async def run(self, engine):
            await engine.handle(QuoteEvent(h.clock.now(), Quote(CID, 0.50, 0.52, h.clock.now())))
            stalled.set()
            await asyncio.Event().wait()  # hangs: no error, no data

    done = count_ticks(h)
    run = asyncio.create_task(h.engine.run([StallingFeed()]))
    await stalled.wait()
    for s in range(1, int(LIMIT) + 3):
        h.at(s)
        await h.spot(97100.0)
        await next_tick(done)
    assert [u.trade_id for u in h.engine.snapshot().unprotected] == ["t1"]
    assert len(unprotected_alerts(h)) == 1
    h.engine.stop()
    await run
    await h.close()


async def test_a_hung_tick_is_reported_by_the_watchdog_task(tmp_path, monkeypatch):
    """The tick itself hangs (here: the risk check never returns). The watchdog runs on a task
    of its own, says the tick is stuck, and counts the trade unprotected once its quotes age."""
    h = await standard(tmp_path)
    hang = asyncio.Event()
    entered = asyncio.Event()

    async def stuck(now):
        entered.set()
        await hang.wait()

    run = asyncio.create_task(h.engine.run([]))
    for _ in range(5):
        await asyncio.sleep(0)
    monkeypatch.setattr(h.engine, "_check_risk", stuck)
    h.at(1)
    await entered.wait()
    h.at(LIMIT + 5)
    await h.spot(97100.0)
    await alert_matching(h, "tick has not completed")
    await alert_matching(h, "UNPROTECTED")
    stuck_alerts = [a for a in h.alerts if "tick has not completed" in a.message]
    assert len(stuck_alerts) == 1 and stuck_alerts[0].severity == Severity.CRITICAL
    assert [u.trade_id for u in h.engine.snapshot().unprotected] == ["t1"]
    hang.set()
    await alert_matching(h, "tick running again")
    h.engine.stop()
    await run
    await h.close()


def test_the_watchdog_reports_each_episode_once_and_its_end():
    w = ProtectionWatchdog(10.0)
    reason = lambda tid, age: f"quote {age:.0f}s old"  # noqa: E731
    assert w.scan(100.0, [("a", "K", 95.0)], reason).new == ()
    ch = w.scan(106.0, [("a", "K", 95.0), ("b", "K", 105.0)], reason)
    assert [u.trade_id for u in ch.new] == ["a"] and ch.back == ()
    assert w.scan(107.0, [("a", "K", 95.0), ("b", "K", 105.0)], reason).new == ()
    ch = w.scan(108.0, [("a", "K", 108.0), ("b", "K", 105.0)], reason)
    assert ch.back == (("a", 13.0),) and ch.new == ()
    # A trade that closed while unprotected leaves the set, and its episode ends (`gone`).
    w.scan(120.0, [("b", "K", 105.0)], reason)
    assert list(w.current) == ["b"]
    assert w.scan(121.0, [], reason).gone == ("b",)
    assert w.current == {}
    assert w.scan(122.0, [], reason) == type(ch)()


def test_the_alert_text_groups_by_reason_and_stays_short():
    w = ProtectionWatchdog(1.0)
    ch = w.scan(
        10.0,
        [(f"t{i}", f"K{i % 5}", 0.0) for i in range(40)],
        lambda tid, age: f"K{int(tid[1:]) % 5}: quote old",
    )
    text = describe_new(ch.new, 40)
    assert text.startswith("40 trades UNPROTECTED")
    assert "and 2 more reasons" in text and len(text) < 400


async def test_a_bad_journal_row_counts_as_an_unprotected_position(tmp_path):
    """An open position the engine cannot supervise (a row another program wrote badly) is
    one more thing nothing protects: the header's count and the snapshot include it."""
    import sqlite3

    h = await standard(tmp_path)
    con = sqlite3.connect(tmp_path / "trades.db", isolation_level=None, timeout=5)
    try:
        con.execute(
            "INSERT INTO trades (trade_id, contract_id, side, qty, entry_price, opened_ts, venue,"
            " overrides, fees) VALUES ('other', ?, 'yes', 10, 0.5, ?, 'paper', '{}', 0)",
            (CID, T0),
        )
    finally:
        con.close()
    for s in range(1, 7):  # the journal is polled every 5 s
        h.at(s)
        await h.spot(97100.0)
        await h.quote(0.50, 0.52)
        await h.tick()
    snap = h.engine.snapshot()
    [row] = snap.unprotected
    assert row.trade_id.endswith("other") and "bad journal row" in row.reason
    assert [t.trade_id for t in snap.trades] == ["t1"]  # the good trade is protected
    await h.close()


async def test_a_combo_whose_quote_cannot_be_derived_does_not_stop_the_next_one(
    tmp_path, monkeypatch
):
    """Resolving one contract fails (a combo's quote raises): that combo is alerted, and the
    next combo of the same batch of quotes is still priced and its stop still fires."""
    from engine import pricing
    from engine.models import Leg

    h = await standard(tmp_path)
    c2 = Contract(CID2, "BTC-USD", "binary_above", 98000.0, T0 + 3600.0, event_id="KXBTCD-25NOV2415")
    await h.engine.handle(ContractEvent(T0, c2))
    await h.quote(0.50, 0.52, cid=CID2)
    broken = Contract("BROKEN", "BTC-USD", "combo", 0.0, T0 + 3600.0, legs=(Leg(CID, 1),))
    good = Contract("GOOD", "BTC-USD", "combo", 0.0, T0 + 3600.0, legs=(Leg(CID2, 1),))
    await h.engine.handle(ContractEvent(T0, broken))
    await h.engine.handle(ContractEvent(T0, good))
    await h.open_trade("tc", side="long", price=0.50, cid="GOOD")
    real = pricing.combo_quote

    def combo_quote(c, quotes):
        if c.id == "BROKEN":
            raise ValueError("a leg's ratio is nonsense")
        return real(c, quotes)

    monkeypatch.setattr(pricing, "combo_quote", combo_quote)
    await h.engine.handle_quotes([Quote(CID, 0.50, 0.52, T0), Quote(CID2, 0.20, 0.22, T0)])
    assert [e["trade_id"] for e in h.exits] == ["tc"]
    faults = [a for a in h.alerts if "internal error deriving its quote" in a.message]
    assert len(faults) == 1 and "BROKEN" in faults[0].message
    await h.close()


async def test_a_manual_close_on_bad_data_says_what_it_waits_for(tmp_path):
    """`close` of a trade whose data is unusable is journaled but cannot be sent: the answer
    says so and why, instead of a bare "closing"."""
    from engine.commands import Command

    h = await standard(tmp_path)
    await h.open_trade("orphan", cid="KXBTCD-NOPE-T1")
    res = await h.engine.command(Command("close", "orphan"))
    assert res.ok and "goes out once its data is valid" in res.message
    assert "no contract details" in res.message
    assert h.venue.submitted == []
    await h.close()


async def test_the_watchdog_task_scans_only_when_the_tick_is_late(tmp_path, monkeypatch):
    """Every tick ends with a scan; the watchdog's own task scans only when the tick has not
    (no double work on the per-tick path), and says so when the watchdog itself fails."""
    h = await standard(tmp_path)
    scans = []
    real = h.engine._watch

    async def counted(now):
        scans.append(now)
        await real(now)

    monkeypatch.setattr(h.engine, "_watch", counted)
    await h.tick(1)
    assert len(scans) == 1
    h.engine._stop.clear()
    h.at(1.5)
    await h.engine._check_tick_alive(h.clock.now())  # on time: the loop would not scan
    task = asyncio.create_task(h.engine._watchdog_loop())
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(scans) == 1
    h.at(5)  # no tick for 4 s: the task scans
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(scans) > 1

    async def broken(now):
        raise RuntimeError("watchdog bug")

    monkeypatch.setattr(h.engine, "_watch", broken)
    for _ in range(10):
        await asyncio.sleep(0)
    [said] = [a for a in h.alerts if "protection watchdog failed" in a.message]
    assert said.severity == Severity.CRITICAL
    h.engine.stop()
    await task
    await h.close()
