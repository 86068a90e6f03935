"""A loopback TWS / IB Gateway for tests: the real TWS socket protocol on 127.0.0.1.

It speaks what the API client libraries (ib_async 2.x, ib_insync 0.9.x) speak, so a test connects
the REAL `IB().connectAsync("127.0.0.1", gateway.port, clientId)` to it:

- handshake: the client sends ``b"API\\0"`` and one framed ``"v<min>..<max>[ options]"``; the
  gateway negotiates ``min(server_version, client max)`` (178 with ib_async, 176 with ib_insync)
  and answers one framed message ``serverVersion\\0connTime\\0``;
- framing: every message is a 4-byte big-endian length, then NUL-terminated fields;
- startApi ``[71, 2, clientId, optCapab]`` → nextValidId, managedAccounts, the data-farm notices
  (2104/2106/2158); a clientId already connected → error 326 and the socket closed;
- everything `IB.connectAsync` sends is answered (positions, open and completed orders, account
  updates, account-updates-multi, executions), so the client is synchronised in milliseconds.

The gateway does not import any client library: it encodes each message by the field order of
ib_async's ``decoder.py`` for the negotiated server version (one encoder per message type, the
decoder's field list in its comment) and parses the client's requests by ``client.py``.

A test sets up the world through ``gateway.state`` (account, positions, contract details, option
chains, the outcome of each order), pushes market data and errors through ``gateway`` methods,
and reads what the client sent in ``gateway.state.received`` (each with its monotonic arrival
time: the pacing meter), ``gateway.state.orders``, ``gateway.state.mkt_data``:

    async with tws_gateway() as gw:
        gw.state.add_position(option_contract(1001, "AAPL", "20260116", 150.0, "C"), -2, 312.0,
                              market_price=1.40)
        gw.state.queue_outcome(Fill(quantity=1))            # the next order fills 1, rests
        ib = await IB().connectAsync("127.0.0.1", gw.port, clientId=7)
        ticker = ib.reqMktData(Option(conId=1001, ...))
        req = await gw.wait_for_mkt_data(1001)
        gw.quote(1001, bid=1.35, ask=1.45, last=1.40)
        gw.option_computation(1001, implied_vol=0.31, delta=-0.42, opt_price=1.40, und_price=148.2)
        gw.send_error(1101, "Connectivity between IB and TWS has been restored - data lost.")
        await gw.drop_connections()                           # the client sees a disconnect
        await gw.stop_listening(); await gw.start_listening()  # refused, then back on the port

What it does not do: market depth, historical data, news, scanners, PnL subscriptions, order
conditions/algos, what-if orders (all recorded in ``received`` and otherwise ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

HOST = "127.0.0.1"
MIN_SERVER_VERSION = 157  # the lowest version the encoders below know
MAX_SERVER_VERSION = 178  # ib_async 2.1.0's MaxClientVersion
UNSET_DOUBLE = "1.7976931348623157E308"  # what TWS sends for an unset double
UNSET_INTEGER = "2147483647"
BAG_CON_ID = 28812380  # TWS gives every combo contract this conId

# Incoming (client → gateway) message ids.
IN_REQ_MKT_DATA = 1
IN_CANCEL_MKT_DATA = 2
IN_PLACE_ORDER = 3
IN_CANCEL_ORDER = 4
IN_REQ_OPEN_ORDERS = 5
IN_REQ_ACCOUNT_UPDATES = 6
IN_REQ_EXECUTIONS = 7
IN_REQ_IDS = 8
IN_REQ_CONTRACT_DETAILS = 9
IN_REQ_HISTORICAL_DATA = 20
IN_REQ_AUTO_OPEN_ORDERS = 15
IN_REQ_ALL_OPEN_ORDERS = 16
IN_REQ_MANAGED_ACCTS = 17
IN_REQ_CURRENT_TIME = 49
IN_REQ_GLOBAL_CANCEL = 58
IN_REQ_MARKET_DATA_TYPE = 59
IN_REQ_POSITIONS = 61
IN_REQ_ACCOUNT_SUMMARY = 62
IN_CANCEL_ACCOUNT_SUMMARY = 63
IN_CANCEL_POSITIONS = 64
IN_START_API = 71
IN_REQ_ACCOUNT_UPDATES_MULTI = 76
IN_CANCEL_ACCOUNT_UPDATES_MULTI = 77
IN_REQ_SEC_DEF_OPT_PARAMS = 78
IN_REQ_COMPLETED_ORDERS = 99

# Tick types.
BID, ASK, LAST = 1, 2, 4
BID_SIZE, ASK_SIZE, LAST_SIZE = 0, 3, 5
DELAYED_BID, DELAYED_ASK, DELAYED_LAST = 66, 67, 68
DELAYED_BID_SIZE, DELAYED_ASK_SIZE, DELAYED_LAST_SIZE = 69, 70, 71
BID_OPTION, ASK_OPTION, LAST_OPTION, MODEL_OPTION = 10, 11, 12, 13
DELAYED_MODEL_OPTION = 83
_DELAYED = {BID: DELAYED_BID, ASK: DELAYED_ASK, LAST: DELAYED_LAST}
_DELAYED.update({BID_SIZE: DELAYED_BID_SIZE, ASK_SIZE: DELAYED_ASK_SIZE})
_DELAYED.update({LAST_SIZE: DELAYED_LAST_SIZE, BID_OPTION: 80, ASK_OPTION: 81})
_DELAYED.update({LAST_OPTION: 82, MODEL_OPTION: DELAYED_MODEL_OPTION})

DONE_STATES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

DEFAULT_NOTICES: tuple[tuple[int, str], ...] = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)

# TWS's data-farm notices (error events with reqId -1), by code; `{farm}` is the farm's name.
FARM_NOTICES: dict[int, str] = {
    2103: "Market data farm connection is broken:{farm}",
    2104: "Market data farm connection is OK:{farm}",
    2105: "HMDS data farm connection is broken:{farm}",
    2106: "HMDS data farm connection is OK:{farm}",
    2157: "Sec-def data farm connection is broken:{farm}",
    2158: "Sec-def data farm connection is OK:{farm}",
}


# ---- the scenario's data ----------------------------------------------------------------------


@dataclass
class GwComboLeg:
    con_id: int
    ratio: int
    action: str  # BUY / SELL
    exchange: str = "SMART"
    open_close: int = 0
    short_sale_slot: int = 0
    designated_location: str = ""
    exempt_code: int = -1


@dataclass
class GwContract:
    """A contract as the wire carries it (the client's 12 contract fields)."""

    con_id: int
    symbol: str
    sec_type: str = "STK"
    expiry: str = ""  # lastTradeDateOrContractMonth, YYYYMMDD
    strike: float = 0.0
    right: str = ""  # C / P
    multiplier: str = ""
    exchange: str = ""
    primary_exchange: str = ""
    currency: str = "USD"
    local_symbol: str = ""
    trading_class: str = ""
    combo_legs: list[GwComboLeg] = field(default_factory=list)

    @property
    def mult(self) -> float:
        try:
            return float(self.multiplier) if self.multiplier else 1.0
        except ValueError:
            return 1.0


def stock_contract(
    con_id: int, symbol: str, primary_exchange: str = "NASDAQ", currency: str = "USD"
) -> GwContract:
    return GwContract(
        con_id,
        symbol,
        "STK",
        primary_exchange=primary_exchange,
        currency=currency,
        local_symbol=symbol,
        trading_class="NMS" if primary_exchange == "NASDAQ" else symbol,
    )


def option_contract(
    con_id: int,
    symbol: str,
    expiry: str,
    strike: float,
    right: str,
    multiplier: str = "100",
    trading_class: str | None = None,
    currency: str = "USD",
) -> GwContract:
    """An equity option; its localSymbol is the OCC one ("AAPL  260116C00150000")."""
    occ = f"{symbol:<6}{expiry[2:]}{right}{round(strike * 1000):08d}"
    return GwContract(
        con_id,
        symbol,
        "OPT",
        expiry,
        strike,
        right,
        multiplier,
        currency=currency,
        local_symbol=occ,
        trading_class=trading_class or symbol,
    )


@dataclass
class GwPosition:
    """A position; `avg_cost` is per unit INCLUDING the multiplier (an option bought at 1.50 with
    multiplier 100 has avg_cost 150.0), as TWS reports it. The portfolio fields default to the
    values TWS would compute from `market_price`."""

    account: str
    contract: GwContract
    position: float  # signed: short is negative
    avg_cost: float
    market_price: float = 0.0
    market_value: float | None = None
    unrealized_pnl: float | None = None
    realized_pnl: float = 0.0

    @property
    def portfolio_market_value(self) -> float:
        if self.market_value is not None:
            return self.market_value
        return self.position * self.market_price * self.contract.mult

    @property
    def portfolio_unrealized_pnl(self) -> float:
        if self.unrealized_pnl is not None:
            return self.unrealized_pnl
        return self.portfolio_market_value - self.position * self.avg_cost


@dataclass
class GwContractDetails:
    contract: GwContract
    market_name: str = ""
    min_tick: float = 0.01
    order_types: str = "LMT,MKT,STP"
    valid_exchanges: str = "SMART,CBOE,AMEX,ISE"
    price_magnifier: int = 1
    under_con_id: int = 0
    long_name: str = ""
    contract_month: str = ""
    industry: str = ""
    category: str = ""
    subcategory: str = ""
    time_zone_id: str = "US/Eastern"
    trading_hours: str = ""
    liquid_hours: str = ""
    under_symbol: str = ""
    under_sec_type: str = ""
    market_rule_ids: str = ""
    real_expiration_date: str = ""
    stock_type: str = ""
    min_size: float = 1.0
    size_increment: float = 1.0
    suggested_size_increment: float = 1.0


@dataclass
class GwOptionChain:
    under_con_id: int
    symbol: str
    exchange: str = "SMART"
    trading_class: str = ""
    multiplier: str = "100"
    expirations: list[str] = field(default_factory=list)
    strikes: list[float] = field(default_factory=list)


# ---- order outcomes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fill:
    """Fill `quantity` (None: all that remains) at `price` (None: the order's limit, else the
    last price the gateway quoted). An IOC/FOK order's unfilled rest is then cancelled; a DAY/GTC
    order keeps resting with the remainder."""

    quantity: float | None = None
    price: float | None = None
    commission: float = 1.0
    exchange: str = "ISLAND"
    # A BAG order: {leg conId: price} adds one execution per leg (shares = quantity × ratio, the
    # combo's permId and orderRef), books the legs' positions, and charges `commission` on the
    # legs (split evenly; the combo's own execution then has no commission report), as TWS does.
    leg_prices: dict[int, float] | None = None


@dataclass(frozen=True)
class Rest:
    """Accept the order and leave it working, unfilled (status Submitted)."""

    status: str = "Submitted"


@dataclass(frozen=True)
class Reject:
    """TWS refuses the order: one error message with the orderId as its reqId (201 by default),
    optionally followed by an orderStatus (e.g. "Inactive" or "Cancelled")."""

    code: int = 201
    message: str = "Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION YOUR EQUITY WITH LOAN VALUE [0.00 USD] MUST EXCEED THE INITIAL MARGIN [1000.00 USD]"
    advanced_json: str = ""
    status_after: str | None = None


@dataclass(frozen=True)
class Silent:
    """Swallow the order: no answer at all (a test of the client's timeout handling)."""


Outcome = Fill | Rest | Reject | Silent


@dataclass
class GwOrder:
    """An order the client placed (the fields of placeOrder the gateway reads) and its state."""

    order_id: int
    client_id: int
    perm_id: int
    contract: GwContract
    action: str
    total_quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    account: str
    order_ref: str
    transmit: bool
    outside_rth: bool
    order_combo_leg_prices: list[float | None] = field(default_factory=list)
    smart_combo_routing_params: list[tuple[str, str]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    status: str = "PendingSubmit"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    modifications: int = 0

    @property
    def remaining(self) -> float:
        return max(self.total_quantity - self.filled, 0.0)

    @property
    def is_open(self) -> bool:
        return self.status not in DONE_STATES


@dataclass
class GwExecution:
    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    contract: GwContract
    time: str  # "YYYYmmdd HH:MM:SS UTC"
    account: str
    exchange: str
    side: str  # BOT / SLD
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    order_ref: str
    commission: float
    currency: str
    realized_pnl: float | None  # None: unset (an opening fill)


@dataclass
class MktDataRequest:
    req_id: int
    client_id: int
    contract: GwContract
    generic_ticks: str
    snapshot: bool
    delayed: bool  # answered with delayed ticks (66/67/68…) instead of live ones
    conn: _Connection = field(repr=False)
    cancelled: bool = False


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    conn_id: int
    client_id: int
    msg_id: int
    fields: tuple[str, ...]


@dataclass
class GatewayState:
    """The world the gateway shows; tests mutate it directly."""

    accounts: list[str] = field(default_factory=lambda: ["DU1234567"])
    server_version: int = MAX_SERVER_VERSION
    next_valid_id: int = 1
    positions: list[GwPosition] = field(default_factory=list)
    account_values: list[tuple[str, str, str]] = field(
        default_factory=lambda: [
            ("NetLiquidation", "100000.00", "USD"),
            ("TotalCashValue", "50000.00", "USD"),
            ("BuyingPower", "200000.00", "USD"),
            ("AccountType", "INDIVIDUAL", ""),
        ]
    )
    contract_details: list[GwContractDetails] = field(default_factory=list)
    option_chains: list[GwOptionChain] = field(default_factory=list)
    connect_notices: tuple[tuple[int, str], ...] = DEFAULT_NOTICES
    # conIds the account has no live market data subscription for: reqMktData answers 354, or
    # 10167 and delayed ticks when the client asked for delayed data (reqMarketDataType 3/4).
    no_market_data: set[int] = field(default_factory=set)
    # the outcome of each order: queued outcomes first, then `order_hook`, then `default_outcome`
    outcomes: list[Outcome] = field(default_factory=list)
    order_hook: Callable[[GwOrder], Outcome | None] | None = None
    default_outcome: Outcome = field(default_factory=Fill)
    cancel_sends_202: bool = True  # TWS's "Order Canceled - reason:" before status Cancelled
    ignore_cancels: bool = False  # cancelOrder is swallowed: no answer (TWS not answering)
    update_positions_on_fill: bool = True
    read_only_api: bool = False  # placeOrder → error 321, as TWS in read-only API mode
    pacing_limit: int | None = None  # messages/s; over it → error 100 (None: only counted)
    hang_handshake: bool = False  # accept TCP, never answer the handshake
    # what the clients did
    received: list[Received] = field(default_factory=list)
    orders: list[GwOrder] = field(default_factory=list)
    executions: list[GwExecution] = field(default_factory=list)
    mkt_data: list[MktDataRequest] = field(default_factory=list)
    handshakes: list[tuple[str, int]] = field(default_factory=list)  # (client's "v..", version)
    pacing_violations: int = 0
    quotes: dict[int, dict[int, tuple[float, float]]] = field(default_factory=dict)
    greeks: dict[int, dict[int, tuple[float | None, ...]]] = field(default_factory=dict)
    # 1-minute bars per conId for reqHistoricalData: (bar start, Unix s; open, high, low, close);
    # a conId without bars is answered with error 162 (HMDS returned no data), as TWS does.
    minute_bars: dict[int, list[tuple[int, float, float, float, float]]] = field(
        default_factory=dict
    )
    now: Callable[[], float] = time.time  # the end of a historical request for "" (now)
    _perm_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1_900_000_001))
    _exec_seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def account(self) -> str:
        return self.accounts[0]

    # ---- set-up -------------------------------------------------------------------------

    def add_position(
        self,
        contract: GwContract,
        position: float,
        avg_cost: float,
        *,
        market_price: float = 0.0,
        account: str | None = None,
        **portfolio: Any,
    ) -> GwPosition:
        pos = GwPosition(
            account or self.account, contract, position, avg_cost, market_price, **portfolio
        )
        self.positions.append(pos)
        return pos

    def position_of(self, con_id: int, account: str | None = None) -> GwPosition | None:
        account = account or self.account
        for pos in self.positions:
            if pos.contract.con_id == con_id and pos.account == account:
                return pos
        return None

    def add_contract_details(self, contract: GwContract, **details: Any) -> GwContractDetails:
        cd = GwContractDetails(contract, **details)
        if not cd.market_name:
            cd.market_name = contract.trading_class or contract.symbol
        if not cd.long_name:
            cd.long_name = contract.symbol
        self.contract_details.append(cd)
        return cd

    def add_option_chain(
        self,
        under_con_id: int,
        symbol: str,
        expirations: Sequence[str],
        strikes: Sequence[float],
        **kwargs: Any,
    ) -> GwOptionChain:
        chain = GwOptionChain(
            under_con_id,
            symbol,
            expirations=list(expirations),
            strikes=list(strikes),
            **{"trading_class": symbol, **kwargs},
        )
        self.option_chains.append(chain)
        return chain

    def add_foreign_order(
        self,
        contract: GwContract,
        action: str,
        quantity: float,
        limit: float,
        *,
        client_id: int = 0,
        order_id: int = 0,
        order_ref: str = "",
        tif: str = "GTC",
    ) -> GwOrder:
        """A working limit order placed by someone else: by hand in TWS (client id 0, order id
        0: "unbound" until client 0 asks reqOpenOrders), or by another API client (its client
        id and order id). reqAllOpenOrders lists it to every client, as TWS does; only its
        owner (client 0 for TWS's own, once bound) may cancel it."""
        order = GwOrder(
            order_id=order_id,
            client_id=client_id,
            perm_id=next(self._perm_ids),
            contract=contract,
            action=action,
            total_quantity=quantity,
            order_type="LMT",
            lmt_price=limit,
            aux_price=None,
            tif=tif,
            account=self.account,
            order_ref=order_ref,
            transmit=True,
            outside_rth=False,
            status="Submitted",
        )
        self.orders.append(order)
        return order

    def queue_outcome(self, *outcomes: Outcome) -> None:
        self.outcomes.extend(outcomes)

    # ---- reading --------------------------------------------------------------------------

    def requests(self, msg_id: int) -> list[Received]:
        return [r for r in self.received if r.msg_id == msg_id]

    def order(self, order_id: int, client_id: int | None = None) -> GwOrder:
        for o in reversed(self.orders):
            if o.order_id == order_id and (client_id is None or o.client_id == client_id):
                return o
        raise KeyError(order_id)

    def max_rate(self, window: float = 1.0, client_id: int | None = None) -> int:
        """The pacing meter: the most messages received from clients in any `window` seconds."""
        times = [r.at for r in self.received if client_id is None or r.client_id == client_id]
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best


# ---- wire encoding ----------------------------------------------------------------------------


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def frame(fields: Sequence[Any]) -> bytes:
    body = "".join(_s(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


def _contract_fields(c: GwContract, *, exchange: bool = True, primary: bool = False) -> list:
    """conId, symbol, secType, lastTradeDateOrContractMonth, strike, right, multiplier,
    [exchange | primaryExchange], currency, localSymbol, tradingClass."""
    venue = c.primary_exchange if primary else c.exchange
    out = [c.con_id, c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier]
    if exchange:
        out.append(venue)
    return [*out, c.currency, c.local_symbol, c.trading_class]


def _unset(value: float | None, unset: float) -> float:
    return unset if value is None else value


def enc_error(version: int, req_id: int, code: int, msg: str, advanced: str = "") -> list:
    # decoder.errorMsg: _, _(version 2), reqId, errorCode, errorString,
    #   [>=166: advancedOrderRejectJson]
    out: list = [4, 2, req_id, code, msg]
    if version >= 166:
        out.append(advanced)
    return out


def enc_next_valid_id(order_id: int) -> list:
    # wrap("nextValidId", [int]) skip 2: 9, version 1, orderId
    return [9, 1, order_id]


def enc_managed_accounts(accounts: Sequence[str]) -> list:
    # wrap("managedAccounts", [str]) skip 2: 15, version 1, "acct1,acct2"
    return [15, 1, ",".join(accounts)]


def enc_position(p: GwPosition) -> list:
    # decoder.position: _, _(version 3), account, conId, symbol, secType,
    #   lastTradeDateOrContractMonth, strike, right, multiplier, exchange, currency, localSymbol,
    #   tradingClass, position, avgCost
    return [61, 3, p.account, *_contract_fields(p.contract), p.position, p.avg_cost]


def enc_position_end() -> list:
    # wrap("positionEnd", []) skip 2: 62, version 1
    return [62, 1]


def enc_update_portfolio(p: GwPosition) -> list:
    # decoder.updatePortfolio: _, _(version 8), conId, symbol, secType,
    #   lastTradeDateOrContractMonth, strike, right, multiplier, primaryExchange, currency,
    #   localSymbol, tradingClass, position, marketPrice, marketValue, averageCost,
    #   unrealizedPNL, realizedPNL, accountName
    return [
        7,
        8,
        *_contract_fields(p.contract, primary=True),
        p.position,
        p.market_price,
        p.portfolio_market_value,
        p.avg_cost,
        p.portfolio_unrealized_pnl,
        p.realized_pnl,
        p.account,
    ]


def enc_update_account_value(tag: str, value: str, currency: str, account: str) -> list:
    # wrap("updateAccountValue", [str, str, str, str]) skip 2: 6, version 2, key, value,
    #   currency, accountName
    return [6, 2, tag, value, currency, account]


def enc_update_account_time(hhmm: str) -> list:
    # wrap("updateAccountTime", [str]) skip 2: 8, version 1, timeStamp
    return [8, 1, hhmm]


def enc_account_download_end(account: str) -> list:
    # wrap("accountDownloadEnd", [str]) skip 2: 54, version 1, account
    return [54, 1, account]


def enc_account_update_multi(
    req_id: int, account: str, model: str, tag: str, value: str, ccy: str
) -> list:
    # wrap("accountUpdateMulti", [int, str, str, str, str, str]) skip 2: 73, version 1, reqId,
    #   account, modelCode, key, value, currency
    return [73, 1, req_id, account, model, tag, value, ccy]


def enc_account_update_multi_end(req_id: int) -> list:
    # wrap("accountUpdateMultiEnd", [int]) skip 2: 74, version 1, reqId
    return [74, 1, req_id]


def enc_account_summary(req_id: int, account: str, tag: str, value: str, ccy: str) -> list:
    # wrap("accountSummary", [int, str, str, str, str]) skip 2: 63, version 1, reqId, account,
    #   tag, value, currency
    return [63, 1, req_id, account, tag, value, ccy]


def enc_account_summary_end(req_id: int) -> list:
    # wrap("accountSummaryEnd", [int]) skip 2: 64, version 1, reqId
    return [64, 1, req_id]


def enc_open_order_end() -> list:
    # wrap("openOrderEnd", []) skip 2: 53, version 1
    return [53, 1]


def enc_completed_orders_end() -> list:
    # wrap("completedOrdersEnd", []) skip 1: 102
    return [102]


def enc_exec_details_end(req_id: int) -> list:
    # wrap("execDetailsEnd", [int]) skip 2: 55, version 1, reqId
    return [55, 1, req_id]


def enc_current_time(epoch: int) -> list:
    # wrap("currentTime", [int]) skip 2: 49, version 1, time
    return [49, 1, epoch]


def enc_tick_price(req_id: int, tick_type: int, price: float, size: float, attrib: int) -> list:
    # decoder.priceSizeTick: _, _(version 6), reqId, tickType, price, size, attrMask
    #   (an empty price is dropped by the client)
    return [1, 6, req_id, tick_type, price, size, attrib]


def enc_tick_size(req_id: int, tick_type: int, size: float) -> list:
    # wrap("tickSize", [int, int, float]) skip 2: 2, version 6, reqId, tickType, size
    return [2, 6, req_id, tick_type, size]


def enc_tick_option_computation(
    req_id: int,
    tick_type: int,
    tick_attrib: int,
    implied_vol: float | None,
    delta: float | None,
    opt_price: float | None,
    pv_dividend: float | None,
    gamma: float | None,
    vega: float | None,
    theta: float | None,
    und_price: float | None,
) -> list:
    # decoder.tickOptionComputation (no version field since server 156): 21, reqId, tickType,
    #   tickAttrib (0 return-based, 1 price-based), impliedVol, delta, optPrice, pvDividend,
    #   gamma, vega, theta, undPrice. Unset: -1 (vol, prices, dividend), -2 (greeks).
    return [
        21,
        req_id,
        tick_type,
        tick_attrib,
        _unset(implied_vol, -1.0),
        _unset(delta, -2.0),
        _unset(opt_price, -1.0),
        _unset(pv_dividend, -1.0),
        _unset(gamma, -2.0),
        _unset(vega, -2.0),
        _unset(theta, -2.0),
        _unset(und_price, -1.0),
    ]


def enc_market_data_type(req_id: int, data_type: int) -> list:
    # wrap("marketDataType", [int, int]) skip 2: 58, version 1, reqId, marketDataType
    return [58, 1, req_id, data_type]


def enc_tick_snapshot_end(req_id: int) -> list:
    # wrap("tickSnapshotEnd", [int]) skip 2: 57, version 1, reqId
    return [57, 1, req_id]


def enc_contract_details(version: int, req_id: int, cd: GwContractDetails) -> list:
    # decoder.contractDetails: 10, [<164: version 8], reqId, symbol, secType,
    #   lastTradeDateOrContractMonth, strike, right, exchange, currency, localSymbol, marketName,
    #   tradingClass, conId, minTick, [<164: mdSizeMultiplier], multiplier, orderTypes,
    #   validExchanges, priceMagnifier, underConId, longName, primaryExchange, contractMonth,
    #   industry, category, subcategory, timeZoneId, tradingHours, liquidHours, evRule,
    #   evMultiplier, numSecIds (0), aggGroup, underSymbol, underSecType, marketRuleIds,
    #   realExpirationDate, stockType, [==163: suggestedSizeIncrement],
    #   [>=164: minSize, sizeIncrement, suggestedSizeIncrement]
    c = cd.contract
    out: list = [10]
    if version < 164:
        out.append(8)
    out += [req_id, c.symbol, c.sec_type, c.expiry, c.strike, c.right]
    out += [c.exchange or "SMART", c.currency, c.local_symbol, cd.market_name]
    out += [c.trading_class, c.con_id, cd.min_tick]
    if version < 164:
        out.append(1)
    out += [c.multiplier, cd.order_types, cd.valid_exchanges, cd.price_magnifier]
    out += [cd.under_con_id, cd.long_name, c.primary_exchange, cd.contract_month]
    out += [cd.industry, cd.category, cd.subcategory, cd.time_zone_id]
    out += [cd.trading_hours, cd.liquid_hours, "", "", 0]
    out += ["", cd.under_symbol, cd.under_sec_type, cd.market_rule_ids]
    out += [cd.real_expiration_date, cd.stock_type]
    if version == 163:
        out.append(cd.suggested_size_increment)
    if version >= 164:
        out += [cd.min_size, cd.size_increment, cd.suggested_size_increment]
    return out


def enc_contract_details_end(req_id: int) -> list:
    # wrap("contractDetailsEnd", [int]) skip 2: 52, version 1, reqId
    return [52, 1, req_id]


def enc_sec_def_opt_param(req_id: int, chain: GwOptionChain) -> list:
    # decoder.securityDefinitionOptionParameter: 75, reqId, exchange, underlyingConId,
    #   tradingClass, multiplier, nExpirations, *expirations, nStrikes, *strikes
    return [
        75,
        req_id,
        chain.exchange,
        chain.under_con_id,
        chain.trading_class,
        chain.multiplier,
        len(chain.expirations),
        *chain.expirations,
        len(chain.strikes),
        *chain.strikes,
    ]


def enc_historical_data(
    req_id: int, start: str, end: str, bars: Sequence[tuple[int, float, float, float, float]]
) -> list:
    # decoder.historicalData (server versions before HISTORICAL_DATA_END): 17, reqId,
    #   startDateStr, endDateStr, numBars, bars × (date, open, high, low, close, volume,
    #   average, barCount); formatDate 2 sends each bar's date as Unix seconds
    fields: list = [17, req_id, start, end, len(bars)]
    for ts, o, h, low, c in bars:
        fields += [ts, o, h, low, c, 100, (o + c) / 2, 10]
    return fields


def enc_sec_def_opt_param_end(req_id: int) -> list:
    # wrap("securityDefinitionOptionParameterEnd", [int]) skip 1: 76, reqId
    return [76, req_id]


def enc_order_status(o: GwOrder, why_held: str = "") -> list:
    # wrap("orderStatus", [...]) skip 1 (no version field since server 131): 3, orderId, status,
    #   filled, remaining, avgFillPrice, permId, parentId, lastFillPrice, clientId, whyHeld,
    #   mktCapPrice
    return [
        3,
        o.order_id,
        o.status,
        o.filled,
        o.remaining,
        o.avg_fill_price,
        o.perm_id,
        0,
        o.last_fill_price,
        o.client_id,
        why_held,
        0.0,
    ]


def _combo_leg_fields(c: GwContract) -> list:
    out: list = [len(c.combo_legs)]
    for leg in c.combo_legs:
        out += [leg.con_id, leg.ratio, leg.action, leg.exchange, leg.open_close]
        out += [leg.short_sale_slot, leg.designated_location, leg.exempt_code]
    return out


def _combo_descrip(c: GwContract) -> str:
    return ",".join(
        f"{leg.con_id}|{leg.ratio if leg.action == 'BUY' else -leg.ratio}" for leg in c.combo_legs
    )


def _order_contract(o: GwOrder) -> list:
    # the contract as openOrder/completedOrder carry it: conId, symbol, secType,
    #   lastTradeDateOrContractMonth, strike, right, multiplier, exchange, currency,
    #   localSymbol, tradingClass
    return _contract_fields(o.contract)


def enc_open_order(version: int, o: GwOrder) -> list:
    # decoder.openOrder (no version field): 5, orderId, <contract 11>, action, totalQuantity,
    #   orderType, lmtPrice, auxPrice, tif, ocaGroup, account, openClose, origin, orderRef,
    #   clientId, permId, outsideRth, hidden, discretionaryAmt, goodAfterTime, _(sharesAllocation),
    #   faGroup, faMethod, faPercentage, [<177: faProfile],
    #   modelCode, goodTillDate, rule80A, percentOffset, settlingFirm, shortSaleSlot,
    #   designatedLocation, exemptCode, auctionStrategy, startingPrice, stockRefPrice, delta,
    #   stockRangeLower, stockRangeUpper, displaySize, blockOrder, sweepToFill, allOrNone, minQty,
    #   ocaType, eTradeOnly, firmQuoteOnly, nbboPriceCap, parentId, triggerMethod, volatility,
    #   volatilityType, deltaNeutralOrderType (empty: no delta-neutral block),
    #   deltaNeutralAuxPrice, continuousUpdate, referencePriceType, trailStopPrice,
    #   trailingPercent, basisPoints, basisPointsType, comboLegsDescrip,
    #   numLegs, legs × (conId, ratio, action, exchange, openClose, shortSaleSlot,
    #   designatedLocation, exemptCode), numOrderComboLegs, prices, numSmartComboParams, pairs,
    #   scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement (empty: no scale block),
    #   hedgeType (empty: no hedgeParam), optOutSmartRouting, clearingAccount, clearingIntent,
    #   notHeld, deltaNeutralContractPresent (0), algoStrategy (empty: no params),
    #   solicited, whatIf, status, initMarginBefore, maintMarginBefore, equityWithLoanBefore,
    #   initMarginChange, maintMarginChange, equityWithLoanChange, initMarginAfter,
    #   maintMarginAfter, equityWithLoanAfter, commission, minCommission, maxCommission,
    #   commissionCurrency, warningText, randomizeSize, randomizePrice,
    #   [PEG BENCH: 5 fields], numConditions (0),
    #   adjustedOrderType, triggerPrice, trailStopPrice, lmtPriceOffset, adjustedStopPrice,
    #   adjustedStopLimitPrice, adjustedTrailingAmount, adjustableTrailingUnit,
    #   softDollarTier name, value, displayName, cashQty, dontUseAutoPriceForHedge,
    #   isOmsContainer, discretionaryUpToLimitPrice, usePriceMgmtAlgo,
    #   [>=159: duration], [>=160: postToAts], [>=162: autoCancelParent],
    #   [>=170: minTradeQty, minCompeteSize, competeAgainstBestOffset, midOffsetAtWhole,
    #   midOffsetAtHalf]
    lmt = UNSET_DOUBLE if o.lmt_price is None else o.lmt_price
    aux = UNSET_DOUBLE if o.aux_price is None else o.aux_price
    out: list = [5, o.order_id, *_order_contract(o)]
    out += [o.action, o.total_quantity, o.order_type, lmt, aux, o.tif, "", o.account]
    out += ["O", 0, o.order_ref, o.client_id, o.perm_id, o.outside_rth, False, 0.0, ""]
    out += ["", "", "", ""]
    if version < 177:
        out.append("")
    out += ["", "", "", UNSET_DOUBLE, "", 0, "", -1, 0]
    out += [UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    out += [UNSET_INTEGER, False, False, False, UNSET_INTEGER, 0, False, False]
    out += [UNSET_DOUBLE, 0, 0, UNSET_DOUBLE, UNSET_INTEGER, "", UNSET_DOUBLE]
    out += [0, UNSET_INTEGER, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_INTEGER]
    out += [_combo_descrip(o.contract), *_combo_leg_fields(o.contract)]
    out += [len(o.order_combo_leg_prices)]
    out += [UNSET_DOUBLE if p is None else p for p in o.order_combo_leg_prices]
    out += [len(o.smart_combo_routing_params)]
    for tag, value in o.smart_combo_routing_params:
        out += [tag, value]
    out += [UNSET_INTEGER, UNSET_INTEGER, ""]
    out += ["", False, "", "", False, 0]
    out += [""]
    out += [False, False, o.status, "", "", "", "", "", "", "", "", ""]
    out += [UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, "", "", False, False]
    if o.order_type in {"PEG BENCH", "PEGBENCH"}:
        out += [0, False, 0.0, 0.0, ""]
    out += [0]
    out += ["None", UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    out += [UNSET_DOUBLE, 0, "", "", "", UNSET_DOUBLE, False, False, False, False]
    if version >= 159:
        out.append(UNSET_INTEGER)
    if version >= 160:
        out.append(UNSET_INTEGER)
    if version >= 162:
        out.append(False)
    if version >= 170:
        out += [UNSET_INTEGER, UNSET_INTEGER, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    return out


def enc_completed_order(version: int, o: GwOrder, completed_time: str) -> list:
    # decoder.completedOrder (no version, no orderId, no clientId): 101, <contract 11>, action,
    #   totalQuantity, orderType, lmtPrice, auxPrice, tif, ocaGroup, account, openClose, origin,
    #   orderRef, permId, outsideRth, hidden, discretionaryAmt, goodAfterTime, faGroup, faMethod,
    #   faPercentage, [<177: faProfile], modelCode, goodTillDate, rule80A, percentOffset,
    #   settlingFirm, shortSaleSlot, designatedLocation, exemptCode, startingPrice, stockRefPrice,
    #   delta, stockRangeLower, stockRangeUpper, displaySize, sweepToFill, allOrNone, minQty,
    #   ocaType, triggerMethod, volatility, volatilityType, deltaNeutralOrderType (empty),
    #   deltaNeutralAuxPrice, continuousUpdate, referencePriceType, trailStopPrice,
    #   trailingPercent, comboLegsDescrip, numLegs, legs × 8, numOrderComboLegs, prices,
    #   numSmartComboParams, pairs, scaleInitLevelSize, scaleSubsLevelSize,
    #   scalePriceIncrement (empty), hedgeType (empty), clearingAccount, clearingIntent, notHeld,
    #   deltaNeutralContractPresent (0), algoStrategy (empty), solicited, status, randomizeSize,
    #   randomizePrice, [PEG BENCH: 5], numConditions (0), trailStopPrice, lmtPriceOffset,
    #   cashQty, dontUseAutoPriceForHedge, isOmsContainer, autoCancelDate, filledQuantity,
    #   refFuturesConId, autoCancelParent, shareholder, imbalanceOnly, routeMarketableToBbo,
    #   parentPermId, completedTime, completedStatus,
    #   [>=170: minTradeQty, minCompeteSize, competeAgainstBestOffset, midOffsetAtWhole,
    #   midOffsetAtHalf]
    lmt = UNSET_DOUBLE if o.lmt_price is None else o.lmt_price
    aux = UNSET_DOUBLE if o.aux_price is None else o.aux_price
    out: list = [101, *_order_contract(o)]
    out += [o.action, o.total_quantity, o.order_type, lmt, aux, o.tif, "", o.account]
    out += ["O", 0, o.order_ref, o.perm_id, o.outside_rth, False, 0.0, "", "", "", ""]
    if version < 177:
        out.append("")
    out += ["", "", "", UNSET_DOUBLE, "", 0, "", -1]
    out += [UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    out += [UNSET_INTEGER, False, False, UNSET_INTEGER, 0, 0, UNSET_DOUBLE, UNSET_INTEGER]
    out += ["", UNSET_DOUBLE]
    out += [0, UNSET_INTEGER, UNSET_DOUBLE, UNSET_DOUBLE]
    out += [_combo_descrip(o.contract), *_combo_leg_fields(o.contract)]
    out += [len(o.order_combo_leg_prices)]
    out += [UNSET_DOUBLE if p is None else p for p in o.order_combo_leg_prices]
    out += [len(o.smart_combo_routing_params)]
    for tag, value in o.smart_combo_routing_params:
        out += [tag, value]
    out += [UNSET_INTEGER, UNSET_INTEGER, ""]
    out += [""]
    out += ["", "", False, 0]
    out += [""]
    out += [False, o.status, False, False]
    if o.order_type in {"PEG BENCH", "PEGBENCH"}:
        out += [0, False, 0.0, 0.0, ""]
    out += [0]
    out += [UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, False, False, "", o.filled, 0, False]
    out += ["", False, False, UNSET_INTEGER, completed_time, o.status]
    if version >= 170:
        out += [UNSET_INTEGER, UNSET_INTEGER, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE]
    return out


def enc_exec_details(version: int, req_id: int, e: GwExecution) -> list:
    # decoder.execDetails (no version field since server 136): 11, reqId, orderId, conId,
    #   symbol, secType, lastTradeDateOrContractMonth, strike, right, multiplier, exchange,
    #   currency, localSymbol, tradingClass, execId, time, acctNumber, exchange, side, shares,
    #   price, permId, clientId, liquidation, cumQty, avgPrice, orderRef, evRule, evMultiplier,
    #   modelCode, lastLiquidity, [>=178: pendingPriceRevision]
    out = [11, req_id, e.order_id, *_contract_fields(e.contract), e.exec_id, e.time]
    out += [e.account, e.exchange, e.side, e.shares, e.price, e.perm_id, e.client_id, 0]
    out += [e.cum_qty, e.avg_price, e.order_ref, "", "", "", 1]
    if version >= 178:
        out.append(False)
    return out


def enc_commission_report(e: GwExecution) -> list:
    # decoder.commissionReport: _, _(version 1), execId, commission, currency, realizedPNL,
    #   yield, yieldRedemptionDate
    realized = UNSET_DOUBLE if e.realized_pnl is None else e.realized_pnl
    return [59, 1, e.exec_id, e.commission, e.currency, realized, UNSET_DOUBLE, 0]


# ---- incoming parsing -------------------------------------------------------------------------


def _int(s: str) -> int:
    try:
        return int(float(s)) if s else 0
    except ValueError:
        return 0


def _float(s: str) -> float | None:
    """An empty field is unset (None), as is IB's max-double."""
    if not s:
        return None
    v = float(s)
    return None if v >= 1.7e308 else v


def _contract_at(f: Sequence[str], i: int) -> GwContract:
    """The client's 12 contract fields from index i: conId, symbol, secType,
    lastTradeDateOrContractMonth, strike, right, multiplier, exchange, primaryExchange,
    currency, localSymbol, tradingClass."""
    return GwContract(
        con_id=_int(f[i]),
        symbol=f[i + 1],
        sec_type=f[i + 2],
        expiry=f[i + 3],
        strike=_float(f[i + 4]) or 0.0,
        right=f[i + 5],
        multiplier=f[i + 6],
        exchange=f[i + 7],
        primary_exchange=f[i + 8],
        currency=f[i + 9],
        local_symbol=f[i + 10],
        trading_class=f[i + 11],
    )


def _parse_place_order(f: Sequence[str]) -> tuple[int, GwContract, dict[str, Any]]:
    # client.placeOrder: 3, orderId, <contract 12>, secIdType, secId, action, totalQuantity,
    #   orderType, lmtPrice, auxPrice, tif, ocaGroup, account, openClose, origin, orderRef,
    #   transmit, parentId, blockOrder, sweepToFill, displaySize, triggerMethod, outsideRth,
    #   hidden, [BAG: numLegs, legs × (conId, ratio, action, exchange, openClose,
    #   shortSaleSlot, designatedLocation, exemptCode), numOrderComboLegs, prices,
    #   numSmartComboRoutingParams, tag/value pairs], "", discretionaryAmt, ...
    order_id = _int(f[1])
    contract = _contract_at(f, 2)
    info: dict[str, Any] = {
        "action": f[16],
        "total_quantity": _float(f[17]) or 0.0,
        "order_type": f[18],
        "lmt_price": _float(f[19]),
        "aux_price": _float(f[20]),
        "tif": f[21],
        "account": f[23],
        "order_ref": f[26],
        "transmit": f[27] == "1",
        "outside_rth": f[33] == "1",
        "order_combo_leg_prices": [],
        "smart_combo_routing_params": [],
    }
    if contract.sec_type == "BAG":
        i = 35
        n = _int(f[i])
        i += 1
        for _ in range(n):
            leg = f[i : i + 8]
            contract.combo_legs.append(
                GwComboLeg(
                    con_id=_int(leg[0]),
                    ratio=_int(leg[1]),
                    action=leg[2],
                    exchange=leg[3],
                    open_close=_int(leg[4]),
                    short_sale_slot=_int(leg[5]),
                    designated_location=leg[6],
                    exempt_code=_int(leg[7]) if leg[7] else -1,
                )
            )
            i += 8
        n = _int(f[i])
        i += 1
        info["order_combo_leg_prices"] = [_float(p) for p in f[i : i + n]]
        i += n
        n = _int(f[i])
        i += 1
        info["smart_combo_routing_params"] = [(f[i + 2 * k], f[i + 2 * k + 1]) for k in range(n)]
    return order_id, contract, info


# ---- the server -------------------------------------------------------------------------------


def _ib_time(epoch: float | None = None) -> str:
    return time.strftime("%Y%m%d %H:%M:%S UTC", time.gmtime(epoch))


class _Connection:
    _ids = itertools.count(1)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.id = next(self._ids)
        self.writer = writer
        self.version = 0
        self.client_id = -1
        self.ready = False
        self.market_data_type = 1
        self.positions_subscribed = False
        self.account_subscribed: str | None = None
        self.account_multi: set[int] = set()
        self.sent: list[list[Any]] = []

    def send(self, fields: list) -> None:
        if self.writer.is_closing():
            return
        self.sent.append(fields)
        self.writer.write(frame(fields))

    def error(self, req_id: int, code: int, message: str, advanced_json: str = "") -> None:
        self.send(enc_error(self.version, req_id, code, message, advanced_json))

    def abort(self) -> None:
        self.writer.transport.abort()


class Gateway:
    """The running loopback gateway: `port`, the scenario `state`, and the test's controls."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.host = HOST
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: list[_Connection] = []
        self._tasks: set[asyncio.Task] = set()
        self._changed = asyncio.Event()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start_listening(self) -> None:
        """Listen (again) on `port` (the first time: an ephemeral port)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._client_connected, HOST, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self, drop_connections: bool = False) -> None:
        """Stop accepting connections (a new connect is refused); existing ones stay unless
        `drop_connections`."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if drop_connections:
            await self.drop_connections()
        if server is not None and drop_connections:
            await server.wait_closed()

    async def drop_connections(self) -> None:
        """Abort every client connection at once (TWS killed, network gone)."""
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.stop_listening(drop_connections=True)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def connections(self) -> list[_Connection]:
        return [c for c in self._conns if c.ready]

    # ---- waiting --------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 2.0) -> Any:
        """Wait until `predicate()` is truthy (checked after each message the gateway handles);
        returns its value. TimeoutError after `timeout` seconds."""

        async def poll() -> Any:
            while True:
                value = predicate()
                if value:
                    return value
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(poll(), timeout)

    async def wait_for_mkt_data(self, con_id: int, timeout: float = 2.0) -> MktDataRequest:
        return await self.wait_until(lambda: self._subscription(con_id), timeout)

    async def wait_for_order(self, count: int = 1, timeout: float = 2.0) -> GwOrder:
        """Wait until `count` orders were placed; returns the last one."""
        await self.wait_until(lambda: len(self.state.orders) >= count, timeout)
        return self.state.orders[count - 1]

    def _notify(self) -> None:
        self._changed.set()

    # ---- pushing data ---------------------------------------------------------------------

    def send_error(
        self,
        code: int,
        message: str,
        req_id: int = -1,
        *,
        advanced_json: str = "",
        client_id: int | None = None,
    ) -> None:
        """An error/notice message (1100, 1101, 1102, 2104, 10167, 354, …) to every ready
        client (or to the one with `client_id`)."""
        for conn in self.connections:
            if client_id is None or conn.client_id == client_id:
                conn.error(req_id, code, message, advanced_json)

    def farm_notice(self, code: int, farm: str) -> None:
        """A data farm notice as TWS words it (`FARM_NOTICES`): 2103 usfarm broken, 2104 OK…"""
        self.send_error(code, FARM_NOTICES[code].format(farm=farm))

    def _subscriptions(self, con_id: int) -> list[MktDataRequest]:
        return [
            r
            for r in self.state.mkt_data
            if r.contract.con_id == con_id and not r.cancelled and not r.conn.writer.is_closing()
        ]

    def _subscription(self, con_id: int) -> MktDataRequest | None:
        subs = self._subscriptions(con_id)
        return subs[-1] if subs else None

    def tick_price(
        self, con_id: int, tick_type: int, price: float, size: float = 0.0, attrib: int = 0
    ) -> int:
        """Push one tickPrice (the tick type as given) to every subscriber of `con_id`; returns
        how many subscriptions got it. Also stored: a later reqMktData starts with it."""
        self.state.quotes.setdefault(con_id, {})[tick_type] = (price, size)
        subs = self._subscriptions(con_id)
        for r in subs:
            r.conn.send(enc_tick_price(r.req_id, tick_type, price, size, attrib))
        return len(subs)

    def tick_size(self, con_id: int, tick_type: int, size: float) -> int:
        subs = self._subscriptions(con_id)
        for r in subs:
            r.conn.send(enc_tick_size(r.req_id, tick_type, size))
        return len(subs)

    def quote(
        self,
        con_id: int,
        *,
        bid: float | None = None,
        ask: float | None = None,
        last: float | None = None,
        bid_size: float = 10.0,
        ask_size: float = 10.0,
        last_size: float = 1.0,
    ) -> int:
        """Bid (1), ask (2), last (4) to live subscribers; a subscriber that got delayed data
        receives the delayed types (66, 67, 68) instead."""
        sent = 0
        for tick_type, price, size in ((BID, bid, bid_size), (ASK, ask, ask_size)):
            if price is not None:
                sent = self._typed_tick(con_id, tick_type, price, size)
        if last is not None:
            sent = self._typed_tick(con_id, LAST, last, last_size)
        return sent

    def _typed_tick(self, con_id: int, tick_type: int, price: float, size: float) -> int:
        self.state.quotes.setdefault(con_id, {})[tick_type] = (price, size)
        subs = self._subscriptions(con_id)
        for r in subs:
            t = _DELAYED[tick_type] if r.delayed else tick_type
            r.conn.send(enc_tick_price(r.req_id, t, price, size, 0))
        return len(subs)

    def set_market_data_type(self, con_id: int, data_type: int) -> int:
        """IB switches the data a line carries (1 live, 2 frozen, 3 delayed, 4 delayed-frozen),
        as TWS does at the open and the close for a client that asked for frozen data: a
        marketDataType message to every subscriber of `con_id`."""
        subs = self._subscriptions(con_id)
        for r in subs:
            r.conn.send(enc_market_data_type(r.req_id, data_type))
        return len(subs)

    def option_computation(
        self,
        con_id: int,
        tick_type: int = MODEL_OPTION,
        *,
        implied_vol: float | None = None,
        delta: float | None = None,
        opt_price: float | None = None,
        pv_dividend: float | None = 0.0,
        gamma: float | None = None,
        vega: float | None = None,
        theta: float | None = None,
        und_price: float | None = None,
        tick_attrib: int = 1,
    ) -> int:
        """tickOptionComputation (13 model, 10 bid, 11 ask, 12 last; delayed subscribers get
        80..83) to the subscribers of `con_id`. None → the unset sentinel (-1 / -2)."""
        values = (implied_vol, delta, opt_price, pv_dividend, gamma, vega, theta, und_price)
        self.state.greeks.setdefault(con_id, {})[tick_type] = values
        subs = self._subscriptions(con_id)
        for r in subs:
            t = _DELAYED.get(tick_type, tick_type) if r.delayed else tick_type
            r.conn.send(enc_tick_option_computation(r.req_id, t, tick_attrib, *values))
        return len(subs)

    def push_position(self, pos: GwPosition) -> None:
        """Send a (changed) position to clients subscribed to positions / account updates."""
        for conn in self.connections:
            if conn.positions_subscribed:
                conn.send(enc_position(pos))
            if conn.account_subscribed in (pos.account, ""):
                conn.send(enc_update_portfolio(pos))

    # ---- driving orders -------------------------------------------------------------------

    def fill_order(
        self,
        order_id: int,
        quantity: float | None = None,
        price: float | None = None,
        *,
        client_id: int | None = None,
        commission: float = 1.0,
        leg_prices: dict[int, float] | None = None,
    ) -> GwExecution:
        """Fill a working order now (all that remains by default); a BAG order with
        `leg_prices` as `Fill.leg_prices` says."""
        order = self.state.order(order_id, client_id)
        assert order.is_open, f"order {order_id} is {order.status}"
        return self._fill(order, Fill(quantity, price, commission, leg_prices=leg_prices))

    def cancel_order_by_tws(self, order_id: int, client_id: int | None = None) -> None:
        """TWS cancels a working order itself (end of day, margin): 202 and status Cancelled."""
        order = self.state.order(order_id, client_id)
        self._cancel(order)

    # ---- connection handling --------------------------------------------------------------

    def _client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer)
        self._conns.append(conn)
        try:
            if await reader.readexactly(4) != b"API\0":
                return
            hello = (await self._read_frame(reader)).decode()
            if self.state.hang_handshake:
                await reader.read()  # until the client gives up
                return
            version = self._negotiate(hello)
            self.state.handshakes.append((hello, version))
            if not version:
                return
            conn.version = version
            conn.writer.write(frame([version, _ib_time()]))
            while True:
                body = await self._read_frame(reader)
                fields = body.decode(errors="backslashreplace").split("\0")[:-1]
                if fields:
                    self._handle(conn, fields)
                self._notify()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
            writer.close()
            self._notify()

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        return await reader.readexactly(size)

    def _negotiate(self, hello: str) -> int:
        """`v157..178[ +PACEAPI]` → min(our version, the client's max); 0 if no overlap."""
        spec = hello.split(" ", 1)[0].lstrip("v")
        lo_s, _, hi_s = spec.partition("..")
        lo = int(lo_s)
        hi = int(hi_s or lo_s)
        version = min(self.state.server_version, hi)
        return version if version >= max(lo, MIN_SERVER_VERSION) else 0

    def _handle(self, conn: _Connection, f: list[str]) -> None:
        msg_id = _int(f[0])
        now = time.monotonic()
        self.state.received.append(Received(now, conn.id, conn.client_id, msg_id, tuple(f)))
        if not conn.ready:
            if msg_id == IN_START_API:
                self._start_api(conn, f)
            return
        limit = self.state.pacing_limit
        if limit is not None and self._last_second(conn, now) > limit:
            self.state.pacing_violations += 1
            conn.error(-1, 100, f"Max rate of messages per second has been exceeded:max={limit}")
        handler = self._handlers.get(msg_id)
        if handler is not None:
            handler(self, conn, f)

    def _last_second(self, conn: _Connection, now: float) -> int:
        """Messages from this connection in the second up to `now` (including this one)."""
        count = 0
        for r in reversed(self.state.received):
            if now - r.at >= 1.0:
                break
            count += r.conn_id == conn.id
        return count

    def _start_api(self, conn: _Connection, f: list[str]) -> None:
        # client.startApi: 71, version 2, clientId, optCapab
        client_id = _int(f[2])
        if any(c.client_id == client_id and c.ready for c in self._conns):
            conn.error(
                -1,
                326,
                "Unable to connect as the client id is already in use. Retry with a unique client id.",
            )
            conn.writer.close()
            return
        conn.client_id = client_id
        conn.ready = True
        conn.send(enc_next_valid_id(self._next_id()))
        conn.send(enc_managed_accounts(self.state.accounts))
        for code, text in self.state.connect_notices:
            conn.error(-1, code, text)

    def _next_id(self) -> int:
        used = [o.order_id for o in self.state.orders]
        return max([self.state.next_valid_id, *(i + 1 for i in used)])

    # ---- request handlers -----------------------------------------------------------------

    def _on_req_ids(self, conn: _Connection, f: list[str]) -> None:
        conn.send(enc_next_valid_id(self._next_id()))

    def _on_managed_accts(self, conn: _Connection, f: list[str]) -> None:
        conn.send(enc_managed_accounts(self.state.accounts))

    def _on_current_time(self, conn: _Connection, f: list[str]) -> None:
        conn.send(enc_current_time(int(time.time())))

    def _on_req_positions(self, conn: _Connection, f: list[str]) -> None:
        conn.positions_subscribed = True
        for pos in self.state.positions:
            conn.send(enc_position(pos))
        conn.send(enc_position_end())

    def _on_cancel_positions(self, conn: _Connection, f: list[str]) -> None:
        conn.positions_subscribed = False

    def _on_req_account_updates(self, conn: _Connection, f: list[str]) -> None:
        # client.reqAccountUpdates: 6, version 2, subscribe, acctCode
        if f[2] != "1":
            conn.account_subscribed = None
            return
        account = f[3] or self.state.account
        conn.account_subscribed = account
        for tag, value, ccy in self.state.account_values:
            conn.send(enc_update_account_value(tag, value, ccy, account))
        for pos in self.state.positions:
            if pos.account == account:
                conn.send(enc_update_portfolio(pos))
        conn.send(enc_update_account_time(time.strftime("%H:%M", time.gmtime())))
        conn.send(enc_account_download_end(account))

    def _on_req_account_updates_multi(self, conn: _Connection, f: list[str]) -> None:
        # client.reqAccountUpdatesMulti: 76, version 1, reqId, account, modelCode, ledgerAndNLV
        req_id, account, model = _int(f[2]), f[3], f[4]
        conn.account_multi.add(req_id)
        for acct in [account] if account and account != "All" else self.state.accounts:
            for tag, value, ccy in self.state.account_values:
                conn.send(enc_account_update_multi(req_id, acct, model, tag, value, ccy))
        conn.send(enc_account_update_multi_end(req_id))

    def _on_cancel_account_updates_multi(self, conn: _Connection, f: list[str]) -> None:
        conn.account_multi.discard(_int(f[2]))

    def _on_req_account_summary(self, conn: _Connection, f: list[str]) -> None:
        # client.reqAccountSummary: 62, version 1, reqId, groupName, tags
        req_id = _int(f[2])
        for acct in self.state.accounts:
            for tag, value, ccy in self.state.account_values:
                conn.send(enc_account_summary(req_id, acct, tag, value, ccy))
        conn.send(enc_account_summary_end(req_id))

    def _on_req_open_orders(self, conn: _Connection, f: list[str]) -> None:
        # reqOpenOrders (5): this client's working orders; reqAllOpenOrders (16): everyone's
        every = _int(f[0]) == IN_REQ_ALL_OPEN_ORDERS
        if not every and conn.client_id == 0:
            # client 0's reqOpenOrders binds TWS's own working orders: they get an API order id
            # ("Use negative numbers to bind automatic orders", TWS's default)
            bound = [o.order_id for o in self.state.orders if o.client_id == 0 and o.order_id < 0]
            for order in self.state.orders:
                if order.client_id == 0 and order.order_id == 0 and order.is_open:
                    order.order_id = min([0, *bound]) - 1
                    bound.append(order.order_id)
        for order in self.state.orders:
            if order.is_open and (every or order.client_id == conn.client_id):
                conn.send(enc_open_order(conn.version, order))
                conn.send(enc_order_status(order))
        conn.send(enc_open_order_end())

    def _on_req_completed_orders(self, conn: _Connection, f: list[str]) -> None:
        # client.reqCompletedOrders: 99, apiOnly
        for order in self.state.orders:
            if not order.is_open and order.status != "PendingSubmit":
                conn.send(enc_completed_order(conn.version, order, _ib_time()))
        conn.send(enc_completed_orders_end())

    def _on_req_executions(self, conn: _Connection, f: list[str]) -> None:
        # client.reqExecutions: 7, version 3, reqId, clientId, acctCode, time, symbol, secType,
        #   exchange, side
        req_id = _int(f[2])
        client_id, acct, symbol, sec_type, side = _int(f[3]), f[4], f[6], f[7], f[9]
        for e in self.state.executions:
            if client_id and e.client_id != client_id:
                continue
            if acct and e.account != acct:
                continue
            if symbol and e.contract.symbol != symbol:
                continue
            if sec_type and e.contract.sec_type != sec_type:
                continue
            if side and {"BUY": "BOT", "SELL": "SLD"}.get(side, side) != e.side:
                continue
            conn.send(enc_exec_details(conn.version, req_id, e))
            conn.send(enc_commission_report(e))
        conn.send(enc_exec_details_end(req_id))

    def _on_req_market_data_type(self, conn: _Connection, f: list[str]) -> None:
        # client.reqMarketDataType: 59, version 1, marketDataType
        conn.market_data_type = _int(f[2])

    def _on_req_mkt_data(self, conn: _Connection, f: list[str]) -> None:
        # client.reqMktData: 1, version 11, reqId, <contract 12>, [BAG: n, legs × 4],
        #   deltaNeutral flag [, conId, delta, price], genericTickList, snapshot,
        #   regulatorySnapshot, mktDataOptions
        req_id = _int(f[2])
        contract = _contract_at(f, 3)
        i = 15
        if contract.sec_type == "BAG":
            n = _int(f[i])
            for k in range(n):
                leg = f[i + 1 + 4 * k : i + 5 + 4 * k]
                contract.combo_legs.append(GwComboLeg(_int(leg[0]), _int(leg[1]), leg[2], leg[3]))
            i += 1 + 4 * n
        i += 4 if f[i] == "1" else 1
        generic, snapshot = f[i], f[i + 1] == "1"
        delayed = False
        if contract.con_id in self.state.no_market_data:
            if conn.market_data_type in (3, 4):
                conn.error(
                    req_id,
                    10167,
                    "Requested market data is not subscribed. Displaying delayed market data.",
                )
                delayed = True
            else:
                conn.error(
                    req_id,
                    354,
                    "Requested market data is not subscribed.Delayed market data is available.",
                )
                refused = MktDataRequest(
                    req_id, conn.client_id, contract, generic, snapshot, False, conn
                )
                refused.cancelled = True
                self.state.mkt_data.append(refused)
                return
        request = MktDataRequest(req_id, conn.client_id, contract, generic, snapshot, delayed, conn)
        self.state.mkt_data.append(request)
        data_type = 3 if delayed else (2 if conn.market_data_type == 2 else 1)
        if conn.market_data_type != 1 or delayed:
            conn.send(enc_market_data_type(req_id, data_type))
        # what TWS already knows starts the subscription
        for tick_type, (price, size) in self.state.quotes.get(contract.con_id, {}).items():
            t = _DELAYED.get(tick_type, tick_type) if delayed else tick_type
            conn.send(enc_tick_price(req_id, t, price, size, 0))
        for tick_type, values in self.state.greeks.get(contract.con_id, {}).items():
            t = _DELAYED.get(tick_type, tick_type) if delayed else tick_type
            conn.send(enc_tick_option_computation(req_id, t, 1, *values))
        if snapshot:
            conn.send(enc_tick_snapshot_end(req_id))
            request.cancelled = True

    def _on_cancel_mkt_data(self, conn: _Connection, f: list[str]) -> None:
        req_id = _int(f[2])
        for r in self.state.mkt_data:
            if r.req_id == req_id and r.conn is conn:
                r.cancelled = True

    def _on_req_contract_details(self, conn: _Connection, f: list[str]) -> None:
        # client.reqContractDetails: 9, version 8, reqId, <contract 12>, includeExpired,
        #   secIdType, secId, [>=176: issuerId]
        req_id = _int(f[2])
        want = _contract_at(f, 3)
        found = [cd for cd in self.state.contract_details if _matches(cd.contract, want)]
        if not found:
            conn.error(req_id, 200, "No security definition has been found for the request")
            return
        for cd in found:
            conn.send(enc_contract_details(conn.version, req_id, cd))
        conn.send(enc_contract_details_end(req_id))

    def _on_req_sec_def_opt_params(self, conn: _Connection, f: list[str]) -> None:
        # client.reqSecDefOptParams: 78, reqId, underlyingSymbol, futFopExchange,
        #   underlyingSecType, underlyingConId
        req_id, symbol, fut_fop_exchange, con_id = _int(f[1]), f[2], f[3], _int(f[5])
        for chain in self.state.option_chains:
            if (con_id and chain.under_con_id != con_id) or (symbol and chain.symbol != symbol):
                continue
            if fut_fop_exchange and chain.exchange != fut_fop_exchange:
                continue
            conn.send(enc_sec_def_opt_param(req_id, chain))
        conn.send(enc_sec_def_opt_param_end(req_id))

    def _on_req_historical_data(self, conn: _Connection, f: list[str]) -> None:
        # client.reqHistoricalData: 20, reqId, <contract 12>, includeExpired, endDateTime,
        #   barSizeSetting, durationStr, useRTH, whatToShow, formatDate, [BAG legs],
        #   keepUpToDate, chartOptions
        req_id = _int(f[1])
        contract = _contract_at(f, 2)
        end_s, bar_size, duration = f[15], f[16], f[17]
        bars = self.state.minute_bars.get(contract.con_id)
        if bar_size != "1 min" or not duration.endswith(" S") or not bars:
            conn.error(
                req_id,
                162,
                "Historical Market Data Service error message:HMDS query returned no data",
            )
            return
        if end_s:  # only "now" is supported: the feed never asks for another end
            conn.error(req_id, 321, f"Error validating request: end {end_s!r} not supported here")
            return
        end = int(self.state.now())
        first = end - int(duration.split()[0])
        chosen = [b for b in bars if first <= b[0] < end]
        conn.send(enc_historical_data(req_id, str(first), str(end), chosen))

    def _on_place_order(self, conn: _Connection, f: list[str]) -> None:
        order_id, contract, info = _parse_place_order(f)
        if self.state.read_only_api:
            conn.error(
                order_id,
                321,
                "Error validating request.-'bO' : cause - The API interface is currently in Read-Only mode.",
            )
            return
        existing = next(
            (
                o
                for o in self.state.orders
                if o.order_id == order_id and o.client_id == conn.client_id
            ),
            None,
        )
        if existing is not None and not existing.is_open:
            conn.error(order_id, 103, "Duplicate order id")
            return
        if existing is not None:  # a modification
            for key, value in info.items():
                setattr(existing, key, value)
            existing.raw = list(f)
            existing.modifications += 1
            order = existing
        else:
            if contract.sec_type == "BAG" and not contract.con_id:
                contract.con_id = BAG_CON_ID
            order = GwOrder(
                order_id=order_id,
                client_id=conn.client_id,
                perm_id=next(self.state._perm_ids),
                contract=contract,
                raw=list(f),
                **info,
            )
            if not order.account:
                order.account = self.state.account
            self.state.orders.append(order)
        outcome = self._outcome(order)
        if isinstance(outcome, Silent):
            return
        if isinstance(outcome, Reject):
            if existing is None:  # a refused modification leaves the working order as it was
                order.status = outcome.status_after or "Inactive"
            conn.error(order_id, outcome.code, outcome.message, outcome.advanced_json)
            if outcome.status_after:
                conn.send(enc_order_status(order))
            return
        order.status = outcome.status if isinstance(outcome, Rest) else "Submitted"
        self._to_owner(order, lambda c: enc_open_order(c.version, order))
        self._to_owner(order, lambda c: enc_order_status(order))
        if isinstance(outcome, Fill):
            self._fill(order, outcome)

    def _outcome(self, order: GwOrder) -> Outcome:
        if self.state.outcomes:
            return self.state.outcomes.pop(0)
        if self.state.order_hook is not None:
            outcome = self.state.order_hook(order)
            if outcome is not None:
                return outcome
        return self.state.default_outcome

    def _to_owner(self, order: GwOrder, message: Callable[[_Connection], list]) -> None:
        for conn in self.connections:
            if conn.client_id == order.client_id:
                conn.send(message(conn))

    def _fill(self, order: GwOrder, fill: Fill) -> GwExecution:
        qty = order.remaining if fill.quantity is None else min(fill.quantity, order.remaining)
        price = fill.price
        if price is None:
            price = order.lmt_price
        if price is None:
            price = self.state.quotes.get(order.contract.con_id, {}).get(LAST, (0.0, 0.0))[0]
        prev_value = order.avg_fill_price * order.filled
        order.filled += qty
        order.avg_fill_price = (prev_value + qty * price) / order.filled if order.filled else 0.0
        order.last_fill_price = price
        by_legs = bool(fill.leg_prices) and order.contract.sec_type == "BAG"
        realized = self._book_position(order, qty, price, fill.commission)
        execution = GwExecution(
            exec_id=f"0000e0d5.{order.perm_id:08x}.{next(self.state._exec_seq):02d}.01",
            order_id=order.order_id,
            client_id=order.client_id,
            perm_id=order.perm_id,
            contract=order.contract,
            time=_ib_time(),
            account=order.account,
            exchange=fill.exchange,
            side="BOT" if order.action == "BUY" else "SLD",
            shares=qty,
            price=price,
            cum_qty=order.filled,
            avg_price=order.avg_fill_price,
            order_ref=order.order_ref,
            commission=0.0 if by_legs else fill.commission,
            currency=order.contract.currency or "USD",
            realized_pnl=realized,
        )
        self.state.executions.append(execution)
        legs = self._leg_executions(order, qty, fill) if by_legs else []
        done = order.remaining <= 0
        ioc = order.tif in ("IOC", "FOK")
        if done:
            order.status = "Filled"
        # live executions carry reqId -1
        self._to_owner(order, lambda c: enc_exec_details(c.version, -1, execution))
        for leg in legs:
            self._to_owner(order, lambda c, leg=leg: enc_exec_details(c.version, -1, leg))
        if done:
            self._to_owner(order, lambda c: enc_open_order(c.version, order))
        self._to_owner(order, lambda c: enc_order_status(order))
        for charged in legs or [execution]:
            self._to_owner(order, lambda c, e=charged: enc_commission_report(e))
        if not done and ioc:
            order.status = "Cancelled"
            self._to_owner(order, lambda c: enc_order_status(order))
        return execution

    def _leg_executions(self, order: GwOrder, qty: float, fill: Fill) -> list[GwExecution]:
        """One execution per leg of a BAG fill (see `Fill.leg_prices`)."""
        assert fill.leg_prices is not None
        legs = order.contract.combo_legs
        out: list[GwExecution] = []
        for leg in legs:
            contract = self._leg_contract(leg.con_id)
            action = "BUY" if (leg.action == "BUY") == (order.action == "BUY") else "SELL"
            shares = qty * leg.ratio
            price = fill.leg_prices[leg.con_id]
            commission = fill.commission / len(legs)
            realized = self._book(contract, action, order.account, shares, price, commission)
            execution = GwExecution(
                exec_id=f"0000e0d5.{order.perm_id:08x}.{next(self.state._exec_seq):02d}.01",
                order_id=order.order_id,
                client_id=order.client_id,
                perm_id=order.perm_id,
                contract=contract,
                time=_ib_time(),
                account=order.account,
                exchange=fill.exchange,
                side="BOT" if action == "BUY" else "SLD",
                shares=shares,
                price=price,
                cum_qty=shares,
                avg_price=price,
                order_ref=order.order_ref,
                commission=commission,
                currency=contract.currency or "USD",
                realized_pnl=realized,
            )
            self.state.executions.append(execution)
            out.append(execution)
        return out

    def _leg_contract(self, con_id: int) -> GwContract:
        for pos in self.state.positions:
            if pos.contract.con_id == con_id:
                return pos.contract
        for cd in self.state.contract_details:
            if cd.contract.con_id == con_id:
                return cd.contract
        raise KeyError(f"combo leg conId {con_id}: no position or contract details")

    def _book_position(
        self, order: GwOrder, qty: float, price: float, commission: float
    ) -> float | None:
        """Update the account's position after a fill; the realized P&L of a closing fill."""
        if order.contract.sec_type == "BAG":
            return None
        return self._book(order.contract, order.action, order.account, qty, price, commission)

    def _book(
        self,
        contract: GwContract,
        action: str,
        account: str,
        qty: float,
        price: float,
        commission: float,
    ) -> float | None:
        if not self.state.update_positions_on_fill:
            return None
        signed = qty if action == "BUY" else -qty
        mult = contract.mult
        pos = self.state.position_of(contract.con_id, account)
        if pos is None:
            pos = self.state.add_position(contract, 0.0, 0.0, market_price=price, account=account)
        realized: float | None = None
        old = pos.position
        new = old + signed
        if old == 0 or (old > 0) == (signed > 0):  # opening or adding
            pos.avg_cost = (abs(old) * pos.avg_cost + qty * price * mult + commission) / abs(new)
        else:  # reducing, closing or flipping
            closed = min(abs(old), qty)
            direction = 1 if old > 0 else -1
            realized = closed * (price * mult - pos.avg_cost) * direction - commission
            pos.realized_pnl += realized
            if abs(signed) > abs(old):
                pos.avg_cost = price * mult
        pos.position = new
        self.push_position(pos)
        return realized

    def _cancel(self, order: GwOrder) -> None:
        if self.state.cancel_sends_202:
            self._to_owner(
                order,
                lambda c: enc_error(c.version, order.order_id, 202, "Order Canceled - reason:"),
            )
        order.status = "Cancelled"
        self._to_owner(order, lambda c: enc_order_status(order))

    def _on_cancel_order(self, conn: _Connection, f: list[str]) -> None:
        # client.cancelOrder: 4, version 1, orderId, [>=169: manualCancelOrderTime]
        order_id = _int(f[2])
        if self.state.ignore_cancels:
            return
        try:
            order = self.state.order(order_id, conn.client_id)
        except KeyError:
            conn.error(
                order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found."
            )
            return
        if not order.is_open:
            conn.error(
                order_id,
                10148,
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {order.status}.",
            )
            return
        self._cancel(order)

    def _on_global_cancel(self, conn: _Connection, f: list[str]) -> None:
        for order in self.state.orders:
            if order.is_open:
                self._cancel(order)

    _handlers: ClassVar[dict[int, Callable[[Gateway, _Connection, list[str]], None]]] = {
        IN_REQ_MKT_DATA: _on_req_mkt_data,
        IN_CANCEL_MKT_DATA: _on_cancel_mkt_data,
        IN_PLACE_ORDER: _on_place_order,
        IN_CANCEL_ORDER: _on_cancel_order,
        IN_REQ_OPEN_ORDERS: _on_req_open_orders,
        IN_REQ_ALL_OPEN_ORDERS: _on_req_open_orders,
        IN_REQ_ACCOUNT_UPDATES: _on_req_account_updates,
        IN_REQ_EXECUTIONS: _on_req_executions,
        IN_REQ_IDS: _on_req_ids,
        IN_REQ_CONTRACT_DETAILS: _on_req_contract_details,
        IN_REQ_HISTORICAL_DATA: _on_req_historical_data,
        IN_REQ_MANAGED_ACCTS: _on_managed_accts,
        IN_REQ_CURRENT_TIME: _on_current_time,
        IN_REQ_GLOBAL_CANCEL: _on_global_cancel,
        IN_REQ_MARKET_DATA_TYPE: _on_req_market_data_type,
        IN_REQ_POSITIONS: _on_req_positions,
        IN_REQ_ACCOUNT_SUMMARY: _on_req_account_summary,
        IN_CANCEL_POSITIONS: _on_cancel_positions,
        IN_REQ_ACCOUNT_UPDATES_MULTI: _on_req_account_updates_multi,
        IN_CANCEL_ACCOUNT_UPDATES_MULTI: _on_cancel_account_updates_multi,
        IN_REQ_SEC_DEF_OPT_PARAMS: _on_req_sec_def_opt_params,
        IN_REQ_COMPLETED_ORDERS: _on_req_completed_orders,
    }


def _matches(have: GwContract, want: GwContract) -> bool:
    if want.con_id:
        return have.con_id == want.con_id
    if want.symbol and have.symbol != want.symbol:
        return False
    if want.sec_type and have.sec_type != want.sec_type:
        return False
    if want.expiry and not have.expiry.startswith(want.expiry):
        return False
    if want.strike and have.strike != want.strike:
        return False
    if want.right and have.right[:1] != want.right[:1]:
        return False
    if want.trading_class and have.trading_class != want.trading_class:
        return False
    if want.multiplier and have.multiplier and float(want.multiplier) != float(have.multiplier):
        return False
    return not (want.currency and have.currency != want.currency)


@asynccontextmanager
async def tws_gateway(**state_kwargs: Any) -> AsyncIterator[Gateway]:
    """Run the loopback gateway on 127.0.0.1 (an ephemeral port) for the duration of the block."""
    gateway = Gateway(GatewayState(**state_kwargs))
    await gateway.start_listening()
    try:
        yield gateway
    finally:
        await gateway.close()
