"""Kalshi faults in a whole session: what a trader notices when Kalshi's REST API misbehaves.

The session is the one of tests/test_kalshi_session.py (`build_runtime` with venue "kalshi"
against loopback servers, a `ManualClock`, the account holding YES 10 of `HELD` at 0.60). Every
fault the loopback server can inject (429 without Retry-After, 500, a timeout, truncated JSON, an
HTML error page, the venue's own 400 refusal) and a refused connection is put on each path that
matters: the market feed's quote poll, the engine's positions poll, and an exit order. For each,
a trader sees:

- the engine goes on: no exception leaves a feed's poll or the engine's tick;
- ONE alert for the episode, however many polls fail (data_quality for data, execution_failure
  for an exit), and no other;
- after the fault: quotes flow again and protect the trade, the positions poll sees the account
  again, the exit completes exactly once; where the engine announces a recovery, it does.

Also: a position gone from the account is closed as "external" (one trade_closed alert), and a
position gone because its market settled is closed as "settled", not as "external".

Also the settlement races: a settled position the positions poll sees gone before the feed
reads the result still ends "settled"; a determined position Kalshi still lists until it pays
out is not adopted again as a new trade.

The Kalshi client makes one attempt per request (`max_attempts = 1`, as in the session test), so
each failed poll is one faulted request; its backoff waits, if any, are recorded, never slept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.alerts import Alert
from engine.models import AlertKind, Severity, TradeState
from engine.runtime import Runtime
from tests.kalshi_world import CLOSE_17, EVENT, HELD, World, step
from tests.kalshi_world import world as world  # the fixture

ORDERS = "/portfolio/events/orders"
POSITIONS = "/portfolio/positions"
MARKETS = "/markets"
TIMEOUT = 0.4  # the client's timeout where a fault is a timeout (the server holds 2 s)
NOTICED = {AlertKind.DATA_QUALITY, AlertKind.EXECUTION_FAILURE, AlertKind.TRADE_CLOSED}
NOTICED |= {AlertKind.AUTO_STOP, AlertKind.TRADE_DETECTED}


@dataclass(frozen=True)
class Fault:
    name: str
    kind: str  # a tests.kalshi_server fault kind, or "connect": the connection is refused
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return TIMEOUT if self.kind == "delay" else 2.0


FAULTS = [
    Fault("429", "429"),
    Fault("500", "500"),
    Fault("timeout", "delay", {"seconds": 2.0}),
    Fault("truncated-json", "truncated"),
    Fault("html-502", "html"),
    Fault("refusal-400", "refuse", {"status": 400}),
    Fault("connection-refused", "connect"),
]
# An order the venue took before the fault hid its answer.
PROCESSED = Fault("500-after-processing", "500", {"after_processing": True})


def inject(w: World, f: Fault, *, method: str, path: str, times: int | None = None) -> None:
    """`f` on `method` `path` (a prefix): `times` requests, or every one until cleared."""
    if f.kind == "connect":
        w.refuse_connections(method=method, path=path, times=times)
        return
    many: dict[str, Any] = {"persistent": True} if times is None else {"times": times}
    w.kalshi.state.queue_fault(f.kind, method=method, path=path, **many, **f.options)  # type: ignore[arg-type]


def hits(w: World, f: Fault, *, method: str, path: str) -> int:
    """How many requests met the fault (proof that the fault was really on the path)."""
    if f.kind == "connect":
        return sum(1 for m, p in w.refused if m == method and p.startswith(path))
    return len(w.kalshi.state.faulted(method, path))


async def start(w: World, f: Fault) -> tuple[Runtime, list[Alert]]:
    rt = await w.start(w.config(kalshi={"timeout_seconds": f.timeout}))
    alerts: list[Alert] = []  # what is about the trade and its data (not opportunity edges)
    rt.engine.alerts.listeners.append(lambda a: alerts.append(a) if a.kind in NOTICED else None)
    await step(w, rt, 1.0)  # a healthy second: quotes, spot, the position adopted at start
    return rt, alerts


def noticed(alerts: list[Alert]) -> list[tuple[AlertKind, Severity]]:
    return [(a.kind, a.severity) for a in alerts]


def the_trade(rt: Runtime) -> Any:
    [t] = rt.engine.trades.values()
    assert (t.contract_id, t.side, t.qty) == (HELD, "yes", 10.0)
    return t


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_quote_poll_fault_one_stale_alert_then_quotes_protect_again(
    world: World, fault: Fault
) -> None:
    w = world
    rt, alerts = await start(w, fault)
    try:
        t = the_trade(rt)
        assert noticed(alerts) == []
        inject(w, fault, method="GET", path=MARKETS)
        for _ in range(3):  # 7, 14, 21 s without a quote (the limit is 10 s)
            await step(w, rt, 7.0)
        assert hits(w, fault, method="GET", path=MARKETS) == 3
        # One warning when the quote goes stale, one critical when the watchdog counts the
        # trade unprotected (13 s without an evaluation on fresh data), not one per poll.
        bad, unprotected = alerts
        assert (bad.kind, bad.severity) == (AlertKind.DATA_QUALITY, Severity.WARNING)
        assert bad.data["source"] == f"quote:{HELD}" and "old" in bad.message
        assert t.trade_id in bad.message  # "auto-stop suspended for <trade>"
        assert unprotected.severity == Severity.CRITICAL
        assert "UNPROTECTED" in unprotected.message and t.trade_id in unprotected.message
        assert rt.engine.snapshot().trades[0].state == "unprotected"

        w.clear_faults()
        await step(w, rt, 7.0)
        assert rt.engine.quotes[HELD].ts == w.clock.now()  # quotes flow again
        assert [(a.kind, a.severity) for a in alerts[2:]] == [
            (AlertKind.DATA_QUALITY, Severity.INFO),  # "data recovered"
            (AlertKind.DATA_QUALITY, Severity.INFO),  # "protected again"
        ]
        assert alerts[2].data.get("source") == f"quote:{HELD}"
        assert "protected again" in alerts[3].message
        assert rt.engine.snapshot().trades[0].state == "armed"

        w.book("0.30", "0.32")  # and they protect the trade again: max_loss closes it
        await step(w, rt, 2.0)
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.exit_reason == "max_loss"
        assert len(w.kalshi.state.order_posts()) == 1
        assert noticed(alerts)[4:] == [(AlertKind.AUTO_STOP, Severity.WARNING)]
    finally:
        await rt.close()


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_positions_poll_fault_one_venue_alert_no_false_close_then_polls_again(
    world: World, fault: Fault
) -> None:
    w = world
    rt, alerts = await start(w, fault)
    try:
        t = the_trade(rt)
        other = f"{EVENT}-T97500"
        inject(w, fault, method="GET", path=POSITIONS)
        w.kalshi.state.set_position(other, "-5.00", exposure="2.0000")  # NO 5 bought meanwhile
        for _ in range(3):  # one positions poll per tick 5 s apart
            await step(w, rt, 7.0)
        assert hits(w, fault, method="GET", path=POSITIONS) == 3
        [bad] = alerts
        assert (bad.kind, bad.severity) == (AlertKind.DATA_QUALITY, Severity.WARNING)
        assert bad.data["source"] == "venue" and "unreachable" in bad.message
        # An unreadable account is not an empty one: the trade is not closed as external, and
        # what the account holds now is not known yet.
        assert list(rt.engine.trades) == [t.trade_id] and t.state == TradeState.OPEN
        assert w.kalshi.state.order_posts() == []

        w.clear_faults()
        await step(w, rt, 7.0)
        assert [(a.kind, a.severity, a.data.get("source")) for a in alerts[1:]] == [
            (AlertKind.DATA_QUALITY, Severity.INFO, "venue"),  # "data recovered: venue"
            (AlertKind.TRADE_DETECTED, Severity.INFO, None),  # the poll sees the account again
        ]
        held = sorted((x.contract_id, x.side, x.qty) for x in rt.engine.trades.values())
        assert held == [(HELD, "yes", 10.0), (other, "no", 5.0)]
        for _ in range(2):
            await step(w, rt, 7.0)
        assert len(alerts) == 3 and len(rt.engine.trades) == 2
    finally:
        await rt.close()


async def _exit_completes_once(w: World, rt: Runtime, trade_id: str) -> None:
    """The exit is booked: one fill of 10 at the venue, one filled intent, the trade closed by
    max_loss in the journal, the account flat; later ticks send nothing more."""
    closed = await rt.store.get_trade(trade_id)
    assert closed is not None and closed.state == TradeState.CLOSED
    assert closed.exit_reason == "max_loss"
    [intent] = await rt.store.intents_for_trade(trade_id)
    assert intent["status"] == "filled"
    executed = [o for o in w.kalshi.state.orders.values() if o["fill_count_fp"] != "0.00"]
    assert [(o["ticker"], o["fill_count_fp"]) for o in executed] == [(HELD, "10.00")]
    assert executed[0]["client_order_id"].startswith(intent["intent_id"])
    fills = await rt.store.fills_for_trade(trade_id)
    assert sum(f["qty"] for f in fills) == pytest.approx(10.0)
    assert w.kalshi.state.positions[HELD]["position_fp"] == "0.00"
    posts = len(w.kalshi.state.order_posts())
    for _ in range(4):
        await step(w, rt, 2.0)
    assert len(w.kalshi.state.order_posts()) == posts
    assert trade_id not in rt.engine.trades


@pytest.mark.parametrize("fault", [*FAULTS, PROCESSED], ids=lambda f: f.name)
async def test_exit_order_fault_one_execution_alert_and_the_exit_completes_once(
    world: World, fault: Fault
) -> None:
    w = world
    rt, alerts = await start(w, fault)
    try:
        t = the_trade(rt)
        inject(w, fault, method="POST", path=ORDERS, times=1)
        w.book("0.30", "0.32")  # -50 % at the bid: max_loss fires on this quote
        await step(w, rt, 2.0)
        assert hits(w, fault, method="POST", path=ORDERS) == 1
        [failed] = alerts
        assert (failed.kind, failed.trade_id) == (AlertKind.EXECUTION_FAILURE, t.trade_id)
        assert rt.engine.snapshot().trades[0].state == "closing"

        for _ in range(3):  # the engine retries (looks the order up, resends if it was lost)
            await step(w, rt, 2.0)
            if t.trade_id not in rt.engine.trades:
                break
        await _exit_completes_once(w, rt, t.trade_id)
        assert noticed(alerts) == [
            (AlertKind.EXECUTION_FAILURE, failed.severity),
            (AlertKind.AUTO_STOP, Severity.WARNING),
        ]
    finally:
        await rt.close()


@pytest.mark.parametrize(
    "fault",
    [f for f in FAULTS if f.kind in ("429", "500", "html", "connect")],
    ids=lambda f: f.name,
)
async def test_exit_order_outage_over_several_attempts_is_one_alert(
    world: World, fault: Fault
) -> None:
    """Kalshi refuses the exit order on three attempts in a row (the order never reached it),
    then answers: the exit completes once, and the trader got one alert, not three."""
    w = world
    rt, alerts = await start(w, fault)
    try:
        t = the_trade(rt)
        inject(w, fault, method="POST", path=ORDERS)
        w.book("0.30", "0.32")
        for _ in range(3):
            await step(w, rt, 2.0)
        assert hits(w, fault, method="POST", path=ORDERS) == 3
        assert t.trade_id in rt.engine.trades
        w.clear_faults()
        for _ in range(2):
            await step(w, rt, 2.0)
            if t.trade_id not in rt.engine.trades:
                break
        await _exit_completes_once(w, rt, t.trade_id)
        assert noticed(alerts) == [
            (AlertKind.EXECUTION_FAILURE, Severity.WARNING),
            (AlertKind.AUTO_STOP, Severity.WARNING),
        ]
    finally:
        await rt.close()


async def test_a_position_gone_from_the_account_is_closed_as_external(world: World) -> None:
    w = world
    rt, alerts = await start(w, FAULTS[0])
    try:
        t = the_trade(rt)
        del w.kalshi.state.positions[HELD]  # sold elsewhere (the website, another program)
        await step(w, rt, 7.0)
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "external"
        [gone] = alerts
        assert (gone.kind, gone.trade_id) == (AlertKind.TRADE_CLOSED, t.trade_id)
        assert "no longer held" in gone.message
        for _ in range(2):
            await step(w, rt, 7.0)
        assert len(alerts) == 1 and rt.engine.trades == {}
        assert w.kalshi.state.order_posts() == []
    finally:
        await rt.close()


def _settle_at_kalshi(w: World, result: str) -> None:
    """The event is determined: each market's result is out and the account's position in it
    is paid out (Kalshi lists unsettled positions only)."""
    for m in w.kalshi.state.markets.values():
        m["status"], m["result"] = "determined", result
    del w.kalshi.state.positions[HELD]


async def test_a_position_gone_because_its_market_settled_is_closed_as_settled(
    world: World,
) -> None:
    w = world
    rt, alerts = await start(w, FAULTS[0])
    try:
        t = the_trade(rt)
        w.clock.set(CLOSE_17 + 120)  # two minutes after the close
        _settle_at_kalshi(w, "yes")
        await step(w, rt, 0.0)  # the feed learns the result before the positions poll
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "settled" and closed.exit_price == pytest.approx(1.0)
        assert [(a.kind, a.trade_id) for a in alerts if a.kind == AlertKind.TRADE_CLOSED] == [
            (AlertKind.TRADE_CLOSED, t.trade_id)
        ]
        for _ in range(2):
            await step(w, rt, 7.0)
        assert not [a for a in alerts if a.kind == AlertKind.TRADE_CLOSED][1:]
        assert w.kalshi.state.order_posts() == []
    finally:
        await rt.close()


async def test_a_settled_position_seen_gone_before_the_result_is_still_closed_as_settled(
    world: World,
) -> None:
    """Kalshi settles the market and pays the position out between two feed polls, and the
    engine's positions poll (every 5 s) comes before the feed's (every 1 s) reads the result.
    The position is gone because the market settled, not because someone sold it: the trade
    must end as "settled" at the payout, not as "external" at the last mark."""
    w = world
    rt, alerts = await start(w, FAULTS[0])
    try:
        t = the_trade(rt)
        w.clock.set(CLOSE_17 + 120)
        _settle_at_kalshi(w, "yes")
        await rt.engine.tick()  # the positions poll first: the account no longer holds it
        await step(w, rt, 1.0)  # then the feed reads the result
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "settled" and closed.exit_price == pytest.approx(1.0)
        assert [(a.kind, a.trade_id) for a in alerts if a.kind == AlertKind.TRADE_CLOSED] == [
            (AlertKind.TRADE_CLOSED, t.trade_id)
        ]
    finally:
        await rt.close()


async def test_a_determined_position_not_yet_paid_out_is_not_adopted_again(
    world: World,
) -> None:
    """Kalshi determines the result before it pays positions out: for a while the account
    still lists the position. The engine settled the trade on the result; the position still
    listed is the same one, not a new trade to watch (and, when it is paid out, not an external
    close)."""
    w = world
    rt, alerts = await start(w, FAULTS[0])
    try:
        t = the_trade(rt)
        w.clock.set(CLOSE_17 + 120)
        for m in w.kalshi.state.markets.values():
            m["status"], m["result"] = "determined", "yes"
        await step(w, rt, 0.0)  # the feed settles the trade; the account still lists it
        await step(w, rt, 7.0)
        del w.kalshi.state.positions[HELD]  # paid out
        await step(w, rt, 7.0)
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.exit_reason == "settled"
        assert [(a.kind, a.trade_id) for a in alerts] == [(AlertKind.TRADE_CLOSED, t.trade_id)]
        assert [x.trade_id for x in await rt.store.all_trades()] == [t.trade_id]
    finally:
        await rt.close()
