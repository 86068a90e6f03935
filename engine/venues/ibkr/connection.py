"""One API connection to TWS / IB Gateway, kept up: `IbConnection`.

It owns one `IB` client (engine/venues/ibkr/ib.py) and everything that is about the connection
rather than about what flows through it:

- **Connecting.** `connectAsync(host, port, clientId, timeout, readonly, account)` from
  `[venues.ibkr]`. The client has no automatic reconnect: `run()` connects, waits for
  `disconnectedEvent`, and connects again after a wait that doubles from `reconnect_min_seconds`
  up to `reconnect_max_seconds`, with jitter (uniform in the upper half of the step, never below
  the minimum), so several engines restarted with one gateway do not knock in step. The wait is
  an injected `sleep` (default: the clock's), so tests record it instead of waiting.
- **TWS's link to IB.** The socket can stay up while TWS loses IB: error 1100 turns the state to
  disconnected; 1101 (restored, data lost) is a reconnection for market data: every line is
  requested again and the listeners are told (`on_resubscribe`); 1102 (restored, data kept)
  only restores the state. 2104/2106/2158 (data farms OK) and the other 21xx notices are logged.
- **State for alerts.** `state` is (connected, since, reason); listeners registered with
  `add_listener` get `on_state(connected, reason)` at each change and `on_resubscribe()` after a
  reconnect or a 1101. Errors go to `add_error_listener(callback, req_id=None)` (all of them, or
  only those of one reqId / orderId), as `IbError`s.
- **Pacing.** TWS allows 50 messages a second and disconnects a client that keeps exceeding it.
  ib_async's `Client.sendMsg` already queues requests beyond `MaxRequests` per
  `RequestsInterval` seconds; the connection sets both from `max_messages_per_second` (at most
  that many per window, the window stretched by `PACING_MARGIN_SECONDS` so that scheduling
  jitter between the client's clock and the gateway's arrival times never puts one more message
  into any one-second window) instead of throttling a second time.
- **Market data lines.** An account has a limited number of simultaneous market data lines
  (100 by default). `lines` (`MarketDataLines`) hands them out per contract (`conId`), counts
  users (the feed and anyone else share one line per contract, as ib_async keeps one ticker per
  contract), refuses beyond `max_market_data_lines`, gives a line back (`cancelMktData`) when its
  last user releases it, and requests all of them again after a reconnect or a 1101. A line
  taken while disconnected is requested when the connection comes up.
- The market data type (`reqMarketDataType`: live 1, frozen 2, delayed 3, delayed-frozen 4) is
  a setting of the API session: it is sent after each connect, before any line is requested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine.clock import Clock
from engine.config import IbkrConfig
from engine.venues.ibkr.ib import IB
from engine.venues.ibkr.ib import Contract as IbContract

__all__ = [
    "CONNECTIVITY_LOST",
    "MARKET_DATA_TYPES",
    "PACING_MARGIN_SECONDS",
    "RESTORED_DATA_KEPT",
    "RESTORED_DATA_LOST",
    "ConnectionState",
    "IbConnection",
    "IbError",
    "MarketDataLines",
    "backoff_delay",
    "pacing",
]

log = logging.getLogger("engine.venues.ibkr.connection")

MARKET_DATA_TYPES = {"live": 1, "frozen": 2, "delayed": 3, "delayed_frozen": 4}
CONNECTIVITY_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED_DATA_KEPT = 1102
INFO_CODES = frozenset({2104, 2106, 2158})  # data farm connections OK
PACING_MARGIN_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """Whether the API can be used now, since when (clock time), and why it changed.

    `reason` is empty before the first attempt to connect."""

    connected: bool
    since: float
    reason: str


@dataclass(frozen=True, slots=True)
class IbError:
    """One `errorEvent`: `req_id` is the request's id or the order's id (-1: not about one)."""

    req_id: int
    code: int
    message: str
    contract: Any = None


StateListener = Callable[[bool, str], object]
ErrorListener = Callable[[IbError], object]


def backoff_delay(failures: int, low: float, high: float, rng: random.Random) -> float:
    """The wait before reconnect attempt number `failures` (1 = the first after a failure or a
    drop): the step doubles from `low` up to `high`; jitter picks in its upper half; never
    below `low` nor above `high`."""
    step = min(high, low * 2 ** max(failures - 1, 0))
    return min(high, max(low, rng.uniform(step / 2, step)))


def pacing(max_messages_per_second: float) -> tuple[int, float]:
    """(MaxRequests, RequestsInterval) for ib_async's client throttle: at most
    `max_messages_per_second` messages in any second, with a safety margin for jitter."""
    count = max(1, math.floor(max_messages_per_second))
    interval = max(1.0, count / max_messages_per_second)
    return count, interval + PACING_MARGIN_SECONDS


class MarketDataLines:
    """Market data subscriptions, one line per contract (conId), never more than `limit`.

    `acquire` counts users of a line; the line is cancelled when `release` drops the last one.
    While the connection is down lines are only recorded; `resubscribe` requests them all (the
    connection calls it after each connect and after a 1101)."""

    def __init__(self, ib: IB, limit: int, ready: Callable[[], bool] | None = None) -> None:
        self.ib = ib
        self.limit = limit
        self._ready = ready if ready is not None else ib.isConnected
        self._contracts: dict[int, IbContract] = {}
        self._users: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._contracts)

    @property
    def free(self) -> int:
        return max(0, self.limit - len(self._contracts))

    def holds(self, con_id: int) -> bool:
        return con_id in self._contracts

    def contracts(self) -> list[IbContract]:
        return list(self._contracts.values())

    def acquire(self, contract: IbContract) -> bool:
        """Take (or share) the line of `contract` (qualified: it needs its conId). False when
        every line is in use by other contracts."""
        con_id = int(contract.conId or 0)
        if not con_id:
            raise ValueError(f"market data needs a qualified contract (conId): {contract!r}")
        if con_id in self._contracts:
            self._users[con_id] += 1
            return True
        if len(self._contracts) >= self.limit:
            return False
        self._contracts[con_id] = contract
        self._users[con_id] = 1
        if self._ready():
            self.ib.reqMktData(contract, "", False, False)
        return True

    def release(self, contract: IbContract | int) -> bool:
        """One user gives the line up; True when that was the last one (cancelMktData sent)."""
        con_id = int(contract if isinstance(contract, int) else contract.conId or 0)
        if con_id not in self._contracts:
            return False
        self._users[con_id] -= 1
        if self._users[con_id] > 0:
            return False
        held = self._contracts.pop(con_id)
        del self._users[con_id]
        if self._ready() and self.ib.ticker(held) is not None:
            self.ib.cancelMktData(held)
        return True

    def refresh(self, con_ids: list[int] | None = None) -> int:
        """Cancel and request again the lines of `con_ids` (default: all) while connected: the
        lines are alive but their values may be from before an outage (1102, a data farm
        back), and a new subscription starts with a fresh snapshot of every field."""
        if not self._ready():
            return 0
        n = 0
        for con_id in con_ids if con_ids is not None else list(self._contracts):
            contract = self._contracts.get(con_id)
            if contract is None:
                continue
            if self.ib.ticker(contract) is not None:
                self.ib.cancelMktData(contract)
            self.ib.reqMktData(contract, "", False, False)
            n += 1
        return n

    def resubscribe(self) -> int:
        """Request every line again (the gateway lost them); returns how many."""
        if not self._ready():
            return 0
        for contract in self._contracts.values():
            self.ib.reqMktData(contract, "", False, False)
        return len(self._contracts)


class IbConnection:
    """Keeps one `IB` client connected to TWS / IB Gateway (see the module doc).

    `run()` runs until cancelled (the owner's task); `close()` disconnects for good."""

    def __init__(
        self,
        config: IbkrConfig,
        clock: Clock,
        *,
        ib: IB | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.ib = ib if ib is not None else IB()
        self._sleep = sleep if sleep is not None else clock.sleep
        self._rng = rng or random.Random()
        count, interval = pacing(config.max_messages_per_second)
        self.ib.client.MaxRequests = count
        self.ib.client.RequestsInterval = interval
        self.market_data_type = MARKET_DATA_TYPES[config.market_data_type]
        self._session = False  # connected and synchronised (lines may be requested)
        self.lines = MarketDataLines(self.ib, config.max_market_data_lines, self.is_ready)
        self._state = ConnectionState(False, clock.now(), "")
        self._listeners: list[object] = []
        self._error_listeners: list[tuple[int | None, ErrorListener]] = []
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        self._closing = False
        self.connects = 0  # successful connects (the first one and every reconnect)
        self.failures = 0  # failed attempts or drops since the last successful connect
        self.ib.disconnectedEvent += self._on_disconnected
        self.ib.errorEvent += self._on_error

    # --- state and listeners ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state.connected

    def add_listener(self, listener: object) -> None:
        """`listener` may have `on_state(connected, reason)`, `on_session()` (each successful
        connect: a new API session) and `on_resubscribe()`; all are called synchronously from
        the client's events (do not block)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: object) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def add_error_listener(
        self, callback: ErrorListener, req_id: int | None = None
    ) -> Callable[[], None]:
        """`callback(IbError)` for every error (or only those of `req_id`: a request's id or an
        orderId). Returns the function that removes it."""
        entry = (req_id, callback)
        self._error_listeners.append(entry)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._error_listeners.remove(entry)

        return remove

    def _notify(self, method: str, *args: object) -> None:
        for listener in list(self._listeners):
            fn = getattr(listener, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception:
                log.exception("IB connection listener %r.%s failed", listener, method)

    def _set_state(self, connected: bool, reason: str) -> None:
        """Record the state; listeners hear of a change of `connected` (and of the first
        outcome, so that a first connect that fails is reported at once)."""
        changed = connected != self._state.connected or not self._state.reason
        since = self.clock.now() if changed else self._state.since
        self._state = ConnectionState(connected, since, reason)
        if connected:
            self._up.set()
        else:
            self._up.clear()
        if changed:
            level = logging.INFO if connected or self._closing else logging.WARNING
            log.log(level, "IB connection %s: %s", "up" if connected else "down", reason)
            self._notify("on_state", connected, reason)

    def is_ready(self) -> bool:
        """The API session is connected and synchronised (positions, orders loaded), even while
        TWS has lost IB (1100): what `IbkrVenue(is_ready=...)` wants."""
        return self._session and self.ib.isConnected()

    def current_ib(self) -> IB | None:
        """The client while its session is ready, else None (`IbkrVenue(ib_provider=...)`)."""
        return self.ib if self.is_ready() else None

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` seconds) until the connection is up; True if it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self.connected

    # --- connecting ------------------------------------------------------------------------

    @property
    def where(self) -> str:
        c = self.config
        return f"{c.host}:{c.port} (clientId {c.client_id})"

    async def run(self) -> None:
        """Connect and stay connected until cancelled; reconnect with backoff after a failed
        attempt or a lost connection."""
        try:
            while not self._closing:
                if self.failures:
                    delay = backoff_delay(
                        self.failures,
                        self.config.reconnect_min_seconds,
                        self.config.reconnect_max_seconds,
                        self._rng,
                    )
                    log.info("IB: connecting again in %.1f s (attempt %d)", delay, self.failures)
                    await self._sleep(delay)
                self._lost.clear()
                try:
                    await self.connect()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # Python 3.11: a cancel landing as connectAsync's wait_for times out
                        # comes back as TimeoutError; a stop must still stop.
                        raise asyncio.CancelledError from exc
                    self.failures += 1
                    self._set_state(False, f"cannot connect to {self.where}: {_describe(exc)}")
                    continue
                await self._lost.wait()
                self.failures = 1
        finally:
            self.close()

    async def connect(self) -> None:
        """One attempt: connect, synchronise, set the market data type, request the lines.
        Raises what `connectAsync` raises (refused, timeout, dropped while synchronising)."""
        c = self.config
        await self.ib.connectAsync(
            c.host,
            c.port,
            clientId=c.client_id,
            timeout=c.connect_timeout_seconds,
            readonly=c.readonly,
            account=c.account,
        )
        if not self.ib.isConnected():
            raise ConnectionError("the connection dropped while synchronising")
        self.connects += 1
        self.failures = 0
        self._session = True
        self.ib.reqMarketDataType(self.market_data_type)
        again = self.connects > 1
        self.lines.resubscribe()
        self._set_state(True, f"connected to {self.where}" + (" again" if again else ""))
        self._notify("on_session")  # a new API session (its settings, e.g. read-only, anew)
        if again:
            self._notify("on_resubscribe")

    def close(self) -> None:
        """Disconnect for good (no reconnect)."""
        self._closing = True
        self._session = False
        self._lost.set()
        if self.ib.isConnected():
            self.ib.disconnect()
        self._set_state(False, "closed")

    def _on_disconnected(self) -> None:
        self._session = False
        if self._closing:
            return
        self._set_state(False, f"lost the connection to {self.where}")
        self._lost.set()

    # --- errors ----------------------------------------------------------------------------

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        if code == CONNECTIVITY_LOST:
            self._set_state(False, f"{code}: {message}")
        elif code == RESTORED_DATA_LOST:
            if self._session and self.ib.isConnected():
                self.ib.reqMarketDataType(self.market_data_type)
                n = self.lines.resubscribe()
                log.info("IB: %d: %s; %d market data lines requested again", code, message, n)
            self._set_state(True, f"{code}: {message}")
            self._notify("on_resubscribe")
        elif code == RESTORED_DATA_KEPT:
            self._set_state(True, f"{code}: {message}")
        elif code in INFO_CODES or 2100 <= code < 2200:
            log.info("IB notice %d: %s", code, message)
        error = IbError(req_id, code, message, contract)
        for wanted, callback in list(self._error_listeners):
            if wanted is None or wanted == req_id:
                try:
                    callback(error)
                except Exception:
                    log.exception("IB error listener %r failed", callback)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer in time (is the API enabled and the clientId free?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is TWS / IB Gateway running, the API port open?)"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
