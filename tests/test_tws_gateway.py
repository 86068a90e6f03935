"""The loopback TWS gateway (tests/tws_gateway.py) against the REAL ib_async client.

Nothing in the client is patched: `IB().connectAsync` runs its whole start-up (handshake,
startApi, positions, open and completed orders, account updates, executions) against the
gateway on 127.0.0.1, and every answer is decoded by ib_async's own decoder. Each wait is on an
event with a deadline; no test sleeps for timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from ib_async import IB, ComboLeg, Contract, LimitOrder, Option, Stock

from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.tws_gateway import (
    ASK_OPTION,
    BID_OPTION,
    Fill,
    Gateway,
    Reject,
    Rest,
    option_contract,
    stock_contract,
    tws_gateway,
)

ACCOUNT = "DU1234567"
AAPL = stock_contract(265598, "AAPL")
CALL = option_contract(700001, "AAPL", "20260116", 150.0, "C")
PUT = option_contract(700002, "AAPL", "20260116", 140.0, "P")
DEADLINE = 2.0


def aapl() -> Stock:
    return Stock("AAPL", "SMART", "USD", conId=AAPL.con_id)


def call_option() -> Option:
    return Option(
        "AAPL", "20260116", 150.0, "C", "SMART", multiplier="100", currency="USD", conId=700001
    )


async def until(ib: IB, predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Wait (on the client's updateEvent, emitted after every packet) until `predicate()`."""

    async def loop() -> Any:
        while not (value := predicate()):
            await ib.updateEvent
        return value

    return await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with tws_gateway(accounts=[ACCOUNT]) as gateway:
        gateway.state.add_position(AAPL, 100, 180.25, market_price=185.0)
        gateway.state.add_position(CALL, -2, 312.0, market_price=1.40)  # sold at 3.12
        yield gateway


@pytest.fixture
async def connect(gw: Gateway) -> AsyncIterator[Callable[..., Any]]:
    clients: list[IB] = []

    async def _connect(client_id: int = 7, readonly: bool = False, **kwargs: Any) -> IB:
        ib = IB()
        clients.append(ib)
        await ib.connectAsync(
            gw.host, gw.port, clientId=client_id, timeout=DEADLINE, readonly=readonly, **kwargs
        )
        return ib

    yield _connect
    for ib in clients:
        ib.disconnect()


# ---- connecting -----------------------------------------------------------------------------


@pytest.mark.parametrize("readonly", [False, True])
async def test_connect_sees_positions_and_portfolio(
    gw: Gateway, connect: Callable[..., Any], readonly: bool
) -> None:
    started = time.monotonic()
    ib = await connect(readonly=readonly)
    assert time.monotonic() - started < 1.0
    assert ib.isConnected()
    assert ib.client.serverVersion() == 178
    assert ib.managedAccounts() == [ACCOUNT]

    positions = {p.contract.conId: p for p in ib.positions()}
    assert positions[AAPL.con_id].position == 100
    assert positions[AAPL.con_id].avgCost == 180.25
    assert positions[AAPL.con_id].contract.secType == "STK"
    opt = positions[CALL.con_id]
    assert opt.account == ACCOUNT
    assert opt.position == -2  # short keeps its sign
    assert opt.avgCost == 312.0  # includes the multiplier
    c = opt.contract
    assert (c.secType, c.lastTradeDateOrContractMonth, c.strike, c.right) == (
        "OPT",
        "20260116",
        150.0,
        "C",
    )
    assert (c.multiplier, c.localSymbol, c.tradingClass) == ("100", "AAPL  260116C00150000", "AAPL")

    items = {p.contract.conId: p for p in ib.portfolio()}
    call = items[CALL.con_id]
    assert call.position == -2
    assert call.marketPrice == 1.40
    assert call.marketValue == pytest.approx(-280.0)
    assert call.averageCost == 312.0
    assert call.unrealizedPNL == pytest.approx(344.0)  # -280 - (-2 × 312)
    assert items[AAPL.con_id].marketValue == 18500.0
    values = {v.tag: v.value for v in ib.accountValues() if not v.modelCode}
    assert values["NetLiquidation"] == "100000.00"

    asked = {r.msg_id for r in gw.state.received}
    assert {71, 61, 6, 76, 7} <= asked
    assert ({5, 99} <= asked) is not readonly  # read-only clients skip the order requests


async def test_ib_insync_version_range_negotiates_176(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    """ib_insync offers v157..176: the gateway answers 176 and encodes for it (faProfile in
    openOrder, no pendingPriceRevision in execDetails)."""
    ib = IB()
    ib.client.MaxClientVersion = 176
    try:
        await ib.connectAsync(gw.host, gw.port, clientId=3, timeout=DEADLINE)
        assert ib.client.serverVersion() == 176
        assert gw.state.handshakes[-1] == ("v157..176", 176)
        trade = ib.placeOrder(aapl(), LimitOrder("SELL", 10, 185.5, orderRef="x-176"))
        await asyncio.wait_for(trade.filledEvent, DEADLINE)
        await until(ib, lambda: trade.fills and trade.fills[0].commissionReport.commission)
        assert trade.fills[0].execution.orderRef == "x-176"
        cd = await ib.reqContractDetailsAsync(aapl())
        assert cd == []  # none registered: error 200 ends the request
    finally:
        ib.disconnect()


async def test_client_id_in_use_is_refused(gw: Gateway, connect: Callable[..., Any]) -> None:
    await connect(client_id=5)
    other = IB()
    errors: list[int] = []
    other.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    # TWS answers 326 and closes; ib_async only gives up when its own timeout runs out
    with pytest.raises((ConnectionError, asyncio.TimeoutError)):
        await other.connectAsync(gw.host, gw.port, clientId=5, timeout=0.3)
    assert errors == [326]


# ---- market data ----------------------------------------------------------------------------


async def test_market_data_quotes_and_model_greeks(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    ib = await connect()
    ib.reqMarketDataType(1)
    ticker = ib.reqMktData(call_option(), "", False, False)
    request = await gw.wait_for_mkt_data(CALL.con_id)
    assert request.contract.sec_type == "OPT"
    assert (request.contract.strike, request.contract.right) == (150.0, "C")
    assert request.req_id in ib.wrapper.reqId2Ticker

    gw.quote(CALL.con_id, bid=1.35, ask=1.45, last=1.40, bid_size=12, ask_size=7)
    gw.option_computation(
        CALL.con_id,
        implied_vol=0.31,
        delta=0.42,
        opt_price=1.41,
        gamma=0.05,
        vega=0.12,
        theta=-0.03,
        und_price=148.2,
    )
    gw.option_computation(CALL.con_id, BID_OPTION, implied_vol=0.30, delta=0.41, opt_price=1.35)
    gw.option_computation(CALL.con_id, ASK_OPTION, implied_vol=0.32, delta=0.43, opt_price=1.45)
    await until(ib, lambda: ticker.modelGreeks and ticker.askGreeks)

    assert (ticker.bid, ticker.ask, ticker.last) == (1.35, 1.45, 1.40)
    assert (ticker.bidSize, ticker.askSize) == (12, 7)
    g = ticker.modelGreeks
    assert (g.impliedVol, g.delta, g.optPrice, g.undPrice) == (0.31, 0.42, 1.41, 148.2)
    assert (g.gamma, g.vega, g.theta) == (0.05, 0.12, -0.03)
    assert ticker.bidGreeks.impliedVol == 0.30
    assert ticker.askGreeks.delta == 0.43

    gw.quote(CALL.con_id, bid=1.30)
    await until(ib, lambda: ticker.bid == 1.30)
    ib.cancelMktData(ticker.contract)
    await gw.wait_until(lambda: gw._subscription(CALL.con_id) is None)


async def test_delayed_market_data_when_not_subscribed(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    gw.state.no_market_data.add(AAPL.con_id)
    ib = await connect()
    errors: list[tuple[int, int]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code))

    live = ib.reqMktData(aapl())
    await until(ib, lambda: errors)
    assert errors == [(gw.state.mkt_data[-1].req_id, 354)]

    ib.cancelMktData(aapl())
    ib.reqMarketDataType(3)
    ticker = ib.reqMktData(aapl())
    await until(ib, lambda: len(errors) == 2)
    assert errors[-1][1] == 10167
    assert gw.state.mkt_data[-1].delayed
    gw.quote(AAPL.con_id, bid=184.9, ask=185.1, last=185.0)
    await until(ib, lambda: ticker.last == 185.0)
    assert (ticker.bid, ticker.ask) == (184.9, 185.1)
    assert ticker.marketDataType == 3
    assert {t.tickType for t in ticker.ticks} <= {66, 67, 68}
    assert live is ticker  # one ticker per contract in ib_async


async def test_contract_details_and_option_chain(gw: Gateway, connect: Callable[..., Any]) -> None:
    gw.state.add_contract_details(AAPL, long_name="APPLE INC", industry="Technology")
    gw.state.add_contract_details(CALL, under_con_id=AAPL.con_id, min_tick=0.01)
    gw.state.add_contract_details(PUT, under_con_id=AAPL.con_id)
    gw.state.add_option_chain(AAPL.con_id, "AAPL", ["20260116", "20260220"], [140.0, 150.0, 160.0])
    ib = await connect()

    [by_id] = await ib.reqContractDetailsAsync(Contract(conId=CALL.con_id))
    assert by_id.contract.conId == CALL.con_id
    assert (by_id.contract.strike, by_id.contract.right, by_id.contract.multiplier) == (
        150.0,
        "C",
        "100",
    )
    assert by_id.underConId == AAPL.con_id
    assert by_id.contract.lastTradeDateOrContractMonth == "20260116"

    [stock] = await ib.reqContractDetailsAsync(Stock("AAPL", "SMART", "USD"))
    assert stock.longName == "APPLE INC"
    assert stock.contract.conId == AAPL.con_id

    options = await ib.reqContractDetailsAsync(Option("AAPL", "20260116", exchange="SMART"))
    assert {d.contract.conId for d in options} == {CALL.con_id, PUT.con_id}

    [qualified] = await ib.qualifyContractsAsync(Option(conId=PUT.con_id))
    assert qualified.localSymbol == "AAPL  260116P00140000"

    [chain] = await ib.reqSecDefOptParamsAsync("AAPL", "", "STK", AAPL.con_id)
    assert int(chain.underlyingConId) == AAPL.con_id  # ib_async leaves it a string
    assert chain.expirations == ["20260116", "20260220"]
    assert chain.strikes == [140.0, 150.0, 160.0]
    assert chain.multiplier == "100"


# ---- orders ---------------------------------------------------------------------------------


async def test_limit_order_fills_with_commission(gw: Gateway, connect: Callable[..., Any]) -> None:
    ib = await connect()
    commissions: list[float] = []
    ib.commissionReportEvent += lambda trade, fill, report: commissions.append(report.commission)
    order = LimitOrder("BUY", 2, 1.45, orderRef="intent-1", tif="IOC")
    trade = ib.placeOrder(call_option(), order)
    await asyncio.wait_for(trade.filledEvent, DEADLINE)
    await until(ib, lambda: commissions)

    placed = gw.state.order(order.orderId)
    assert (placed.action, placed.total_quantity, placed.order_type) == ("BUY", 2, "LMT")
    assert (placed.lmt_price, placed.tif, placed.order_ref) == (1.45, "IOC", "intent-1")
    assert placed.contract.con_id == CALL.con_id
    assert (placed.contract.expiry, placed.contract.strike, placed.contract.right) == (
        "20260116",
        150.0,
        "C",
    )
    assert placed.client_id == 7

    assert trade.orderStatus.status == "Filled"
    assert trade.orderStatus.filled == 2
    assert trade.orderStatus.avgFillPrice == 1.45
    assert trade.order.permId == placed.perm_id
    [fill] = trade.fills
    assert fill.execution.side == "BOT"
    assert fill.execution.shares == 2
    assert fill.execution.price == 1.45
    assert fill.execution.orderRef == "intent-1"
    assert fill.commissionReport.commission == 1.0
    assert commissions == [1.0]

    # the short call is bought back: the position (pushed live) is flat, realized P&L booked
    await until(ib, lambda: CALL.con_id not in {p.contract.conId for p in ib.positions()})
    assert gw.state.position_of(CALL.con_id).position == 0
    assert fill.commissionReport.realizedPNL == pytest.approx(2 * (312.0 - 145.0) - 1.0)


async def test_partial_fill_then_cancel(gw: Gateway, connect: Callable[..., Any]) -> None:
    gw.state.queue_outcome(Fill(quantity=30, price=185.5, commission=0.35))
    ib = await connect()
    trade = ib.placeOrder(aapl(), LimitOrder("SELL", 100, 185.5, orderRef="intent-2"))
    await until(ib, lambda: trade.fills and trade.fills[0].commissionReport.commission)
    assert trade.orderStatus.status == "Submitted"
    assert (trade.orderStatus.filled, trade.orderStatus.remaining) == (30, 70)
    assert trade.isActive()

    ib.cancelOrder(trade.order)
    await asyncio.wait_for(trade.cancelledEvent, DEADLINE)
    await until(ib, lambda: gw.state.order(trade.order.orderId).status == "Cancelled")
    assert trade.orderStatus.status == "Cancelled"
    assert trade.filled() == 30
    assert trade.fills[0].commissionReport.commission == 0.35
    assert gw.state.position_of(AAPL.con_id).position == 70
    assert [r.msg_id for r in gw.state.requests(4)] == [4]


async def test_ioc_rest_is_cancelled_after_partial_fill(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    gw.state.order_hook = lambda order: Fill(quantity=1) if order.tif == "IOC" else None
    ib = await connect()
    trade = ib.placeOrder(call_option(), LimitOrder("BUY", 2, 1.40, tif="IOC"))
    await asyncio.wait_for(trade.cancelledEvent, DEADLINE)
    assert trade.orderStatus.status == "Cancelled"
    assert trade.filled() == 1
    assert [f.execution.shares for f in trade.fills] == [1]


async def test_rejection_201_reaches_error_event_and_trade_log(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    gw.state.queue_outcome(Reject(201, "Order rejected - reason:Not enough margin"))
    ib = await connect()
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    trade = ib.placeOrder(aapl(), LimitOrder("BUY", 1000, 185.0, orderRef="intent-3"))
    await asyncio.wait_for(trade.cancelledEvent, DEADLINE)
    assert errors == [(trade.order.orderId, 201, "Order rejected - reason:Not enough margin")]
    assert trade.orderStatus.status == "Cancelled"
    assert trade.log[-1].errorCode == 201
    assert "Not enough margin" in trade.log[-1].message
    assert trade.fills == []


async def test_resting_order_filled_later_by_the_test(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    gw.state.default_outcome = Rest()
    ib = await connect()
    trade = ib.placeOrder(aapl(), LimitOrder("SELL", 10, 190.0, orderRef="resting"))
    placed = await gw.wait_for_order()
    await until(ib, lambda: trade.orderStatus.status == "Submitted")
    gw.fill_order(placed.order_id, price=190.05)
    await asyncio.wait_for(trade.filledEvent, DEADLINE)
    assert trade.orderStatus.avgFillPrice == 190.05


@pytest.mark.parametrize("server_version", [178, 176])
async def test_executions_and_open_orders_after_reconnect(
    gw: Gateway, connect: Callable[..., Any], server_version: int
) -> None:
    gw.state.server_version = server_version  # 176: the encodings ib_insync's range gets
    ib = await connect(client_id=9)
    assert ib.client.serverVersion() == server_version
    filled = ib.placeOrder(aapl(), LimitOrder("SELL", 5, 185.5, orderRef="intent-4"))
    await asyncio.wait_for(filled.filledEvent, DEADLINE)
    gw.state.queue_outcome(Rest())
    resting = ib.placeOrder(aapl(), LimitOrder("SELL", 5, 199.0, orderRef="intent-5"))
    await until(ib, lambda: resting.orderStatus.status == "Submitted")
    ib.disconnect()

    again = await connect(client_id=9)  # connectAsync itself asks for executions and orders
    refs = {f.execution.orderRef: f for f in again.fills()}
    assert set(refs) == {"intent-4"}
    assert refs["intent-4"].execution.shares == 5
    assert refs["intent-4"].commissionReport.commission == 1.0
    fills = await again.reqExecutionsAsync()
    assert [f.execution.orderRef for f in fills] == ["intent-4"]
    assert fills[0].execution.execId == refs["intent-4"].execution.execId

    [open_trade] = again.openTrades()
    assert open_trade.order.orderRef == "intent-5"
    assert open_trade.order.lmtPrice == 199.0
    assert open_trade.orderStatus.status == "Submitted"
    opened = await again.reqOpenOrdersAsync()
    assert [t.order.orderRef for t in opened] == ["intent-5"]
    completed = await again.reqCompletedOrdersAsync(False)
    assert [(t.order.orderRef, t.orderStatus.status) for t in completed] == [("intent-4", "Filled")]
    # the new session's order ids continue after the old ones
    assert again.client.getReqId() > resting.order.orderId


async def test_combo_order_legs_are_parsed(gw: Gateway, connect: Callable[..., Any]) -> None:
    gw.state.default_outcome = Rest()
    ib = await connect()
    bag = Contract(
        symbol="AAPL",
        secType="BAG",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=CALL.con_id, ratio=1, action="SELL", exchange="SMART"),
            ComboLeg(conId=PUT.con_id, ratio=2, action="BUY", exchange="SMART"),
        ],
    )
    trade = ib.placeOrder(bag, LimitOrder("BUY", 3, -0.25, orderRef="spread-1"))
    placed = await gw.wait_for_order()
    assert placed.contract.sec_type == "BAG"
    assert [(leg.con_id, leg.ratio, leg.action) for leg in placed.contract.combo_legs] == [
        (CALL.con_id, 1, "SELL"),
        (PUT.con_id, 2, "BUY"),
    ]
    assert (placed.total_quantity, placed.lmt_price, placed.order_ref) == (3, -0.25, "spread-1")
    await until(ib, lambda: trade.orderStatus.status == "Submitted")
    gw.fill_order(placed.order_id, price=-0.25)
    await asyncio.wait_for(trade.filledEvent, DEADLINE)
    assert trade.fills[0].contract.secType == "BAG"


async def test_read_only_api_refuses_orders(gw: Gateway, connect: Callable[..., Any]) -> None:
    gw.state.read_only_api = True
    ib = await connect()
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    trade = ib.placeOrder(aapl(), LimitOrder("SELL", 1, 185.0))
    await until(ib, lambda: errors)
    assert errors == [321]
    assert trade.orderStatus.status == "ValidationError"  # ib_async counts 321 as a warning
    assert gw.state.orders == []


# ---- errors and connection faults -----------------------------------------------------------


async def test_error_codes_reach_error_event(gw: Gateway, connect: Callable[..., Any]) -> None:
    ib = await connect()
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    gw.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    gw.send_error(1101, "Connectivity between IB and TWS has been restored- data lost.")
    gw.send_error(2104, "Market data farm connection is OK:usfarm")
    await until(ib, lambda: len(errors) == 3)
    assert [code for _, code, _ in errors] == [1100, 1101, 2104]
    assert errors[1] == (-1, 1101, "Connectivity between IB and TWS has been restored- data lost.")
    assert ib.isConnected()


async def test_drop_refuse_and_restart_on_same_port(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    ib = await connect()
    port = gw.port
    lost = asyncio.get_running_loop().create_future()
    ib.disconnectedEvent += lambda: lost.done() or lost.set_result(True)
    await gw.stop_listening(drop_connections=True)
    await asyncio.wait_for(lost, DEADLINE)
    assert not ib.isConnected()

    with pytest.raises(ConnectionRefusedError):
        await IB().connectAsync(gw.host, port, clientId=7, timeout=DEADLINE)

    await gw.start_listening()
    assert gw.port == port
    again = await connect()
    assert again.isConnected()
    assert {p.contract.conId for p in again.positions()} == {AAPL.con_id, CALL.con_id}


async def test_abrupt_drop_fires_disconnected_event(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    ib = await connect()
    lost = asyncio.get_running_loop().create_future()
    ib.disconnectedEvent += lambda: lost.done() or lost.set_result(True)
    await gw.drop_connections()
    await asyncio.wait_for(lost, DEADLINE)
    assert not ib.isConnected()


async def test_pacing_meter_counts_messages_per_second(
    gw: Gateway, connect: Callable[..., Any]
) -> None:
    ib = await connect()
    before = len(gw.state.received)
    gw.state.pacing_limit = 50
    for _ in range(20):
        ib.client.reqCurrentTime()
    await gw.wait_until(lambda: len(gw.state.received) >= before + 20)
    assert gw.state.max_rate(1.0, client_id=7) >= 20
    assert gw.state.max_rate(1.0, client_id=7) <= 45  # the client throttles itself at 45/s
    assert gw.state.pacing_violations == 0

    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    gw.state.pacing_limit = 10
    ib.client.reqCurrentTime()
    await until(ib, lambda: errors)
    assert errors == [100]
    assert gw.state.pacing_violations == 1
