"""`IbkrVenue` with the REAL ib_async client against the loopback TWS gateway (tests/tws_gateway.py).

Nothing in the adapter or the client is patched. The attempt timeout is 0.2 s where an order
must be left to run out; every other wait is on an event (the gateway's or the client's) with a
deadline. No test sleeps for timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ib_async import IB

from engine.clock import ManualClock
from engine.config import IbkrConfig, IbkrGroupConfig
from engine.models import Leg
from engine.venues.base import OrderRequest, VenueError, VenuePosition
from engine.venues.ibkr.groups import PARTIAL_GRACE_SECONDS
from engine.venues.ibkr.venue import IbkrVenue
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.tws_gateway import (
    IN_CANCEL_ORDER,
    IN_PLACE_ORDER,
    Fill,
    Gateway,
    Reject,
    Rest,
    Silent,
    option_contract,
    stock_contract,
    tws_gateway,
)

ACCOUNT = "DU1234567"
CLIENT_ID = 7
DEADLINE = 2.0
AAPL = stock_contract(265598, "AAPL")
CALL = option_contract(700001, "AAPL", "20260116", 150.0, "C")
PUT = option_contract(700002, "AAPL", "20260116", 140.0, "P")
# a bull call spread held by config group "vert-1": +1 150C (the CALL above is separate), 160C
C155 = option_contract(700011, "AAPL", "20260116", 155.0, "C")
C165 = option_contract(700012, "AAPL", "20260116", 165.0, "C")


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with tws_gateway(accounts=[ACCOUNT]) as gateway:
        gateway.state.add_position(AAPL, 100, 180.25, market_price=185.0)
        gateway.state.add_position(CALL, 3, 145.0, market_price=1.50)  # bought at 1.45
        gateway.state.add_position(PUT, -2, 312.0, market_price=3.00)  # sold at 3.12
        yield gateway


class Session:
    """The client the venue uses (`ib`), replaceable by a reconnect, as IbConnection does."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.ib: IB | None = None
        self.clients: list[IB] = []

    async def connect(self) -> IB:
        ib = IB()
        self.clients.append(ib)
        await ib.connectAsync(self.gw.host, self.gw.port, clientId=CLIENT_ID, timeout=DEADLINE)
        self.ib = ib
        return ib

    async def drop(self) -> None:
        """TWS goes away under the client: wait until it has seen the disconnect."""
        assert self.ib is not None
        lost = asyncio.get_running_loop().create_future()
        self.ib.disconnectedEvent += lambda: lost.done() or lost.set_result(True)
        await self.gw.drop_connections()
        await asyncio.wait_for(lost, DEADLINE)


@pytest.fixture
async def session(gw: Gateway) -> AsyncIterator[Session]:
    s = Session(gw)
    await s.connect()
    yield s
    for ib in s.clients:
        ib.disconnect()


def make_venue(
    session: Session, data_dir: Path, clock: ManualClock | None = None, **config: Any
) -> IbkrVenue:
    cfg = IbkrConfig(**{"attempt_timeout_seconds": 0.2, **config})
    return IbkrVenue(
        lambda: session.ib,
        cfg,
        data_dir,
        confirm_timeout_seconds=0.5,
        request_timeout_seconds=DEADLINE,
        now=(clock or ManualClock(1_000.0)).now,
    )


@pytest.fixture
def venue(session: Session, tmp_path: Path) -> IbkrVenue:
    return make_venue(session, tmp_path)


def sell(cid: str, qty: float, limit: float | None, coid: str = "x-1") -> OrderRequest:
    return OrderRequest(coid, cid, "long", "sell", qty, limit)


def buy(cid: str, qty: float, limit: float | None, coid: str = "x-1") -> OrderRequest:
    return OrderRequest(coid, cid, "short", "buy", qty, limit)


CALL_ID = "AAPL 20260116 150C"
PUT_ID = "AAPL 20260116 140P"


# ---- positions ----------------------------------------------------------------------------------


async def test_positions_stock_long_call_short_put(venue: IbkrVenue) -> None:
    got = {p.contract_id: p for p in await venue.positions()}
    assert got == {
        "AAPL": VenuePosition("AAPL", "long", 100, 180.25),
        CALL_ID: VenuePosition(CALL_ID, "long", 3, pytest.approx(1.45)),
        PUT_ID: VenuePosition(PUT_ID, "short", 2, pytest.approx(3.12)),
    }
    contracts = {c.id: c for c in venue.held_contracts()}
    assert set(contracts) == {"AAPL", CALL_ID, PUT_ID}
    assert (contracts["AAPL"].type, contracts["AAPL"].multiplier) == ("stock", 1.0)
    assert (contracts[CALL_ID].type, contracts[CALL_ID].multiplier) == ("option_call", 100.0)
    assert (contracts[PUT_ID].type, contracts[PUT_ID].strike) == ("option_put", 140.0)
    assert contracts[PUT_ID].underlying == "AAPL"


async def test_positions_follow_the_account(
    gw: Gateway, session: Session, venue: IbkrVenue
) -> None:
    ib = session.ib
    assert ib is not None
    pos = gw.state.position_of(CALL.con_id)
    assert pos is not None
    pos.position = 0
    gw.push_position(pos)
    await asyncio.wait_for(ib.positionEvent, DEADLINE)
    assert {p.contract_id for p in await venue.positions()} == {"AAPL", PUT_ID}


async def test_not_connected_is_gateway_unreachable(session: Session, venue: IbkrVenue) -> None:
    await session.drop()
    for call in (venue.positions(), venue.submit(sell(CALL_ID, 1, 1.4)), venue.lookup("x")):
        with pytest.raises(VenueError, match=r"^GATEWAY_UNREACHABLE: "):
            await call
    # the market feed still gets what was last known
    assert venue.held_contracts() == []  # nothing was read before the drop
    session.ib = None
    with pytest.raises(VenueError, match=r"^GATEWAY_UNREACHABLE: "):
        await venue.positions()


# ---- orders -------------------------------------------------------------------------------------


async def test_fill_of_a_long_call(gw: Gateway, venue: IbkrVenue) -> None:
    gw.state.queue_outcome(Fill(price=1.42, commission=1.3))
    res = await venue.submit(sell(CALL_ID, 3, 1.40, "intent-1"))
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("filled", 3, 1.42, 1.3)
    [order] = gw.state.orders
    assert res.venue_order_id == str(order.perm_id)
    assert (order.action, order.total_quantity, order.order_type) == ("SELL", 3, "LMT")
    assert (order.lmt_price, order.tif, order.order_ref) == (1.40, "DAY", "intent-1")
    assert order.account == ACCOUNT
    assert (order.contract.con_id, order.contract.exchange) == (CALL.con_id, "SMART")
    assert gw.state.position_of(CALL.con_id).position == 0


async def test_short_put_is_bought_back(gw: Gateway, venue: IbkrVenue) -> None:
    gw.state.queue_outcome(Fill(commission=0.7))
    res = await venue.submit(buy(PUT_ID, 2, 3.05))
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("filled", 2, 3.05, 0.7)
    [order] = gw.state.orders
    assert (order.action, order.contract.con_id, order.lmt_price) == ("BUY", PUT.con_id, 3.05)


async def test_partial_fill_then_the_rest_is_cancelled_at_the_timeout(
    gw: Gateway, venue: IbkrVenue
) -> None:
    gw.state.queue_outcome(Fill(quantity=40, price=185.5, commission=0.35))
    res = await venue.submit(sell("AAPL", 100, 185.5, "intent-2"))
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("partial", 40, 185.5, 0.35)
    [order] = gw.state.orders
    assert order.status == "Cancelled"
    assert order.filled == 40
    assert len(gw.state.requests(IN_CANCEL_ORDER)) == 1
    assert gw.state.position_of(AAPL.con_id).position == 60


async def test_unfilled_order_is_cancelled(gw: Gateway, venue: IbkrVenue) -> None:
    gw.state.queue_outcome(Rest())
    res = await venue.submit(sell(CALL_ID, 3, 1.60))
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("unfilled", 0, None, 0)
    assert res.reason == "CANCELLED: not filled within 0.2s, the rest cancelled"
    assert gw.state.orders[0].status == "Cancelled"


async def test_order_filled_while_waiting(gw: Gateway, session: Session, venue: IbkrVenue) -> None:
    """A resting order that fills within the attempt's time is reported filled, not cancelled."""
    gw.state.queue_outcome(Rest())
    venue._config = IbkrConfig(attempt_timeout_seconds=5.0)
    task = asyncio.create_task(venue.submit(sell(CALL_ID, 3, 1.40)))
    placed = await gw.wait_for_order()
    await gw.wait_until(lambda: placed.status == "Submitted")
    gw.fill_order(placed.order_id, quantity=1, price=1.41, commission=0.5)
    gw.fill_order(placed.order_id, price=1.40, commission=1.0)
    res = await asyncio.wait_for(task, DEADLINE)
    assert (res.status, res.filled_qty, res.fees) == ("filled", 3, 1.5)
    assert res.avg_price == pytest.approx((1.41 + 2 * 1.40) / 3)
    assert gw.state.requests(IN_CANCEL_ORDER) == []


async def test_rejection_201(gw: Gateway, venue: IbkrVenue) -> None:
    text = "Order rejected - reason:The contract is not available for trading"
    gw.state.queue_outcome(Reject(201, text))
    res = await venue.submit(sell(CALL_ID, 3, 1.40))
    assert (res.status, res.filled_qty, res.avg_price) == ("rejected", 0, None)
    assert res.reason == f"REJECTED_201: {text}"


async def test_margin_rejection_is_no_margin(gw: Gateway, venue: IbkrVenue) -> None:
    gw.state.queue_outcome(
        Reject()
    )  # "... EQUITY WITH LOAN VALUE ... MUST EXCEED THE INITIAL MARGIN"
    res = await venue.submit(buy(PUT_ID, 2, 3.05))
    assert res.status == "rejected"
    assert res.reason.startswith("NO_MARGIN: Order rejected - reason:YOUR ORDER IS NOT ACCEPTED")


async def test_read_only_api_is_read_only(gw: Gateway, venue: IbkrVenue) -> None:
    gw.state.read_only_api = True
    res = await venue.submit(sell(CALL_ID, 3, 1.40))
    assert res.status == "rejected"
    assert res.reason.startswith("READ_ONLY: ")
    assert "Read-Only" in res.reason
    assert gw.state.orders == []
    assert gw.state.requests(IN_CANCEL_ORDER) == []


async def test_refused_before_sending(
    gw: Gateway, session: Session, tmp_path: Path, venue: IbkrVenue
) -> None:
    cases = {
        "MID_TOO_LOW: ": sell(CALL_ID, 3, 0.04),
        "NO_LIMIT: ": sell(CALL_ID, 3, None),
        "NOT_HELD: ": sell("AAPL 20260116 200C", 1, 1.0),
        "POSITION_MISMATCH: ": buy(CALL_ID, 3, 1.4),  # held long, not short
    }
    for code, req in cases.items():
        res = await venue.submit(req)
        assert (res.status, res.reason[: len(code)]) == ("rejected", code)
    res = await venue.submit(sell(CALL_ID, 4, 1.40))  # more than held: would open a short
    assert res.reason.startswith("POSITION_MISMATCH: ")
    readonly = make_venue(session, tmp_path, readonly=True)
    res = await readonly.submit(sell(CALL_ID, 3, 1.40))
    assert res.reason.startswith("READ_ONLY: ")
    assert gw.state.requests(IN_PLACE_ORDER) == []


async def test_combo_closes_with_one_bag_order(
    gw: Gateway, session: Session, tmp_path: Path
) -> None:
    """A bull call spread (config group), 2 units bought at 1.20: closed by SELLING the BAG
    {BUY 155C, SELL 165C}; a sold put spread (short at its credit) by BUYING its BAG back."""
    gw.state.add_position(C155, 2, 200.0)
    gw.state.add_position(C165, -2, 80.0)
    p135 = option_contract(700021, "AAPL", "20260116", 135.0, "P")
    gw.state.add_position(p135, 1, 40.0)  # with the short 140P ×2: ratio 1 : −2
    ib = session.ib
    assert ib is not None
    await asyncio.wait_for(ib.reqPositionsAsync(), DEADLINE)
    venue = make_venue(
        session,
        tmp_path,
        groups=[
            IbkrGroupConfig(name="vert-1", legs=["AAPL 20260116 155C", "AAPL 20260116 165C"]),
            IbkrGroupConfig(name="ps-1", legs=["AAPL 20260116 135P", PUT_ID]),
        ],
    )
    got = {p.contract_id: p for p in await venue.positions()}
    assert got["AAPL vert-1"] == VenuePosition("AAPL vert-1", "long", 2, pytest.approx(1.20))
    # +1 135P at 0.40, −2 140P at 3.12: a credit of 5.84, held short with the legs inverted
    assert got["AAPL ps-1"] == VenuePosition("AAPL ps-1", "short", 1, pytest.approx(5.84))
    assert PUT_ID not in got and "AAPL 20260116 155C" not in got
    contracts = {c.id: c for c in venue.held_contracts()}
    assert contracts["AAPL ps-1"].legs == (Leg("AAPL 20260116 135P", -1), Leg(PUT_ID, 2))
    assert (contracts["AAPL ps-1"].type, contracts["AAPL ps-1"].multiplier) == ("combo", 100.0)

    # as TWS reports it: the combo's execution, one per leg, commissions on the legs
    legs = {C155.con_id: 2.05, C165.con_id: 0.70}
    gw.state.queue_outcome(Fill(price=1.35, commission=2.6, leg_prices=legs))
    res = await venue.submit(sell("AAPL vert-1", 2, 1.35, "close-vert"))
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("filled", 2, 1.35, 2.6)
    assert gw.state.position_of(C155.con_id).position == 0
    assert gw.state.position_of(C165.con_id).position == 0
    await gw.wait_until(lambda: C165.con_id not in {p.contract.conId for p in ib.positions()})
    assert "AAPL vert-1" not in {p.contract_id for p in await venue.positions()}
    looked = await venue.lookup("close-vert")
    assert looked is not None
    assert (looked.status, looked.filled_qty, looked.avg_price) == ("filled", 2, 1.35)
    assert looked.fees == pytest.approx(2.6)
    bag = gw.state.orders[-1]
    assert bag.contract.sec_type == "BAG"
    assert [(leg.con_id, leg.ratio, leg.action) for leg in bag.contract.combo_legs] == [
        (C155.con_id, 1, "BUY"),
        (C165.con_id, 1, "SELL"),
    ]
    assert (bag.action, bag.total_quantity, bag.lmt_price, bag.tif) == ("SELL", 2, 1.35, "DAY")
    assert bag.order_ref == "close-vert"

    gw.state.queue_outcome(Fill(price=5.90))
    res = await venue.submit(buy("AAPL ps-1", 1, 5.90, "close-ps"))
    assert (res.status, res.filled_qty, res.avg_price) == ("filled", 1, 5.90)
    bag = gw.state.orders[-1]
    assert [(leg.con_id, leg.ratio, leg.action) for leg in bag.contract.combo_legs] == [
        (p135.con_id, 1, "SELL"),
        (PUT.con_id, 2, "BUY"),
    ]
    assert (bag.action, bag.total_quantity, bag.lmt_price) == ("BUY", 1, 5.90)


async def test_after_our_closing_bag_the_legs_never_show_as_singles(
    gw: Gateway, session: Session, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The BAG order filled; TWS reports the legs' new positions one at a time (here: driven
    by hand, one per poll). The polls in between see the combo partly held: they report
    neither the combo nor its other leg, and the combo's contract stays for the market feed."""
    clock = ManualClock(1_000.0)
    gw.state.add_position(C155, 2, 200.0)
    gw.state.add_position(C165, -2, 80.0)
    ib = session.ib
    assert ib is not None
    await asyncio.wait_for(ib.reqPositionsAsync(), DEADLINE)
    venue = make_venue(
        session,
        tmp_path,
        clock,
        groups=[IbkrGroupConfig(name="vert-1", legs=["AAPL 20260116 155C", "AAPL 20260116 165C"])],
    )
    assert "AAPL vert-1" in {p.contract_id for p in await venue.positions()}
    gw.state.update_positions_on_fill = False  # the test sends the legs' updates itself
    gw.state.queue_outcome(Fill(price=1.35, leg_prices={C155.con_id: 2.05, C165.con_id: 0.70}))
    res = await venue.submit(sell("AAPL vert-1", 2, 1.35, "close-vert"))
    assert (res.status, res.filled_qty) == ("filled", 2)

    async def leg_closed(contract: Any) -> None:
        pos = gw.state.position_of(contract.con_id)
        assert pos is not None
        pos.position = 0
        gw.push_position(pos)
        await asyncio.wait_for(ib.positionEvent, DEADLINE)

    singles = {"AAPL", CALL_ID, PUT_ID}
    caplog.set_level(logging.INFO, logger="engine.venues.ibkr")
    await leg_closed(C165)
    clock.advance(5)
    assert {p.contract_id for p in await venue.positions()} == singles
    assert "AAPL vert-1" in {c.id for c in venue.held_contracts()}
    clock.advance(PARTIAL_GRACE_SECONDS - 10)
    assert {p.contract_id for p in await venue.positions()} == singles
    res = await venue.submit(sell("AAPL vert-1", 2, 1.35, "close-vert-2"))
    assert res.reason.startswith("NOT_HELD: ")  # nothing sent for a combo partly held
    await leg_closed(C155)
    assert {p.contract_id for p in await venue.positions()} == singles
    assert "AAPL vert-1" not in {c.id for c in venue.held_contracts()}
    clock.advance(PARTIAL_GRACE_SECONDS)
    assert {p.contract_id for p in await venue.positions()} == singles
    assert len(gw.state.orders) == 1
    told = [r.getMessage() for r in caplog.records if r.name.startswith("engine.venues.ibkr")]
    assert [m for m in told if "partly held" in m] == [
        "ibkr group AAPL vert-1 partly held (AAPL 20260116 165C not held; our closing order "
        "close-vert was sent): neither it nor its other legs are reported for up to 60s"
    ]
    assert not [m for m in told if "dropped" in m]


def test_submit_runs_in_a_task_at_the_engine() -> None:
    """`submit` waits up to attempt_timeout_seconds: the engine must not await it inline."""
    assert IbkrVenue.resting_orders is True


# ---- unknown outcomes, lookup, idempotency ------------------------------------------------------


async def test_disconnect_while_working_then_lookup_finds_the_fill(
    gw: Gateway, session: Session, venue: IbkrVenue
) -> None:
    """Restart with an exit in flight, at the venue: the connection drops while the order
    works (outcome unknown), it fills at IB meanwhile, the lookup after reconnecting finds it."""
    gw.state.queue_outcome(Rest())
    venue._config = IbkrConfig(attempt_timeout_seconds=30.0)
    task = asyncio.create_task(venue.submit(sell(CALL_ID, 3, 1.40, "intent-9")))
    placed = await gw.wait_for_order()
    await gw.wait_until(lambda: placed.status == "Submitted")
    await session.drop()
    with pytest.raises(VenueError, match=r"^GATEWAY_UNREACHABLE: connection lost"):
        await asyncio.wait_for(task, DEADLINE)
    gw.fill_order(placed.order_id, price=1.41, commission=1.1)  # while nobody listens

    await session.connect()
    res = await venue.lookup("intent-9")
    assert res is not None
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("filled", 3, 1.41, 1.1)
    assert res.venue_order_id == str(placed.perm_id)
    # the engine would not send it again, but if it did: nothing new is placed
    again = await venue.submit(sell(CALL_ID, 3, 1.40, "intent-9"))
    assert (again.status, again.filled_qty, again.avg_price) == ("filled", 3, 1.41)
    assert len(gw.state.orders) == 1


async def test_disconnect_while_working_then_lookup_cancels_it(
    gw: Gateway, session: Session, venue: IbkrVenue
) -> None:
    gw.state.queue_outcome(Fill(quantity=1, price=1.45, commission=0.4))
    venue._config = IbkrConfig(attempt_timeout_seconds=30.0)
    task = asyncio.create_task(venue.submit(sell(CALL_ID, 3, 1.45, "intent-10")))
    placed = await gw.wait_for_order()
    await gw.wait_until(lambda: placed.filled == 1)
    await session.drop()
    with pytest.raises(VenueError, match=r"^GATEWAY_UNREACHABLE: "):
        await asyncio.wait_for(task, DEADLINE)
    assert placed.is_open  # still working at IB

    await session.connect()
    res = await venue.lookup("intent-10")
    assert res is not None
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("partial", 1, 1.45, 0.4)
    assert placed.status == "Cancelled"
    assert len(gw.state.requests(IN_CANCEL_ORDER)) == 1


async def test_no_answer_at_all_is_unknown_then_lookup_settles_it(
    gw: Gateway, venue: IbkrVenue
) -> None:
    gw.state.queue_outcome(Silent())
    gw.state.ignore_cancels = True
    with pytest.raises(VenueError, match=r"^GATEWAY_UNREACHABLE: the cancel .* not confirmed"):
        await venue.submit(sell(CALL_ID, 3, 1.40, "intent-11"))
    with pytest.raises(VenueError, match=r"^GATEWAY_UNREACHABLE: "):
        await venue.lookup("intent-11")  # still working, and the cancel still unanswered
    gw.state.ignore_cancels = False
    res = await venue.lookup("intent-11")
    assert res is not None
    assert (res.status, res.filled_qty) == ("unfilled", 0)
    assert gw.state.orders[0].status == "Cancelled"
    assert len(gw.state.orders) == 1


async def test_lookup_of_an_unknown_order_is_none(gw: Gateway, venue: IbkrVenue) -> None:
    assert await venue.lookup("never-sent") is None
    gw.state.queue_outcome(Fill(commission=0.9))
    await venue.submit(sell(CALL_ID, 3, 1.40, "intent-12"))
    res = await venue.lookup("intent-12")
    assert res is not None
    assert (res.status, res.filled_qty, res.avg_price, res.fees) == ("filled", 3, 1.40, 0.9)
    assert await venue.lookup("never-sent") is None


async def test_submit_of_a_known_order_ref_places_nothing(
    gw: Gateway, session: Session, venue: IbkrVenue
) -> None:
    gw.state.queue_outcome(Fill(quantity=2, price=1.44, commission=0.8))
    first = await venue.submit(sell(CALL_ID, 3, 1.44, "intent-13"))
    assert (first.status, first.filled_qty) == ("partial", 2)
    again = await venue.submit(sell(CALL_ID, 1, 1.44, "intent-13"))
    assert again == first
    assert len(gw.state.requests(IN_PLACE_ORDER)) == 1

    # a new session knows it from TWS (completed orders and executions at connect)
    session.ib and session.ib.disconnect()
    await session.connect()
    again = await venue.submit(sell(CALL_ID, 1, 1.44, "intent-13"))
    assert (again.status, again.filled_qty, again.avg_price, again.fees) == (
        "partial",
        2,
        1.44,
        0.8,
    )
    assert len(gw.state.requests(IN_PLACE_ORDER)) == 1


async def test_a_new_order_ref_after_a_rejection_is_sent(gw: Gateway, venue: IbkrVenue) -> None:
    gw.state.queue_outcome(Reject(201, "Order rejected - reason:No trading permissions"))
    assert (await venue.submit(sell(CALL_ID, 3, 1.4, "a"))).status == "rejected"
    res = await venue.submit(sell(CALL_ID, 3, 1.4, "a-2"))
    assert res.status == "filled"
    assert [o.order_ref for o in gw.state.orders] == ["a", "a-2"]


def test_venue_has_the_protocol(session_free_venue: Callable[[], IbkrVenue]) -> None:
    from engine.venues.base import Venue

    v = session_free_venue()
    assert isinstance(v, Venue)
    assert v.name == "ibkr"


@pytest.fixture
def session_free_venue(tmp_path: Path) -> Callable[[], IbkrVenue]:
    return lambda: IbkrVenue(lambda: None, IbkrConfig(), tmp_path)


# ---- other working orders on the position --------------------------------------------------------


async def test_our_own_order_left_over_from_before_is_cancelled_before_a_close(
    gw: Gateway, venue: IbkrVenue
) -> None:
    """A SELL 3 of ours still working from an earlier session (this client id, an orderRef no
    exit of this process sent) would flip +3 to -3 with the new close: it is cancelled first."""
    old = gw.state.add_foreign_order(
        CALL, "SELL", 3, 1.80, client_id=CLIENT_ID, order_id=90, order_ref="x-before"
    )
    gw.state.queue_outcome(Fill(price=1.42))
    res = await venue.submit(sell(CALL_ID, 3, 1.40, "x-now"))
    assert (res.status, res.filled_qty) == ("filled", 3)
    assert old.status == "Cancelled"
    assert gw.state.position_of(CALL.con_id).position == 0


async def test_another_exit_working_on_the_same_contract_is_counted_not_cancelled(
    gw: Gateway, venue: IbkrVenue
) -> None:
    """Two trades on +3 of one call close at once (2 + 2): the second sends only the 1 not
    already being sold, and leaves the first one's order alone."""
    gw.state.queue_outcome(Rest(), Fill(price=1.45))
    first = asyncio.create_task(venue.submit(sell(CALL_ID, 2, 1.60, "x-a")))
    await gw.wait_for_order()
    second = await venue.submit(sell(CALL_ID, 2, 1.45, "x-b"))
    assert (second.status, second.filled_qty) == ("filled", 1)
    a, b = gw.state.orders
    assert (a.order_ref, a.total_quantity, b.order_ref, b.total_quantity) == ("x-a", 2, "x-b", 1)
    res = await first
    assert res.reason == "CANCELLED: not filled within 0.2s, the rest cancelled"  # its own
    assert gw.state.position_of(CALL.con_id).position == 2
