"""The supervisor engine: market state in, rule evaluation, journaled exits out.

Data flows one way: events (feeds, replay) → market state and trades → rules → exit intents →
venue → fills → journal → snapshot. Everything runs on one asyncio loop; the clock is injected.

Money-safety invariants kept here:
- A trade is evaluated only on a valid, fresh quote of its contract (see `_data_problem`); spot-based
  inputs are withheld when the spot is stale. Each bad-data episode raises one alert, and its
  recovery another.
- An exit intent is journaled (committed) before its order is sent, and the order is sent with the
  intent's id as client order id; later attempts use `<intent>-<n>`, each journaled before sending.
- A trade with an exit in flight is marked CLOSING synchronously, before any await, so concurrent
  evaluations never start a second exit.
- On start, open intents are reconciled with the venue by client order id: fills are adopted, an
  order the venue never saw is re-sent with the same id, and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import pricing, rules, signals
from engine.alerts import AlertBus, alert_from_row
from engine.clock import Clock
from engine.commands import REPLAY_ACTIONS, Command, CommandResult
from engine.config import Config, ConfigError, Criteria, criteria_contradiction, load_config
from engine.exit_ladder import cross_limit, exit_limit
from engine.market_hours import ExchangeHours
from engine.models import (
    AlertKind,
    CommandEvent,
    Contract,
    ContractEvent,
    ExitReason,
    MarketEvent,
    Mode,
    OpenEvent,
    Quote,
    QuoteEvent,
    SettleEvent,
    Severity,
    SpotEvent,
    Trade,
    TradeState,
    quote_problem,
)
from engine.snapshot import (
    AuditEntry,
    MarketView,
    OptionSide,
    OptionStrikeRow,
    PnlLevel,
    RiskView,
    RuleView,
    Snapshot,
    SourceHealth,
    StrikeRow,
    TradeDetail,
    TradeRow,
)
from engine.store import Store, StoreError, StoreLocked
from engine.trade_rows import MAX_QTY, BadRow, RowContext
from engine.venues.base import OrderRequest, OrderResult, Venue, VenueError, VenuePosition
from engine.watchdog import ProtectionWatchdog, Unprotected, describe_back, describe_new

log = logging.getLogger(__name__)

EPS = 1e-9
EXIT_FAILED_COOLDOWN_SECONDS = 60.0  # the default of [auto_stop.ladder] retry_after_seconds
# A rule that fires while its exit cannot be sent (the trade paused, the engine disarmed, the kill
# switch, alert_only) warns again at most this often while it stays fired (a constant, not a key).
BLOCKED_SIGNAL_REPEAT_SECONDS = 300.0
OPPORTUNITY_SCAN_SECONDS = 5.0
POSITIONS_POLL_SECONDS = 5.0
# How long a tick waits for the venue's positions before going on without them. The answer is
# applied when it comes (a slow or retrying positions endpoint can take tens of seconds), and
# meanwhile the tick's own work — staleness, time rules, the exit ladder's next step — goes on.
POSITIONS_POLL_BUDGET_SECONDS = 1.0
# After its close, a contract's vanished position waits this long for the settlement before it is
# closed as external: venues pay out minutes after the close, and the feed may see the result
# after the positions poll sees the payout.
SETTLEMENT_WAIT_SECONDS = 3600.0
SETTLED_MEMORY_SECONDS = 86400.0  # how long a settled contract's listed position is ignored
REGIME_CONFIRM_SAMPLES = 2  # volatility updates (one a minute) a new regime must hold
REGIME_MIN_HISTORY = 15  # volatility-score samples needed before regime changes are alerted
# A regime read from VIX (which ticks every few seconds) must hold this long, and for
# REGIME_CONFIRM_SAMPLES values, before it is alerted: as long as two realised updates.
VIX_REGIME_CONFIRM_SECONDS = 60.0
OPTION_TYPES = ("option_call", "option_put")
OPPORTUNITY_COOLDOWN_SECONDS = 300.0  # one opportunity alert per contract and side per 5 min
HISTORY_SECONDS = 3600.0
# The spot history is journaled (`Store.add_spot_samples`) at most this often, in market seconds:
# a restart loses no more than this of it.
SPOT_SAVE_SECONDS = 10.0
CHECKPOINT_SECONDS = 30.0
SNAPSHOT_SLICE_SECONDS = 0.001  # longest stretch a snapshot build holds the loop (snapshot_async)
SNAPSHOT_MAX_WAIT_SECONDS = (
    0.25  # ... and the longest it waits for the engine to be idle, per slice
)
HEARTBEAT_SECONDS = 2.0  # how often the engine's state is written for `status`
LOCK_CHECK_SECONDS = 1.0  # how often the tick checks the journal's lock file is still its own
LOCK_LOST_CHECKS = 3  # checks in a row another process holds a re-created lock: the engine stops
FUTURE_TOLERANCE_SECONDS = 5.0  # how far ahead of our clock a venue timestamp may be  # the journal's WAL is checkpointed from the tick, never on an exit  # momentum / volatility score history kept for the window rules
# Alerts about exits: they carry `Engine.data_note` ("delayed data") when there is one.
_EXIT_ALERT_KINDS = frozenset(
    {
        AlertKind.EXIT_SIGNAL,
        AlertKind.AUTO_STOP,
        AlertKind.EXECUTION_FAILURE,
        AlertKind.TRADE_CLOSED,
    }
)


@dataclass(slots=True)
class _Status:
    """The engine's latest evaluation of one open trade (what the snapshot shows)."""

    mark: float | None = None
    pnl: float | None = None
    pnl_pct: float | None = None
    results: list[rules.RuleResult] = field(default_factory=list)
    problem: str | None = None
    eval_ts: float = 0.0
    next_time_trigger: float = math.inf
    # Rules whose blocked exit was alerted -> when (repeated every BLOCKED_SIGNAL_REPEAT_SECONDS).
    signalled: dict[str, float] = field(default_factory=dict)
    # The fired rule whose exit cannot be sent, and why in a word (the row: "max_loss FIRED —
    # paused"); None when no rule fires or its exit goes out.
    blocked: tuple[str, str] | None = None
    exit_blocked_until: float = 0.0
    last_sample_ts: float = -math.inf
    criteria: Criteria | None = None
    peaks_dirty: bool = False  # peak/trough moved since last persisted
    time_value: float | None = None  # options and combos: the last evaluation's, $ per unit
    # The protection watchdog's input: the last evaluation on fresh, valid data that ran to its
    # end (Unix s; the adoption time until the first). See engine/watchdog.py.
    protected_ts: float = 0.0
    error: str | None = None  # the last evaluation raised (an internal fault of this trade)
    # A rule fired while the venue said the exit must wait (`Engine._exit_hold`: the market is
    # closed, other clients' orders): why, and the reason already alerted for this trade.
    exit_held: str | None = None
    held_told: str | None = None


@dataclass(slots=True)
class _Exit:
    intent_id: str
    trade_id: str
    rule: str
    manual: bool
    attempts: int = 0
    last_attempt_ts: float = -math.inf
    in_flight: bool = False  # an order (or its journal write) is outstanding: no retry may start
    unknown_coid: str | None = None  # an order whose outcome is unknown (timeout): look it up
    resend_coid: str | None = None  # an order the venue never saw: send again with the same id
    limits: dict[str, float | None] = field(default_factory=dict)  # client order id -> limit
    # client order id -> the held side's mid, for attempts priced while that mid was below the
    # ladder's floor (MID_TOO_LOW: the order sits at the floor and fills only if the book recovers)
    low_mids: dict[str, float] = field(default_factory=dict)
    # The exit's one warning is out (an attempt unfilled, rejected or of unknown outcome); the
    # rest of its attempts are in the journal, and giving up is a critical alert of its own.
    warned: bool = False
    detached: bool = False  # its venue call runs in a task (`Engine._detach`)
    held: str | None = None  # waiting, nothing sent, no attempt counted (`Engine._exit_hold`)


class _BusyGate:
    """Counts the events and commands being handled; `snapshot_async` waits for none, so that
    building the screen's picture never takes the CPU from a reaction in progress."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *_exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> None:
        if self.count:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # lands as its timeout fires, and a stopping engine would wait for this forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()


class Engine:
    """One supervisor engine over one journal and one venue."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        store: Store,
        venue: Venue,
        *,
        alerts: AlertBus | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.venue = venue
        self.config_path = config_path
        self.alerts = alerts or AlertBus(
            config.alerts.cooldown_seconds, config.engine.snapshot_alerts
        )
        self.alerts.store = store

        self.mode: Mode = config.auto_stop.mode
        self.armed: bool = config.auto_stop.armed
        self.paused_all: bool = False

        self.contracts: dict[str, Contract] = {}
        self.quotes: dict[str, Quote] = {}
        self.trades: dict[str, Trade] = {}
        self.by_contract: dict[str, set[str]] = {}
        self.status: dict[str, _Status] = {}
        self.exits: dict[str, _Exit] = {}

        self.symbol = "BTC-USD"
        # The spot source in use (see `spot_source`): engine.feeds.spot_feed sets it.
        self._spot_source: str | None = "sim" if venue.name == "sim" else None
        # Implied volatility, e.g. Deribit's DVOL, as a fraction, and its reading's time (Unix s):
        # the probability model's sigma with [signals] sigma_source = "implied" (see sigma_used).
        self.implied_vol: float | None = None
        self.implied_vol_ts: float | None = None
        # VIX (index points) and its time, from the market feed (`vix_update`): while fresh,
        # the regime comes from its level ([signals] vix_regime_thresholds).
        self.vix: float | None = None
        self.vix_ts: float | None = None
        self._regime_since = 0.0  # when the VIX regime candidate first appeared
        # The exchange's hours (engine.market_hours.MarketHours) for options and stocks: TTC
        # counts to its next close. None on sim and Kalshi (the binary event's close).
        self.market_hours: ExchangeHours | None = None
        # Quotes a market feed says cannot be trusted right now (IB's market data farm broken,
        # TWS lost IB, fresh data not in yet after a recovery): contract id -> why. The data
        # guard refuses them until the feed releases them (`hold_quotes` / `release_quotes`).
        self.quote_holds: dict[str, str] = {}
        # A note every exit alert and the header badge carry (IB in live mode on delayed
        # market data: "delayed data"); empty when there is nothing to say.
        self.data_note = ""
        self.spot_hist = signals.SpotHistory()
        # The price-gap rule's baseline: the last live spot (ts, price) and the price before the
        # newest one when both were fresh in a row; None after an outage, an invalid spot or a
        # restart (an outage is not a gap: the comparison starts over with the next price).
        self._gap_last: tuple[float, float] | None = None
        self._gap_prev: float | None = None
        # Spot samples not journaled yet, and when the last were (see _save_spot).
        self._spot_unsaved: list[tuple[float, float]] = []
        self._spot_saved_ts = -math.inf
        self.vol = self._new_vol_tracker(config)
        self.momentum_deltas: dict[int, float | None] = {}
        self.momentum_bps: float | None = None
        self.momentum_hist: deque[tuple[float, float]] = deque()
        self.vol_hist: deque[tuple[float, float]] = deque()
        self._criteria_cache: dict[tuple[str, tuple[tuple[str, Any], ...]], Criteria] = {}
        self._window_cache: dict[tuple[str, float], tuple[tuple[float, float], ...]] = {}
        self._last_regime: str | None = None
        self._regime_candidate: str | None = None
        self._regime_count = 0
        self._regime_seen_state: signals.VolatilityState | None = None
        self._regime_set_ts = -math.inf  # when the current realised regime began (market time)
        self._last_opportunity: dict[str, float] = {}

        self._bad: dict[str, str] = {}  # data-quality episodes: key -> problem
        self._bad_rows: dict[int, str] = {}  # bad trades rows alerted: rowid -> fingerprint
        self._bad_row_list: list[BadRow] = []  # the bad rows of the last look at the journal
        self._alerted: set[str] = set()  # episodes whose start was alerted (recovery is too)
        self._pending_settle: dict[str, float] = {}  # trade -> payout, settled during an exit
        # Contracts settled here -> when: a venue may list such a position until it pays out,
        # and it must not come back as a new trade meanwhile.
        self._settled: dict[str, float] = {}
        self._holding_seq = 0  # see _touch
        self._expiry_watch: set[str] = set()  # contracts traded here, until their expiry value
        self._touched: dict[str, int] = {}  # contract -> _holding_seq of its last change
        self._breaches: set[str] = set()
        self._risk = RiskView(0, 0.0, 0.0, ())
        self._realized_today = 0.0
        self._today = ""
        self._last_opportunity_scan = -math.inf
        self._last_positions_poll = -math.inf
        self._last_checkpoint = -math.inf
        self._last_heartbeat = -math.inf
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._positions_task: asyncio.Task[None] | None = None
        self.positions_poll_budget = POSITIONS_POLL_BUDGET_SECONDS
        self._exit_tasks: set[asyncio.Task[None]] = set()  # exits waiting on resting orders
        self._combos_of_leg: dict[str, set[str]] = {}  # leg contract -> combos using it
        self._marks_pending: list[tuple[str, float, float, float, float]] = []
        self._seq = 0
        self._dirty = True
        self._snapshot: Snapshot | None = None
        self._busy = _BusyGate()
        self._stop = asyncio.Event()
        # Why the engine stopped itself (the disk refused a journal write, or the journal's lock
        # was lost); `run` raises it once it has stopped.
        self.fatal: StoreError | None = None
        self._fatal_task: asyncio.Task[None] | None = None
        self._started = False  # start() finished (before, a failure is start()'s to report)
        self._last_lock_check = -math.inf
        self._lock_lost = 0  # checks in a row the lock file was another process's
        if hasattr(store, "on_unwritable"):
            store.on_unwritable = self._journal_unwritable
        self.subscribers: list[Callable[[Snapshot], None]] = []
        self.recorders: list[Callable[[MarketEvent], None]] = []
        self.exit_listeners: list[Callable[[dict[str, Any]], None]] = []
        # What the journal booked besides exits, for the tape (engine/tape.py): ("fill", {...})
        # for each fill of an exit order, ("closed", {...}) for a close without an order
        # (settled, external, closed elsewhere). Called on the reaction path: must not block.
        self.tape_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        # Extra keys of the heartbeat (`status` reads them), e.g. the tape's drop count.
        self.heartbeat_extras: dict[str, Callable[[], Any]] = {}
        self.started_ts: float | None = None
        # Which open trades are not protected right now (engine/watchdog.py), checked at every
        # tick and by a task of its own that does not depend on the tick (`_watchdog_loop`).
        self.watchdog = ProtectionWatchdog(config.engine.unprotected_limit())
        self._unprotected_episodes = 0
        # Trades whose market is closed now (`_watch`), and when each was last seen so: the
        # watchdog's clock restarts at the open.
        self.market_closed: set[str] = set()
        self._closed_seen: dict[str, float] = {}
        self._last_tick_done: float | None = None
        self._tick_stalled = False
        # Quote episodes started / ended inside a tick or a batch of quotes, alerted as one
        # (`_grouped_quote_alerts`); None outside such a block.
        self._grouping: (
            tuple[list[tuple[str, str, str | None, list[str]]], list[tuple[str, str | None]]]
            | None
        ) = None

    # ------------------------------------------------------------------ start-up and reconcile

    async def start(
        self,
        demo: Callable[[float], list[OpenEvent]] | None = None,
        spot_backfill: Sequence[tuple[float, float]] = (),
        restore_spot: bool = True,
    ) -> None:
        """Load the journal and persisted state, reconcile with the venue, open demo trades.

        The journaled spot history of `self.symbol`, with `spot_backfill` (past `(ts, price)`
        the caller has, e.g. the simulated market's path through the time it was stopped), seeds
        the spot history, so momentum, volatility and the regime are there from the first tick
        (`restore_spot` False: not the journal's, e.g. for a replay, whose file is the session).
        """
        now = self.clock.now()
        self.started_ts = now
        await self._restore_spot(now, spot_backfill, journal=restore_spot)
        saved_armed = await self.store.get_state("armed")
        saved_paused = await self.store.get_state("paused_all")
        if saved_armed is not None:
            self.armed = bool(saved_armed)
        if saved_paused is not None:
            self.paused_all = bool(saved_paused)
        await self.store.set_state("config_armed", self.config.auto_stop.armed, now)

        if not self.alerts.recent:
            self.alerts.restore(await self.store.recent_alerts(self.alerts.recent.maxlen or 200))
        for t in await self.store.load_trades(ctx=self._row_context(now)):
            self._adopt(t)
        await self._alert_bad_rows(self.store.last_bad_rows)
        await self._load_realized_today(now)
        await self._reconcile_intents(now)
        for t in list(self.trades.values()):
            if t.state == TradeState.CLOSING and t.trade_id not in self.exits:
                # A crash between two journal writes left it CLOSING with no exit in flight:
                # it must be protected again, not shown as closing forever.
                await self._reopen(
                    t,
                    now,
                    None,
                    AlertKind.EXECUTION_FAILURE,
                    Severity.WARNING,
                    f"{t.trade_id} was left 'closing' with no exit in flight; watching it again",
                )
        await self._take_commands()  # e.g. positions released by `trades close` while stopped
        if demo is not None and not await self.store.trade_rows(1):  # any row, bad ones too
            for ev in demo(now):
                await self._open_trade(ev, source="demo")
        await self._sync_paper_positions()
        await self._poll_positions(now)
        self._dirty = True
        self._started = True

    def _adopt(self, t: Trade) -> None:
        for rec in self.recorders:
            rec(
                OpenEvent(
                    t.opened_ts, t.trade_id, t.contract_id, t.side, t.qty, t.entry_price, t.strategy
                )
            )
        self.trades[t.trade_id] = t
        self.by_contract.setdefault(t.contract_id, set()).add(t.trade_id)
        if t.trade_id not in self.status:
            # The watchdog's grace starts here: a trade is unprotected once it has gone
            # `unprotected_after_seconds` without an evaluation on fresh data.
            self.status[t.trade_id] = _Status(protected_ts=self.clock.now())
        self._touch(t.contract_id)
        self._expiry_watch.add(t.contract_id)  # options: their value at expiry, for the metrics

    async def _record_expiries(self, now: float) -> None:
        """An option (or combo of options) traded here that reached its expiry: record its value
        there (intrinsic at the underlying's price at the close) as its settlement, for the
        metrics' rule effectiveness (binaries are recorded by `_on_settle`)."""
        for cid in list(self._expiry_watch):
            c = self.contracts.get(cid)
            if c is None or c.type not in ("option_call", "option_put", "combo"):
                self._expiry_watch.discard(cid)
                continue
            if c.close_ts > now:
                continue
            value = self._expiry_value(c)
            if value is None and now - c.close_ts < SETTLEMENT_WAIT_SECONDS:
                continue  # no price of the underlying at the close yet
            self._expiry_watch.discard(cid)
            if value is None:
                log.info("%s expired with no underlying price known: not recorded", cid)
                continue
            try:
                await self.store.record_settlement(cid, value, c.close_ts)
            except Exception:
                log.exception("could not record the expiry value of %s", cid)

    def _expiry_value(self, c: Contract) -> float | None:
        """Per unit at expiry: an option's intrinsic value at the underlying's price at its close
        (the spot history when it is the engine's symbol, else the last quote's model price);
        a combo's, the sum of ratio × its legs'."""
        if c.type == "combo":
            total = 0.0
            for leg in c.legs:
                lc = self.contracts.get(leg.contract_id)
                v = self._expiry_value(lc) if lc is not None and not lc.legs else None
                if v is None:
                    return None
                total += leg.ratio * v
            return total
        und = self.spot_hist.price_at(c.close_ts) if c.underlying == self.symbol else None
        if und is None:
            q = self.quotes.get(c.id)
            und = q.und_price if q is not None else None
        return pricing.intrinsic_value(c, und) if und is not None and und > 0 else None

    def _touch(self, contract_id: str) -> None:
        """Our holding in `contract_id` changed (a trade opened, filled or left): a positions
        poll whose answer was read before this cannot be compared with the book after it."""
        self._holding_seq += 1
        self._touched[contract_id] = self._holding_seq

    def _forget(self, trade_id: str) -> None:
        t = self.trades.pop(trade_id, None)
        self.status.pop(trade_id, None)
        self.exits.pop(trade_id, None)
        if t is not None:
            self._touch(t.contract_id)
            ids = self.by_contract.get(t.contract_id)
            if ids is not None:
                ids.discard(trade_id)
                if not ids:
                    del self.by_contract[t.contract_id]

    async def _reconcile_intents(self, now: float) -> None:
        """Match journaled exit intents against the venue: nothing lost, nothing sent twice."""
        for intent in await self.store.open_intents():
            iid, tid = intent["intent_id"], intent["trade_id"]
            t = self.trades.get(tid)
            if t is None and tid in self._bad_row_ids():
                continue  # left as journaled: reconciled once the row is fixed and we restart
            if t is None:
                await self.store.update_intent(iid, status="cancelled", ts=now)
                continue
            manual = intent["rule"] in (ExitReason.MANUAL, ExitReason.CLOSE_ALL)
            ex = _Exit(iid, tid, intent["rule"], manual, attempts=int(intent.get("attempts") or 0))
            self.exits[tid] = ex
            t.state = TradeState.CLOSING
            orders = await self.store.orders_for_intent(iid)
            ex.attempts = max(ex.attempts, len(orders))
            for order in orders:
                if order["status"] not in ("pending", "unknown"):
                    continue
                coid = order["client_order_id"]
                ex.limits[coid] = order.get("limit_price")  # a resend asks the journaled price
                try:
                    res = await self.venue.lookup(coid)
                except VenueError as e:
                    ex.unknown_coid = coid
                    await self._alert(
                        AlertKind.EXECUTION_FAILURE,
                        Severity.WARNING,
                        f"cannot reconcile exit {coid} for {tid}: {e}; will retry",
                        tid,
                    )
                    continue
                if res is None:
                    ex.resend_coid = coid
                else:
                    await self._apply_result(t, ex, coid, res, now, prior=order)
                    if t.state == TradeState.CLOSED:
                        break
            if t.state == TradeState.CLOSED:
                continue
            if not self._may_send(ex):
                await self._reopen(
                    t,
                    now,
                    iid,
                    AlertKind.EXECUTION_FAILURE,
                    Severity.CRITICAL,
                    f"exit of {tid} ({ex.rule}) was journaled but not completed before the restart; "
                    f"not re-sent because {self._why_not_sending(ex)} — the trade is left open",
                )
            else:
                await self._alert(
                    AlertKind.EXECUTION_FAILURE,
                    Severity.WARNING,
                    f"resuming exit of {tid} ({ex.rule}) journaled before the restart",
                    tid,
                )

    async def _reopen(
        self,
        t: Trade,
        now: float,
        intent_id: str | None,
        kind: AlertKind,
        severity: Severity,
        message: str,
    ) -> None:
        """Give up an exit and watch the trade again: the intent's cancellation and the trade's
        return to OPEN are one journal commit (a crash between them would strand the trade)."""
        self.exits.pop(t.trade_id, None)
        t.state = TradeState.OPEN
        intent = (intent_id, "cancelled", None) if intent_id is not None else None
        await self.store.book_result(trade=t, ts=now, intent=intent)
        await self._alert(kind, severity, message, t.trade_id)

    async def _load_realized_today(self, now: float) -> None:
        self._today = _utc_day(now)
        total = 0.0
        for t in await self.store.all_trades(limit=5000):
            if t.closed_ts is not None and _utc_day(t.closed_ts) == self._today and t.realized_pnl:
                total += t.realized_pnl
        self._realized_today = total

    async def _sync_paper_positions(self) -> None:
        """A simulated account holds at least what the journal holds: open missing paper
        positions (e.g. trades another program journaled). Extra positions are left to the
        positions poll, which adopts them like any position opened at a broker."""
        open_position = getattr(self.venue, "open_position", None)
        if open_position is None:
            return
        held = {(p.contract_id, p.side): p.qty for p in await self.venue.positions()}
        want: dict[tuple[str, str], float] = {}
        entry: dict[tuple[str, str], float] = {}
        for t in self.trades.values():
            if t.venue == self.venue.name:
                key = (t.contract_id, t.side)
                want[key] = want.get(key, 0.0) + t.qty
                entry.setdefault(key, t.entry_price)
        for key, qty in want.items():
            missing = qty - held.get(key, 0.0)
            if missing > EPS:
                open_position(key[0], key[1], missing, entry[key])

    # ------------------------------------------------------------------ running

    async def run(self, feeds: Iterable[Any] = ()) -> None:
        """Run feeds and the periodic tick until `stop()`."""
        tasks = [
            asyncio.create_task(f.run(self), name=f"feed-{getattr(f, 'name', '?')}") for f in feeds
        ]
        tasks.append(asyncio.create_task(self._tick_loop(), name="tick"))
        tasks.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                if d is not stop and d.exception() is not None:
                    raise d.exception()  # type: ignore[misc]
        finally:
            for t in [*tasks, stop]:
                t.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)
            await self.drain_exits()  # orders working at the venue are answered, then journaled
            await self.flush()
        if self.fatal is not None:
            raise self.fatal

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """`stop()` was called (or the engine stopped itself: see `fatal`)."""
        return self._stop.is_set()

    async def wait_stopping(self) -> None:
        await self._stop.wait()

    async def _check_lock(self, now: float) -> None:
        """The journal's lock file is still this engine's (from the tick). Deleted or replaced,
        it is re-created and one warning says so; held by another process (an engine started
        meanwhile) for LOCK_LOST_CHECKS checks in a row, this engine stops: two engines must
        never share a journal."""
        check = getattr(self.store, "check_lock", None)
        due = now - self._last_lock_check >= LOCK_CHECK_SECONDS
        if check is None or self.fatal is not None or not due:
            return
        self._last_lock_check = now
        path = getattr(self.store, "lock_path", "the lock file")
        try:
            what = check()
        except StoreError as e:
            self._lock_lost += 1
            if self._lock_lost >= LOCK_LOST_CHECKS:
                self.fail(StoreLocked(f"{e}; this engine stops (start one engine only)"))
            elif self._lock_lost == 1:
                await self._alert(
                    AlertKind.EXECUTION_FAILURE,
                    Severity.CRITICAL,
                    f"{e}; retrying, and this engine stops if it persists: stop the other one",
                    subject="engine:lock",
                )
            return
        if self._lock_lost:
            self._lock_lost = 0
        if what is not None:
            await self._alert(
                AlertKind.EXECUTION_FAILURE,
                Severity.WARNING,
                f"the journal's lock file {path} was {what} while this engine ran; re-created, "
                "so a second engine is kept out again. Never delete it while the engine runs",
                subject="engine:lock",
            )

    def _journal_unwritable(self, err: StoreError) -> None:
        """The disk refused a journal write (the store calls this once): nothing more can be
        journaled, so nothing more may be sent. Say so on every channel that does not need the
        disk (desktop, webhook, stdout, the screen), then stop."""
        self.fail(err)

    def fail(self, err: StoreError) -> None:
        """Stop the engine because it cannot go on safely: one critical alert first, then stop;
        `run` raises `err` (the headless command and the screen show it)."""
        if self.fatal is not None:
            return
        self.fatal = err
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or not self._started:  # start() raises it to whoever started us
            self._stop.set()
            return
        self._fatal_task = loop.create_task(self._stop_on(err), name="engine-fatal")

    async def _stop_on(self, err: StoreError) -> None:
        ids = sorted(t.trade_id for t in self.trades.values() if t.state != TradeState.CLOSED)
        shown = ", ".join(ids[:8]) + (", …" if len(ids) > 8 else "")
        watched = (
            f"{len(ids)} open trade(s) are NOT protected ({shown}): watch or close them at the "
            "venue"
            if ids
            else "no open trades"
        )
        try:
            await self.alerts.raise_(
                self.clock.now(),
                AlertKind.EXECUTION_FAILURE,
                Severity.CRITICAL,
                f"ENGINE STOPPED: {err}. {watched}",
                subject="engine:fatal",
                every_channel=True,  # whatever kinds a channel was set to pass
            )
            self._dirty = True
        except Exception:
            log.exception("the engine's last alert failed")
        finally:
            self.stop()

    async def _tick_loop(self) -> None:
        period = self.config.engine.tick_seconds
        while not self._stop.is_set():
            now = self.clock.now()
            nxt = (math.floor(now / period) + 1) * period
            await self.clock.sleep(nxt - now)
            try:
                await self.tick()
            except Exception as e:
                if self.fatal is not None:  # the journal refused: its own alert says so
                    log.error("tick failed: %s", e)
                    continue
                log.exception("tick failed")
                await self._alert(
                    AlertKind.DATA_QUALITY, Severity.CRITICAL, "engine tick failed; see the log"
                )

    async def _watchdog_loop(self) -> None:
        """The dead man's switch, on its own task: every tick ends with the watchdog's scan, but
        a tick that hangs (or a loop of them that died) must not silence it, so when the tick is
        late this task scans instead. A watchdog that fails is itself said, once."""
        period = self.config.engine.tick_seconds
        failed = False
        while not self._stop.is_set():
            await self.clock.sleep(period)
            now = self.clock.now()
            try:
                await self._check_tick_alive(now)
                done = self._last_tick_done
                if self._tick_stalled or done is None or now - done > 2 * period:
                    await self._watch(now)  # the tick did not scan lately: no double work
                failed = False
            except Exception as e:
                log.exception("watchdog failed")
                if not failed:
                    failed = True
                    with contextlib.suppress(Exception):
                        await self._alert(
                            AlertKind.DATA_QUALITY,
                            Severity.CRITICAL,
                            f"the protection watchdog failed ({type(e).__name__}: {e}); "
                            "unprotected trades may not be reported — see the log",
                            subject="watchdog-failed",
                        )

    async def _check_tick_alive(self, now: float) -> None:
        """One critical alert when the tick has not completed for longer than the watchdog's
        limit (staleness checks, time rules and exit retries wait on it), one when it is back."""
        done = self._last_tick_done if self._last_tick_done is not None else self.started_ts
        if done is None:
            return
        late = now - done
        if late > self.watchdog.limit and not self._tick_stalled:
            self._tick_stalled = True
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.CRITICAL,
                f"engine tick has not completed for {late:.0f}s: staleness checks, time rules "
                "and exit retries are not running; see the log",
                subject="tick-stalled",
            )
        elif late <= self.watchdog.limit and self._tick_stalled:
            self._tick_stalled = False
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.INFO,
                "engine tick running again",
                subject="tick-running",
            )

    async def _watch(self, now: float) -> None:
        """Scan every open trade for protection and alert each episode once, grouped.

        A trade whose market the venue says is closed (`exit_hold`: MARKET_CLOSED; IBKR's nights
        and weekends, when option lines send no ticks) is "market closed", not unprotected: no
        exit could go out anyway, and a critical alert for the whole book at every close would
        teach a trader to ignore the badge. Its watchdog clock restarts at the open."""
        closed = self._market_closed_trades()
        for tid in closed:
            self._closed_seen[tid] = now
        for tid in [t for t in self._closed_seen if t not in self.trades]:
            del self._closed_seen[tid]
        self.market_closed = closed
        change = self.watchdog.scan(
            now,
            (
                (
                    tid,
                    t.contract_id,
                    max(
                        st.protected_ts if st is not None else -math.inf,
                        self._closed_seen.get(tid, -math.inf),
                    ),
                )
                for tid, t in self.trades.items()
                if t.state != TradeState.CLOSED
                for st in (self.status.get(tid),)
            ),
            self._unprotected_reason,
        )
        if not (change.new or change.back or change.gone):
            return
        self._dirty = True
        current = len(self.watchdog.current)
        to_closed = [tid for tid, _ in change.back if tid in closed]
        if to_closed:
            change = replace(
                change, back=tuple(b for b in change.back if b[0] not in closed)
            )
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.INFO,
                f"{len(to_closed)} unprotected trade{'s' if len(to_closed) != 1 else ''} no "
                f"longer counted: market closed ({', '.join(sorted(to_closed)[:8])}); "
                "watched again from the open",
                to_closed[0] if len(to_closed) == 1 else None,
                data={"market_closed": sorted(to_closed)},
                subject=f"mkt-closed:{self._unprotected_episodes}:{now}",
            )
        if change.new:
            self._unprotected_episodes += 1
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.CRITICAL,
                describe_new(change.new, current),
                change.new[0].trade_id if len(change.new) == 1 else None,
                data={
                    "unprotected": {u.trade_id: u.reason for u in change.new},
                    "total_unprotected": current,
                },
                subject=f"unprotected:{self._unprotected_episodes}",
            )
        if change.back or change.gone:
            ended = [tid for tid, _ in change.back] + list(change.gone)
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.WARNING if current else Severity.INFO,
                describe_back(change.back, current, change.gone),
                ended[0] if len(ended) == 1 else None,
                data={"protected": [tid for tid, _ in change.back], "closed": list(change.gone)},
                subject=f"protected:{self._unprotected_episodes}:{now}",
            )

    def _market_closed_trades(self) -> set[str]:
        """The open trades whose contract's market the venue says is closed now (asked once per
        contract; a venue without hours, or one that fails to say, closes nothing)."""
        hold = getattr(self.venue, "exit_hold", None)
        if hold is None:
            return set()
        by_contract: dict[str, bool] = {}
        out = set()
        for tid, t in self.trades.items():
            cid = t.contract_id
            if cid not in by_contract:
                try:
                    why = hold(cid)
                except Exception:
                    log.exception("exit_hold(%s) failed", cid)
                    why = None
                by_contract[cid] = isinstance(why, str) and why.startswith("MARKET_CLOSED")
            if by_contract[cid]:
                out.add(tid)
        return out

    def _unprotected_view(self) -> tuple[Unprotected, ...]:
        """Every open position nothing protects now: the watchdog's trades, then the journal's
        open rows the engine cannot supervise (each alerted on its own when found)."""
        rows = tuple(
            Unprotected(
                f"row {b.rowid}: {b.shown_id}",
                "",
                self.started_ts or 0.0,
                f"bad journal row, not supervised: {b.problem}",
            )
            for b in self.bad_rows
        )
        return tuple(self.watchdog.current.values()) + rows

    def _unprotected_reason(self, tid: str, age: float) -> str:
        st = self.status.get(tid)
        t = self.trades.get(tid)
        if st is not None and st.error is not None:
            return f"internal error evaluating it: {st.error}"
        if st is not None and st.problem is not None:
            return st.problem
        cid = t.contract_id if t is not None else "?"
        if self._tick_stalled:
            return f"{cid}: not evaluated for {age:.0f}s (the engine's tick is stalled)"
        return f"{cid}: not evaluated for {age:.0f}s (no fresh quote reached the engine)"

    async def handle_safely(self, ev: MarketEvent) -> None:
        """`handle` for feed tasks: an unexpected error in one event raises a critical alert and
        the feed goes on — a dead feed task would leave every trade unprotected."""
        try:
            await self.handle(ev)
        except Exception as e:
            log.exception("event %r failed", ev)
            if self.fatal is not None:
                return  # the journal refused: its own alert says so, and the engine stops
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.CRITICAL,
                f"internal error on a {ev.kind} event ({type(e).__name__}: {e}); the engine goes on",
                subject=f"internal:{type(e).__name__}",
            )

    async def handle(self, ev: MarketEvent) -> None:
        """Take one market event and react to it at once."""
        with self._busy:
            await self._handle(ev)

    async def _handle(self, ev: MarketEvent) -> None:
        if self.recorders and not isinstance(ev, OpenEvent | CommandEvent):
            for rec in self.recorders:
                rec(ev)  # openings and commands are recorded where they take effect
        if isinstance(ev, QuoteEvent):
            await self._on_quote(ev.quote)
        elif isinstance(ev, SpotEvent):
            await self._on_spot(ev)
        elif isinstance(ev, ContractEvent):
            await self._on_contract(ev.contract)
        elif isinstance(ev, OpenEvent):
            await self._open_trade(ev, source="replay")
        elif isinstance(ev, SettleEvent):
            await self._on_settle(ev)
        elif isinstance(ev, CommandEvent):
            await self.command(Command(ev.action, ev.trade_id))  # type: ignore[arg-type]
        self._maybe_publish()

    async def _on_contract(self, c: Contract) -> None:
        self.contracts[c.id] = c
        self._dirty = True
        if c.legs:
            for leg in c.legs:
                self._combos_of_leg.setdefault(leg.contract_id, set()).add(c.id)
            cq = pricing.combo_quote(c, self.quotes)
            if cq is not None:
                await self._on_quote(cq)

    async def handle_quotes(self, quotes: Sequence[Quote]) -> None:
        """Quotes that arrived together (one batch of a venue's ticks): all are applied before
        anything is evaluated, so a combo is never priced from one leg's new quote and another
        leg's old one of the same moment (a transient price a rule could fire on)."""
        with self._busy:
            try:
                for rec in self.recorders:
                    for q in quotes:
                        rec(QuoteEvent(q.ts, q))
                async with self._grouped_quote_alerts():
                    accepted = [q.id for q in quotes if await self._accept_quote(q)]
                    await self._quotes_changed(accepted)
            except Exception as e:
                log.exception("a batch of %d quotes failed", len(quotes))
                await self._alert(
                    AlertKind.DATA_QUALITY,
                    Severity.CRITICAL,
                    f"internal error on a batch of quotes ({type(e).__name__}: {e}); "
                    "the engine goes on",
                    subject=f"internal:{type(e).__name__}",
                )
            self._maybe_publish()

    async def _on_quote(self, q: Quote) -> None:
        if await self._accept_quote(q):
            await self._quotes_changed([q.id])

    async def _quotes_changed(self, ids: Sequence[str]) -> None:
        """Evaluate the trades on contracts whose quotes changed, then re-derive the quotes of
        the combos they are legs of and evaluate those combos' trades."""
        now = self.clock.now()
        combos: dict[str, None] = {}
        for cid in ids:
            for tid in list(self.by_contract.get(cid, ())):
                await self._evaluate(tid, now)
            combos.update(dict.fromkeys(self._combos_of_leg.get(cid, ())))
        for combo_id in combos:
            combo = self.contracts.get(combo_id)
            try:
                cq = pricing.combo_quote(combo, self.quotes) if combo is not None else None
            except Exception as e:  # one combo's fault stays with it (its trades go stale)
                await self._contract_fault(combo_id, e)
                continue
            if f"contract:{combo_id}" in self._bad:
                await self._recover(f"contract:{combo_id}")
            if cq is not None and cq != self.quotes.get(combo_id) and await self._accept_quote(cq):
                for tid in list(self.by_contract.get(combo_id, ())):
                    await self._evaluate(tid, now)

    async def _accept_quote(self, q: Quote) -> bool:
        """Store `q` unless it is from the future or older than the one held (alerted)."""
        if await self._from_the_future(q.ts, f"quote:{q.id}"):
            return False
        old = self.quotes.get(q.id)
        if old is not None and q.ts < old.ts:
            # Out of order: never let an older quote replace a newer one.
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.INFO,
                f"{q.id}: dropped a quote {old.ts - q.ts:.1f}s older than the last one",
                data={"source": f"quote:{q.id}"},
                subject=f"order:{q.id}",
            )
            return False
        self.quotes[q.id] = q
        self._dirty = True
        return True

    async def _from_the_future(self, ts: float, source: str) -> bool:
        """A timestamp beyond now + tolerance is bad data (clock skew, a broken feed): believing
        it would freeze the book, since every real update would then look out of order."""
        ahead = ts - self.clock.now()
        if ahead <= FUTURE_TOLERANCE_SECONDS:
            return False
        await self._alert(
            AlertKind.DATA_QUALITY,
            Severity.WARNING,
            f"{source}: ignored an update stamped {ahead:.0f}s in the future (check the clocks)",
            data={"source": source, "ahead_seconds": ahead},
            subject=f"future:{source}",
        )
        return True

    async def _on_spot(self, ev: SpotEvent) -> None:
        if await self._from_the_future(ev.ts, f"spot {ev.symbol}"):
            return
        latest = self.spot_hist.latest()
        if latest is not None and ev.ts < latest[0]:
            return
        if not (math.isfinite(ev.price) and ev.price > 0):
            await self._episode("spot", f"invalid spot price {ev.price!r} for {ev.symbol}", None)
            return
        if ev.symbol != self.symbol and len(self.spot_hist):
            # Another instrument: its signals must not be computed on this one's history.
            self.spot_hist.clear()
            self.vol.reset()
            self.momentum_hist.clear()
            self.vol_hist.clear()
            self._spot_unsaved.clear()
            self._gap_last = self._gap_prev = None
        self.symbol = ev.symbol
        self._gap_baseline(ev.ts, ev.price)
        self.spot_hist.add(ev.ts, ev.price)
        self._spot_unsaved.append((ev.ts, ev.price))
        now = self.clock.now()
        vs = self._update_signals(ev.ts)
        await self._track_regime(vs)
        await self._recover("spot")
        await self._evaluate_on_spot(now)
        await self._save_spot(ev.ts)

    def _spot_keep_seconds(self) -> tuple[float, float]:
        """How far back the journaled spot history reaches, in seconds: (every tick within the
        longest momentum window and a minute, one close a minute within the volatility lookback
        and its longest window)."""
        sc = self.config.signals
        ticks = (max(signals.MOMENTUM_WINDOWS_MIN) + 1) * signals.SECONDS_PER_MINUTE
        keep = (sc.volatility_lookback_minutes + max(sc.volatility_windows_minutes) + 1) * 60.0
        return ticks, max(keep, ticks)

    async def _save_spot(self, ts: float) -> None:
        """Journal the spot samples taken since the last time, every SPOT_SAVE_SECONDS of market
        time, bounded to what the signals need after a restart (`_spot_keep_seconds`). A failed
        write is logged and retried with the next batch: the signals do not depend on it."""
        if not self._spot_unsaved or ts - self._spot_saved_ts < SPOT_SAVE_SECONDS:
            return
        add = getattr(self.store, "add_spot_samples", None)
        if add is None or getattr(self.store, "readonly", False):
            self._spot_unsaved.clear()
            return
        self._spot_saved_ts = ts
        ticks, keep = self._spot_keep_seconds()
        rows, self._spot_unsaved = self._spot_unsaved, []
        try:
            await add(self.symbol, rows, ts - ticks, ts - keep)
        except StoreError as e:
            log.warning("could not journal %d spot samples: %s", len(rows), e)
            self._spot_unsaved = rows[-int(keep // SPOT_SAVE_SECONDS) :] + self._spot_unsaved

    async def _restore_spot(
        self, now: float, backfill: Sequence[tuple[float, float]], journal: bool = True
    ) -> None:
        """Seed the spot history from the journal (with `journal`) and `backfill` at start-up."""
        load = getattr(self.store, "spot_samples", None) if journal else None
        rows: list[tuple[float, float]] = []
        if load is not None:
            try:
                rows = await load(self.symbol, now - self._spot_keep_seconds()[1])
            except StoreError as e:
                log.warning("could not read the journaled spot history: %s", e)
        rows.extend(backfill)
        if rows:
            n = self.seed_spot_history(rows)
            log.info("spot history: %d samples of %s restored at start", n, self.symbol)

    def _gap_baseline(self, ts: float, price: float) -> None:
        """Move the price-gap baseline to a new live spot: the previous live price counts only
        if it was still fresh when this one came (at most `max_spot_age_seconds` before it) and
        the spot was in no data-quality episode (stale, invalid) meanwhile."""
        last = self._gap_last
        if last is not None and ts == last[0]:
            self._gap_last = (ts, price)  # the same instant, corrected: the baseline stays
            return
        fresh = (
            last is not None
            and ts - last[0] <= self.config.engine.max_spot_age_seconds
            and "spot" not in self._bad
        )
        self._gap_prev = last[1] if fresh and last is not None else None
        self._gap_last = (ts, price)

    def _update_signals(self, ts: float) -> signals.VolatilityState:
        """Momentum and volatility from the spot history as of `ts` (the newest sample)."""
        self.momentum_deltas = signals.momentum_deltas(self.spot_hist, ts)
        self.momentum_bps = signals.momentum_score_bps(
            self.momentum_deltas, self.config.signals.momentum_weights
        )
        if self.momentum_bps is not None:
            self.momentum_hist.append((ts, self.momentum_bps))
        vs = self.vol.update(self.spot_hist, ts)
        if vs.score is not None and (not self.vol_hist or self.vol_hist[-1][1] != vs.score):
            self.vol_hist.append((ts, vs.score))
        cutoff = ts - HISTORY_SECONDS
        while self.momentum_hist and self.momentum_hist[0][0] < cutoff:
            self.momentum_hist.popleft()
        while self.vol_hist and self.vol_hist[0][0] < cutoff:
            self.vol_hist.popleft()
        self._window_cache.clear()
        return vs

    @property
    def spot_source(self) -> str | None:
        """The spot source in use, for the market pane ("sim" with the sim venue until a spot
        feed says otherwise; None when a spot feed has no usable source)."""
        return self._spot_source

    @spot_source.setter
    def spot_source(self, name: str | None) -> None:
        if name != self._spot_source:
            self._spot_source = name
            self._dirty = True

    def seed_spot_history(self, closes: Sequence[tuple[float, float]]) -> int:
        """Seed the spot history with past closes `(ts, price)` (e.g. a venue's 1-minute bars at
        start-up) so momentum and volatility are available at once instead of after a warm-up.

        Closes are taken oldest first. Ones older than everything the history holds go in front
        of it (a backfill that came after the first live prices); ones newer go after it; ones in
        between, or invalid, are skipped. Momentum and volatility are recomputed ONCE, as of the
        newest sample; no rule is evaluated (these are past prices, not news). Returns how many
        were added.
        """
        for tl in self.tape_listeners:  # a replay of the tape seeds the same history
            tl("spot_history", {"ts": self.clock.now(), "closes": [list(c) for c in closes]})
        ordered = sorted(closes)
        oldest = self.spot_hist.oldest()
        added = 0
        if oldest is not None:
            added += self.spot_hist.prepend([c for c in ordered if c[0] < oldest[0]])
            if added:
                self.vol.reset()  # recompute now: its last sigma saw only the live prices
        for ts, price in ordered:
            latest = self.spot_hist.latest()
            if latest is not None and ts <= latest[0]:
                continue
            if not (math.isfinite(ts) and math.isfinite(price) and price > 0):
                continue
            if ts - self.clock.now() > FUTURE_TOLERANCE_SECONDS:
                continue
            self.spot_hist.add(ts, price)
            added += 1
        if added:
            newest = self.spot_hist.latest()
            assert newest is not None
            self._rebuild_signals(newest[0])
            self._dirty = True
            # Journaled too (a repeated ts only replaces); not the ones skipped among live ticks.
            self._spot_unsaved.extend(c for c in ordered if self.spot_hist.price_at(c[0]) == c[1])
        return added

    def _tape_call(self, call: str, *args: Any) -> None:
        """Tell the tape (engine/tape.py) of a feed's call that a replay of it makes again."""
        for tl in self.tape_listeners:
            tl("call", {"ts": self.clock.now(), "call": call, "args": list(args)})

    def _rebuild_signals(self, newest: float) -> None:
        """Recompute the volatility score's trailing sigma samples and the momentum and score
        histories over the seeded spot history, as if it had been live, then the signals as of
        `newest`: the volatility percentile, the regime and the reversal/spike windows are then
        what they would have been without the restart."""
        oldest = self.spot_hist.oldest()
        assert oldest is not None
        self.vol.reset()
        self.momentum_hist.clear()
        self.vol_hist.clear()
        step = self.vol.recompute_seconds
        first = max(oldest[0], newest - self.vol.lookback_minutes * signals.SECONDS_PER_MINUTE)
        n = int((newest - first) // step) if step > 0 else 0
        for k in range(n, 0, -1):
            self._update_signals(newest - k * step)
        self._update_signals(newest)

    async def source_problem(self, source: str, text: str) -> None:
        """A spot/market data source is not usable (`source` e.g. "coinbase"): one warning-level
        `data_quality` alert per episode (key `source:<name>`), however often it is reported."""
        self._tape_call("source_problem", source, text)
        await self._episode(f"source:{source}", text, None)
        self._dirty = True

    def hold_quotes(self, contract_ids: Iterable[str], reason: str) -> None:
        """A feed marks these contracts' quotes unusable at once (`reason` says why): no trade
        on them is evaluated or sent an order until `release_quotes`."""
        contract_ids = list(contract_ids)
        self._tape_call("hold_quotes", contract_ids, reason)
        for cid in contract_ids:
            self.quote_holds[cid] = reason
            for tid in self.by_contract.get(cid, ()):
                st = self.status.get(tid)
                if st is not None and st.problem is None:
                    st.problem = f"{cid}: {reason}"  # the next tick re-evaluates it
        self._dirty = True

    def release_quotes(self, contract_ids: Iterable[str]) -> None:
        """The feed has fresh data for these contracts again."""
        contract_ids = list(contract_ids)
        self._tape_call("release_quotes", contract_ids)
        for cid in contract_ids:
            self.quote_holds.pop(cid, None)
        self._dirty = True

    async def source_ok(self, source: str) -> None:
        """`source` works again: ends its episode; the recovery is announced if it was alerted."""
        self._tape_call("source_ok", source)
        await self._recover(f"source:{source}")
        self._dirty = True

    def regime_now(self, now: float) -> tuple[str | None, str]:
        """The regime and where it comes from: "vix" (its level) while VIX values arrive and
        are fresh, else "realized" (the volatility score)."""
        if self.vix is not None and self._vix_fresh(now):
            return signals.vix_regime(self.vix, self.config.signals.vix_regime_thresholds), "vix"
        return self.vol.state.regime, "realized"

    def _vix_fresh(self, now: float) -> bool:
        return (
            self.vix_ts is not None and now - self.vix_ts <= self.config.signals.vix_max_age_seconds
        )

    async def vix_update(self, value: float, ts: float) -> None:
        """A VIX value (index points) at `ts` (Unix seconds) from the market feed. An invalid
        one (NaN, inf, <= 0) is ignored with one data_quality alert per episode; one from the
        future or older than the last is ignored too."""
        self._tape_call("vix_update", value, ts)
        with self._busy:
            await self._on_vix(value, ts)
        self._maybe_publish()

    async def _on_vix(self, value: float, ts: float) -> None:
        ok = isinstance(value, int | float) and math.isfinite(value) and value > 0
        if not ok or not (isinstance(ts, int | float) and math.isfinite(ts)):
            what = f"value {value!r}" if not ok else f"timestamp {ts!r}"
            await self._episode("vix", f"invalid VIX {what}: ignored", None)
            return
        if await self._from_the_future(ts, "VIX"):
            return
        if self.vix_ts is not None and ts < self.vix_ts:
            return  # out of order: a newer value is already in
        self.vix, self.vix_ts = float(value), float(ts)
        self._dirty = True
        await self._recover("vix")
        regime = signals.vix_regime(self.vix, self.config.signals.vix_regime_thresholds)
        if regime is None or not self._vix_fresh(self.clock.now()):
            return
        if regime == self._last_regime:
            self._regime_candidate, self._regime_count = None, 0
            return
        if regime != self._regime_candidate:
            self._regime_candidate, self._regime_count, self._regime_since = regime, 0, ts
        self._regime_count += 1
        if self._last_regime is None:
            self._last_regime = regime
            return
        if (
            self._regime_count >= REGIME_CONFIRM_SAMPLES
            and ts - self._regime_since >= VIX_REGIME_CONFIRM_SECONDS
        ):
            old, self._last_regime = self._last_regime, regime
            self._regime_candidate, self._regime_count = None, 0
            await self._alert(
                AlertKind.REGIME_CHANGE,
                Severity.WARNING,
                f"volatility regime {old} → {regime} (VIX {self.vix:.1f})",
                data={"from": old, "to": regime, "vix": self.vix, "source": "vix"},
                subject="regime",
            )

    async def _track_regime(self, vs: signals.VolatilityState) -> None:
        """Alert on a regime change once it has held for REGIME_CONFIRM_SAMPLES volatility updates
        and the score history is long enough to mean something (no flapping at start-up).

        While VIX values arrive fresh the regime is theirs (`_on_vix`); once they go stale the
        volatility score's regime takes over, with one data_quality alert saying so."""
        if self.vix_ts is not None:
            now = self.clock.now()
            if self._vix_fresh(now):
                return
            if "vix" not in self._bad:
                await self._episode(
                    "vix",
                    f"VIX stale ({now - self.vix_ts:.0f}s old, limit "
                    f"{self.config.signals.vix_max_age_seconds:g}s): the regime comes from "
                    "realised volatility",
                    None,
                )
        if vs.regime is None or vs.score is None or vs is self._regime_seen_state:
            return
        self._regime_seen_state = vs
        cfg = self.config.signals
        # Hysteresis: the score must be past the current regime's boundary by the margin...
        target = signals.regime_past_margin(
            self._last_regime, vs.score, cfg.regime_thresholds, cfg.regime_margin
        )
        latest = self.spot_hist.latest()
        ts = latest[0] if latest is not None else self.clock.now()
        if self._last_regime is None:
            self._last_regime = target  # its sigma median: the whole lookback (_regime_set_ts)
            return
        if target == self._last_regime or not self._sigma_moved(
            vs.sigma, cfg.regime_min_sigma_change_percent
        ):
            self._regime_candidate, self._regime_count = None, 0  # no excursion, or it ended
            return
        up = signals.REGIMES.index(target) > signals.REGIMES.index(self._last_regime)
        cand = self._regime_candidate
        if (
            cand is None
            or (signals.REGIMES.index(cand) > signals.REGIMES.index(self._last_regime)) != up
        ):
            self._regime_count, self._regime_since = 0, ts  # a new excursion (or the other way)
        self._regime_candidate = target  # the latest regime of the same excursion
        self._regime_count += 1
        # ...and stay past it for the dwell time (and REGIME_CONFIRM_SAMPLES updates).
        if (
            self._regime_count >= REGIME_CONFIRM_SAMPLES
            and len(self.vol_hist) >= REGIME_MIN_HISTORY
            and ts - self._regime_since >= cfg.regime_dwell_seconds
        ):
            old, self._last_regime = self._last_regime, target
            self._regime_set_ts = ts
            self._regime_candidate, self._regime_count = None, 0
            await self._alert(
                AlertKind.REGIME_CHANGE,
                Severity.WARNING,
                f"volatility regime {old} → {target} (score {vs.score:.2f}, past the boundary "
                f"by {cfg.regime_margin:g} for {ts - self._regime_since:.0f}s)",
                data={
                    "from": old,
                    "to": target,
                    "score": vs.score,
                    "source": "realized",
                    "margin": cfg.regime_margin,
                    "dwell_seconds": ts - self._regime_since,
                },
                subject="regime",
            )

    def _sigma_moved(self, sigma: float | None, percent: float) -> bool:
        """Realised sigma is at least `percent` % away from its median since the current regime
        began (a percentile score alone wanders on constant volatility)."""
        if percent <= 0:
            return True
        ref = self.vol.median_sigma_since(self._regime_set_ts)
        if sigma is None or ref is None or ref <= 0:
            return False
        return abs(sigma / ref - 1.0) * 100.0 >= percent

    async def _settle_trade(self, t: Trade, payout: float, now: float) -> None:
        ex = self.exits.get(t.trade_id)
        if ex is not None and ex.unknown_coid is not None:
            # An order whose outcome is unknown may have filled: book that before settling.
            try:
                res = await self.venue.lookup(ex.unknown_coid)
            except VenueError:
                res = None
            if res is not None:
                coid, ex.unknown_coid = ex.unknown_coid, None
                await self._apply_result(t, ex, coid, res, now)
                if t.trade_id not in self.trades:
                    return
        ex = self.exits.pop(t.trade_id, None)
        if ex is not None:
            await self.store.update_intent(ex.intent_id, status="cancelled", ts=now)
        await self._close_in_journal(t, payout, ExitReason.SETTLED, now)
        await self._alert(
            AlertKind.TRADE_CLOSED,
            Severity.INFO,
            f"{t.trade_id} settled at {payout:.2f} ({t.contract_id}), P&L {t.realized_pnl:+.2f}",
            t.trade_id,
        )

    async def _after_in_flight(self, t: Trade) -> None:
        """Once an exit's order is answered: apply a settlement that arrived meanwhile."""
        payout = self._pending_settle.pop(t.trade_id, None)
        if payout is not None and t.trade_id in self.trades and t.state != TradeState.CLOSED:
            await self._settle_trade(t, payout, self.clock.now())

    async def _on_settle(self, ev: SettleEvent) -> None:
        now = self.clock.now()
        c = self.contracts.get(ev.contract_id)
        if not (math.isfinite(ev.value) and 0.0 <= ev.value <= 1.0) or (
            c is not None and not c.is_binary
        ):
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.CRITICAL,
                f"{ev.contract_id}: ignored a settlement value {ev.value!r} "
                "(binary contracts settle at 0..1); its trades stay open",
                subject=f"settle:{ev.contract_id}",
            )
            return
        try:  # kept for trade analytics (a rule's exit vs holding); never blocks the settlement
            await self.store.record_settlement(ev.contract_id, ev.value, now)
        except StoreError:
            log.exception("could not journal the settlement of %s", ev.contract_id)
        # From here the positions poll leaves this contract alone: the account may list it until
        # the payout, and a poll landing between two trades' settlements (each a journal write)
        # would otherwise adopt the not-yet-settled difference as a new trade.
        self._settled[ev.contract_id] = now
        for tid in list(self.by_contract.get(ev.contract_id, ())):
            t = self.trades[tid]
            payout = ev.value if t.side == "yes" else 1.0 - ev.value
            ex = self.exits.get(tid)
            if ex is not None and ex.in_flight:
                # The exit's answer is still coming: book it first, settle what is left after.
                self._pending_settle[tid] = payout
                continue
            await self._settle_trade(t, payout, now)
        settle = getattr(self.venue, "settle", None)
        if settle is not None:
            settle(ev.contract_id, ev.value)
        self.contracts.pop(ev.contract_id, None)
        self.quotes.pop(ev.contract_id, None)
        self._bad.pop(f"quote:{ev.contract_id}", None)
        self._alerted.discard(f"quote:{ev.contract_id}")
        for side in ("YES", "NO"):
            self._last_opportunity.pop(f"{ev.contract_id}:{side}", None)
        self._dirty = True

    async def tick(self) -> None:
        """Periodic work: staleness, time-based rules, exit retries, risk, journal, heartbeat."""
        with self._busy:
            async with self._grouped_quote_alerts():
                await self._tick()
            # After the tick's own alerts: the watchdog's verdict is the last word of a tick.
            now = self.clock.now()
            await self._watch(now)
            self._last_tick_done = now
            self._maybe_publish()

    async def _tick(self) -> None:
        now = self.clock.now()
        spot = self.spot_hist.latest()
        # A spot that never arrived shows in the health row; spot-based rules stay off meanwhile.
        if spot is not None and now - spot[0] > self.config.engine.max_spot_age_seconds:
            await self._episode(
                "spot",
                f"spot {now - spot[0]:.0f}s old (limit "
                f"{self.config.engine.max_spot_age_seconds:g}s)",
                None,
                waiting=True,
            )
        max_age = self.config.engine.max_quote_age_seconds
        for cid, ids in list(self.by_contract.items()):
            q = self.quotes.get(cid)
            stale = q is None or now - q.ts > max_age
            for tid in list(ids):
                st = self.status.get(tid)
                if st is None:
                    continue
                # The cool-down after an exhausted ladder is over: a new ladder if the rule
                # still fires, without waiting for the next quote.
                retry_due = 0.0 < st.exit_blocked_until <= now
                if retry_due:
                    st.exit_blocked_until = 0.0
                if stale or st.problem is not None or now >= st.next_time_trigger or retry_due:
                    await self._evaluate(tid, now)
        for tid, ex in list(self.exits.items()):
            t = self.trades.get(tid)
            if t is not None and now - ex.last_attempt_ts >= self.config.ladder().step_seconds:
                await self._attempt(t, ex, now)
        await self._check_risk(now)
        # At most one of the slower periodic jobs per tick, so their costs never add up.
        if now - self._last_positions_poll >= POSITIONS_POLL_SECONDS and (
            self._positions_task is None or self._positions_task.done()
        ):
            # The journal first: a trade another program journaled and holds at the venue must
            # be adopted from its journal row, not invented a second time from the position.
            self._last_positions_poll = now
            await self._poll_journal(now)
            self._positions_task = asyncio.create_task(
                self._positions_job(now), name="positions-poll"
            )
            await asyncio.wait({self._positions_task}, timeout=self.positions_poll_budget)
        elif now - self._last_opportunity_scan >= OPPORTUNITY_SCAN_SECONDS:
            self._last_opportunity_scan = now
            await self._scan_opportunities(now)
        if self._expiry_watch:
            await self._record_expiries(now)
        await self._check_lock(now)
        state = None
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            state = {"heartbeat": self._heartbeat(now)}
        await self._flush_marks(state)
        if now - self._last_checkpoint >= CHECKPOINT_SECONDS and (
            self._checkpoint_task is None or self._checkpoint_task.done()
        ):
            self._last_checkpoint = now
            self._checkpoint_task = asyncio.create_task(self.store.checkpoint())
        self._dirty = True

    async def flush(self) -> None:
        """Write pending mark samples and wait for a running checkpoint (call before closing).
        A positions poll still waiting for the venue is dropped: the next start reconciles."""
        task, self._positions_task = self._positions_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._fatal_task is not None:
            await self._fatal_task  # the last alert goes out before the channels close
        if self.fatal is None:  # a journal that refused a write is not written again
            await self._flush_marks()
        if self._checkpoint_task is not None:
            await self._checkpoint_task
            self._checkpoint_task = None

    async def _flush_marks(self, state: dict[str, Any] | None = None) -> None:
        """Write pending mark samples, the peaks/troughs that moved (trailing stops need their
        peak after a restart) and any state values, in one journal commit."""
        rows, self._marks_pending = self._marks_pending, []
        peaks = []
        for tid, st in self.status.items():
            if st.peaks_dirty:
                st.peaks_dirty = False
                t = self.trades[tid]
                peaks.append((tid, t.peak_pnl, t.peak_pnl_pct, t.trough_pnl, t.trough_pnl_pct))
        await self.store.flush_tick(rows, peaks, state, self.clock.now())

    # ------------------------------------------------------------------ evaluation

    def _data_problem(
        self, t: Trade, c: Contract | None, q: Quote | None, now: float
    ) -> str | None:
        if c is None:
            return f"no contract details for {t.contract_id}"
        problem = quote_problem(q, c.is_binary)
        if problem is not None:
            return f"{t.contract_id}: {problem}"
        hold = self.quote_holds.get(t.contract_id) if self.quote_holds else None
        if hold is not None:
            return f"{t.contract_id}: {hold}"
        assert q is not None
        age = now - q.ts
        if age > self.config.engine.max_quote_age_seconds:
            return f"{t.contract_id}: quote {age:.0f}s old (limit {self.config.engine.max_quote_age_seconds:g}s)"
        return None

    def _criteria(self, t: Trade, st: _Status) -> Criteria:
        if st.criteria is None:
            # One shared object per (strategy, overrides): trades with equal criteria share
            # market-rule results on spot updates.
            key = (t.strategy, tuple(sorted(t.overrides.items())))
            crit = self._criteria_cache.get(key)
            if crit is None:
                crit = self._criteria_cache[key] = self.config.auto_stop.criteria_for(
                    t.strategy, t.overrides
                )
            st.criteria = crit
        return st.criteria

    def _window(self, which: str, seconds: float) -> tuple[tuple[float, float], ...]:
        """The extreme samples of a history inside a window: enough for min/max rules, O(1) per trade."""
        key = (which, seconds)
        cached = self._window_cache.get(key)
        if cached is not None:
            return cached
        hist = self.momentum_hist if which == "momentum" else self.vol_hist
        latest = hist[-1][0] if hist else 0.0
        lo = hi = None
        for s in reversed(hist):
            if s[0] < latest - seconds:
                break
            if lo is None or s[1] < lo[1]:
                lo = s
            if hi is None or s[1] > hi[1]:
                hi = s
        out: tuple[tuple[float, float], ...] = ()
        if lo is not None and hi is not None:
            out = tuple(sorted({lo, hi}))
        self._window_cache[key] = out
        return out

    async def _evaluate(self, tid: str, now: float) -> None:
        """Evaluate one trade, isolated: an error here stays with this trade (alerted once per
        episode, the trade counted unprotected by the watchdog) and never reaches the loop that
        serves the others. Journal faults still propagate: the journal comes first."""
        try:
            fresh = await self._evaluate_trade(tid, now)
        except (StoreError, sqlite3.Error):
            raise
        except Exception as e:
            await self._trade_fault(tid, e)
            return
        st = self.status.get(tid)
        if st is None:
            return
        if fresh is not None:
            # Protected as of its data's time, not the evaluation's: an evaluation on a quote
            # that is already 9 s old protects it only until that quote is too old.
            st.protected_ts = max(st.protected_ts, min(fresh, now))
        if st.error is not None and fresh is not None:
            st.error = None
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.INFO,
                f"{tid}: evaluated normally again",
                tid,
                subject=f"fault-ok:{tid}",
            )

    async def _contract_fault(self, cid: str, e: Exception) -> None:
        """An error deriving one contract's state: alerted once per contract and kind, logged
        once; the contract's trades are left to the data guard and the watchdog."""
        text = f"{type(e).__name__}: {e}"
        key = f"contract:{cid}"
        if key not in self._bad:
            log.exception("contract %s failed", cid)
        await self._episode(key, f"{cid}: internal error deriving its quote ({text})", None)

    async def _trade_fault(self, tid: str, e: Exception) -> None:
        st = self.status.get(tid)
        text = f"{type(e).__name__}: {e}"
        first = st is None or st.error is None
        if first:  # the traceback once per episode, not on every quote
            log.exception("evaluating %s failed", tid)
        if st is None:
            return
        st.error = text
        st.problem = f"internal error: {text}"
        self._dirty = True
        if first:
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.CRITICAL,
                f"{tid}: internal error while evaluating its rules ({text}); its auto-stop is "
                "not working, the other trades go on — see the log",
                tid,
                subject=f"fault:{tid}",
            )

    async def _evaluate_trade(self, tid: str, now: float) -> float | None:
        """The time of the data the trade was evaluated on when it was fresh and valid (its
        rules ran); None when they could not run."""
        t = self.trades.get(tid)
        st = self.status.get(tid)
        if t is None or st is None or t.state == TradeState.CLOSED:
            return None
        c = self.contracts.get(t.contract_id)
        q = self.quotes.get(t.contract_id)
        problem = self._data_problem(t, c, q, now)
        st.eval_ts = now
        if problem is not None:
            st.problem = problem
            self._dirty = True
            waiting = c is None or q is None or quote_problem(q, c.is_binary) is None
            await self._episode(f"quote:{t.contract_id}", problem, tid, waiting=waiting)
            return None
        if st.problem is not None:
            st.problem = None
            await self._recover(f"quote:{t.contract_id}")
        assert c is not None and q is not None
        mult = c.multiplier
        if t.multiplier != mult:  # a trade journaled before its contract was known (CLI)
            t.multiplier = mult
            await self.store.save_trade(t)
        mark = pricing.mark_price(t, q, self.config.engine.mark)
        pnl = pricing.position_pnl(t, mark, mult)
        basis = pricing.original_cost_basis(t, mult)
        pnl_pct = 100.0 * pnl / basis if basis > 0 else 0.0
        if st.mark is None and t.peak_pnl == 0 and t.trough_pnl == 0:
            # Never marked before: peak and trough start at the first observed P&L, not at 0.
            t.peak_pnl = t.trough_pnl = pnl
            t.peak_pnl_pct = t.trough_pnl_pct = pnl_pct
            st.peaks_dirty = True
        if pnl > t.peak_pnl:
            t.peak_pnl = pnl
            st.peaks_dirty = True
        if pnl_pct > t.peak_pnl_pct:
            t.peak_pnl_pct = pnl_pct
            st.peaks_dirty = True
        if pnl < t.trough_pnl:
            t.trough_pnl = pnl
            st.peaks_dirty = True
        if pnl_pct < t.trough_pnl_pct:
            t.trough_pnl_pct = pnl_pct
            st.peaks_dirty = True
        st.mark, st.pnl, st.pnl_pct = mark, pnl, pnl_pct
        every = self.config.engine.mark_sample_seconds
        if st.last_sample_ts == -math.inf:
            # Stagger samples across trades so a tick never writes every trade's mark at once.
            st.last_sample_ts = now - every * (zlib.crc32(tid.encode()) % 1000) / 1000.0
        if now - st.last_sample_ts >= every:
            st.last_sample_ts = now
            self._marks_pending.append((tid, now, mark, pnl, pnl_pct))

        crit = self._criteria(t, st)
        m = self._market_inputs(crit, now)
        spot = m["spot"]
        und = spot if c.underlying == self.symbol else None  # another underlying: its quote's
        time_value = pricing.time_value(c, q, und, self.contracts, self.quotes)
        st.time_value = time_value
        if q.und_price is not None and q.und_price > 0:
            und = q.und_price  # the venue model's underlying price, for options on any underlying
        direction = pricing.underlying_direction(t, c)
        if c.type == "combo" and q.delta:
            direction = (1 if q.delta > 0 else -1) * (-1 if t.side == "short" else 1)
        inp = rules.RuleInput(
            now=now,
            opened_ts=t.opened_ts,
            pnl_pct=pnl_pct,
            peak_pnl_pct=t.peak_pnl_pct,
            direction=direction,
            ttc_seconds=c.close_ts - now,
            in_the_money=pricing.in_the_money(t, c, und) if und is not None else None,
            time_value=time_value,
            **m,
        )
        results = rules.evaluate(inp, crit)
        st.results = results
        st.next_time_trigger = self._next_time_trigger(t, c, crit)
        self._dirty = True
        fired = rules.first_fired(results)
        if fired is None or t.state != TradeState.OPEN:
            st.blocked = None
            return q.ts
        await self._on_fired(t, st, fired, now)
        return q.ts

    def _market_inputs(self, crit: Criteria, now: float) -> dict[str, Any]:
        """The RuleInput fields that come from the market alone (withheld when the spot is stale)."""
        if not self._spot_fresh(now):
            return {"momentum_bps": None, "vol_score": None, "spot": None, "prev_spot": None}
        return {
            "momentum_bps": self.momentum_bps,
            "momentum_history": self._window("momentum", crit.reversal_window_seconds)
            if crit.momentum_reversal_threshold_bps is not None
            else (),
            "vol_score": self.vol.state.score,
            "vol_history": self._window("vol", crit.spike_window_seconds)
            if crit.volatility_spike_threshold is not None
            else (),
            "spot": self.spot_hist.latest()[1],  # type: ignore[index]
            # The live price before this one, when both were fresh (see _gap_baseline).
            "prev_spot": self._gap_prev,
        }

    async def _evaluate_on_spot(self, now: float) -> None:
        """A spot update: refresh the market rules of every trade, fully evaluating only the
        trades where something can fire.

        The market rules (momentum, reversal, volatility, spike, price gap) depend only on the
        market, the trade's direction and its criteria, so they are computed once per group of
        trades sharing those, not once per trade. Quote-based rules cannot change without a new
        quote, and time-based ones are due on the tick (`next_time_trigger`). A trade is fully
        evaluated when a market rule fires for its group, when it is inside its TTC cut-off
        window (moneyness moves with spot), for options (time value), and while it is stale.
        """
        groups: dict[tuple[int, int], list[rules.RuleResult]] = {}
        for tid, t in list(self.trades.items()):
            try:
                await self._spot_update_one(tid, t, groups, now)
            except (StoreError, sqlite3.Error):
                raise
            except Exception as e:
                await self._trade_fault(tid, e)
        self._dirty = True

    async def _spot_update_one(
        self,
        tid: str,
        t: Trade,
        groups: dict[tuple[int, int], list[rules.RuleResult]],
        now: float,
    ) -> None:
        st = self.status.get(tid)
        c = self.contracts.get(t.contract_id)
        if st is None or t.state != TradeState.OPEN:
            return
        crit = self._criteria(t, st) if c is not None else None
        if (
            c is None
            or crit is None
            or st.problem is not None
            or st.mark is None
            or c.type in ("option_call", "option_put")
            or (
                crit.ttc_cutoff_seconds is not None
                and c.close_ts - now <= crit.ttc_cutoff_seconds + 1
            )
        ):
            await self._evaluate(tid, now)
            return
        d = pricing.underlying_direction(t, c)
        key = (d, id(crit))
        res = groups.get(key)
        if res is None:
            res = groups[key] = self._market_rule_results(d, crit, now)
        if any(r.fired for r in res):
            await self._evaluate(tid, now)
            return
        if res or st.results:
            st.results = sorted(
                [r for r in st.results if r.rule not in rules.MARKET_RULES] + res,
                key=lambda r: _RULE_RANK[r.rule],
            )

    def _market_rule_results(
        self, direction: int, crit: Criteria, now: float
    ) -> list[rules.RuleResult]:
        inp = rules.RuleInput(
            now=now,
            opened_ts=now,
            pnl_pct=0.0,
            peak_pnl_pct=0.0,
            direction=direction,
            **self._market_inputs(crit, now),
        )
        out = []
        for name in rules.MARKET_RULES_ORDERED:
            r = rules.RULES[name](inp, crit)
            if r is not None:
                out.append(r)
        return out

    @staticmethod
    def _next_time_trigger(t: Trade, c: Contract, crit: Criteria) -> float:
        nxt = math.inf
        if crit.max_holding_time_minutes is not None:
            nxt = t.opened_ts + crit.max_holding_time_minutes * 60.0
        if crit.ttc_cutoff_seconds is not None:
            nxt = min(nxt, c.close_ts - crit.ttc_cutoff_seconds)
        return nxt

    def _spot_fresh(self, now: float) -> bool:
        latest = self.spot_hist.latest()
        return (
            latest is not None
            and now - latest[0] <= self.config.engine.max_spot_age_seconds
            and "spot" not in self._bad
        )

    async def _on_fired(self, t: Trade, st: _Status, fired: rules.RuleResult, now: float) -> None:
        blocked = self._auto_block_reason(t, st, now)
        if blocked is not None:
            # A stop that cannot act says so loudly (a warning with the rule and its numbers),
            # again every BLOCKED_SIGNAL_REPEAT_SECONDS while it stays fired, and on its row. Only
            # the cool-down after a failed ladder is news of its own (that was critical): info.
            label = _block_label(blocked)
            st.blocked = (fired.rule, label)
            last = st.signalled.get(fired.rule)
            if last is None or now - last >= BLOCKED_SIGNAL_REPEAT_SECONDS:
                st.signalled[fired.rule] = now
                sev = Severity.INFO if label == "cool-down" else Severity.WARNING
                await self._alert(
                    AlertKind.EXIT_SIGNAL,
                    sev,
                    f"{t.trade_id}: {fired.describe()} — not closing: {blocked}",
                    t.trade_id,
                    data={
                        "rule": fired.rule,
                        "value": fired.value,
                        "threshold": fired.threshold,
                        "blocked": label,
                    },
                    subject=f"signal:{t.trade_id}:{fired.rule}",
                    # Spaced by the engine (per trade and rule), never swallowed by the bus.
                    throttle=False,
                )
            return
        st.blocked = None
        held = self._exit_hold(t)
        if held is not None:
            # The rule stays fired and no exit starts: no attempt is counted while the market
            # is closed; the first evaluation on fresh data after it opens starts the exit.
            st.exit_held = held
            code = held.split(":", 1)[0]
            if st.held_told != held:  # once per reason (the open it waits for, the orders)
                st.held_told = held
                self._dirty = True
                await self._alert(
                    AlertKind.EXIT_SIGNAL,
                    Severity.WARNING,
                    f"{t.trade_id}: {fired.describe()} — {_held_words(held)}: {held}; "
                    "no order is sent before",
                    t.trade_id,
                    data={"rule": fired.rule, "value": fired.value, "held": held},
                    subject=f"held:{t.trade_id}:{code}",
                )
            return
        st.exit_held = st.held_told = None
        await self._begin_exit(t, fired.rule, now, manual=False, fired=fired)

    def _auto_block_reason(self, t: Trade, st: _Status, now: float) -> str | None:
        if self.mode == Mode.ALERT_ONLY:
            return "alert_only mode (close it yourself)"
        venue_block = self._venue_blocked()
        if venue_block is not None:
            return venue_block
        if not self.armed:
            return "disarmed"
        if self.paused_all:
            return "all auto-stops paused (kill switch)"
        if t.paused:
            return "auto-stop paused for this trade"
        if now < st.exit_blocked_until:
            return "a recent exit failed; retrying after a cool-down"
        return None

    def _may_send(self, ex: _Exit) -> bool:
        return self._why_not_sending(ex) is None

    def _venue_blocked(self) -> str | None:
        """The venue's own reason it cannot send any order now (IB's read-only API session),
        if it has one (`Venue.sending_blocked`, optional)."""
        blocked = getattr(self.venue, "sending_blocked", None)
        return blocked() if blocked is not None else None

    def _exit_hold(self, t: Trade) -> str | None:
        """The venue's reason an exit on this trade must wait now, sending nothing and counting
        no attempt (`Venue.exit_hold`, optional: IB outside the contract's trading hours, or
        other clients' working orders covering the position); None when an order may go out."""
        hold = getattr(self.venue, "exit_hold", None)
        if hold is None:
            return None
        try:
            reason = hold(t.contract_id)
        except Exception:
            log.exception("the venue's exit_hold of %s failed; the exit goes on", t.contract_id)
            return None
        return reason if isinstance(reason, str) and reason else None

    async def _exit_waits(self, t: Trade, ex: _Exit, held: str, now: float) -> None:
        """An exit in progress (or resumed after a restart) waits for the open: one alert per
        reason. Held for other clients' orders it is given up instead (the trade watched
        again, its rule still fired, not started again while they work): those orders may
        fill and end the position, which the positions poll then books as external."""
        code = held.split(":", 1)[0]
        if code != "MARKET_CLOSED":
            st = self.status.get(t.trade_id)
            if st is not None:
                st.exit_held = st.held_told = held
            await self._reopen(
                t,
                now,
                ex.intent_id,
                AlertKind.EXIT_SIGNAL,
                Severity.WARNING,
                f"{t.trade_id}: exit ({ex.rule}) {_held_words(held)}, nothing more sent: {held}; "
                "the trade is watched again and its exit starts once they are gone",
            )
            return
        told, ex.held = ex.held, held
        self._dirty = True
        if told == held:
            return
        await self._alert(
            AlertKind.EXIT_SIGNAL,
            Severity.WARNING,
            f"{t.trade_id}: exit ({ex.rule}) {_held_words(held)}: {held}; nothing is sent "
            f"before, {ex.attempts} attempt(s) so far",
            t.trade_id,
            data={"intent_id": ex.intent_id, "held": held},
            subject=f"held:{ex.intent_id}:{code}",
        )

    def _held_reason(self, t: Trade, st: _Status) -> str | None:
        """What the screen and `status` say of a trade whose exit waits (None: it does not)."""
        ex = self.exits.get(t.trade_id)
        waiting = ex.held if ex is not None else st.exit_held
        if waiting is None or (ex is None and not any(r.fired for r in st.results)):
            return None
        return self._exit_hold(t)

    def _why_not_sending(self, ex: _Exit) -> str | None:
        if self.mode == Mode.ALERT_ONLY:
            return "the mode is alert_only"
        venue_block = self._venue_blocked()
        if venue_block is not None:
            return venue_block
        if ex.manual:
            return None
        t = self.trades.get(ex.trade_id)
        if not self.armed:
            return "the engine is disarmed"
        if self.paused_all:
            return "all auto-stops are paused"
        if t is not None and t.paused:
            return "the trade's auto-stop is paused"
        return None

    # ------------------------------------------------------------------ exits

    def _context(self, t: Trade, fired: rules.RuleResult | None, now: float) -> dict[str, Any]:
        st = self.status.get(t.trade_id) or _Status()
        q = self.quotes.get(t.contract_id)
        spot = self.spot_hist.latest()
        vs = self.vol.state
        c = self.contracts.get(t.contract_id)
        # Every rule's value and distance, on or off (rules.audit), as of this evaluation. The
        # audit never stops an exit: a fault here is logged and leaves the list out.
        all_rules: list[dict[str, object]] | None = None
        if c is not None and st.pnl_pct is not None:
            try:
                crit = self._criteria(t, st)
                m = self._market_inputs(rules.all_on(crit), now)
                und = m["spot"] if c.underlying == self.symbol else None
                if q is not None and q.und_price is not None and q.und_price > 0:
                    und = q.und_price
                direction = pricing.underlying_direction(t, c)
                if c.type == "combo" and q is not None and q.delta:
                    direction = (1 if q.delta > 0 else -1) * (-1 if t.side == "short" else 1)
                inp = rules.RuleInput(
                    now=now,
                    opened_ts=t.opened_ts,
                    pnl_pct=st.pnl_pct,
                    peak_pnl_pct=t.peak_pnl_pct,
                    direction=direction,
                    ttc_seconds=c.close_ts - now,
                    in_the_money=pricing.in_the_money(t, c, und) if und is not None else None,
                    time_value=st.time_value,
                    **m,
                )
                all_rules = rules.audit(inp, crit)
            except Exception:
                log.exception("audit of %s: the rules' numbers could not be computed", t.trade_id)
        return {
            "ttc_seconds": c.close_ts - now if c is not None else None,
            "time_value": st.time_value,
            "all_rules": all_rules,
            "ts": now,
            "rule": fired.rule if fired else None,
            "value": fired.value if fired else None,
            "threshold": fired.threshold if fired else None,
            "detail": dict(fired.detail) if fired else {},
            "mark": st.mark,
            "pnl": st.pnl,
            "pnl_pct": st.pnl_pct,
            "peak_pnl_pct": t.peak_pnl_pct,
            "qty": t.qty,
            "entry": t.entry_price,
            "quote": {"bid": q.bid, "ask": q.ask, "ts": q.ts} if q else None,
            "spot": spot[1] if spot else None,
            "spot_ts": spot[0] if spot else None,
            "momentum_bps": self.momentum_bps,
            "momentum_pct": {str(k): v for k, v in self.momentum_deltas.items()},
            "vol_sigma": vs.sigma,
            "vol_score": vs.score,
            "regime": vs.regime,
            "mode": self.mode.value,
            "armed": self.armed,
            "rules": [
                {
                    "rule": r.rule,
                    "fired": r.fired,
                    "value": r.value,
                    "threshold": r.threshold,
                    "distance": r.distance,
                }
                for r in st.results
            ],
        }

    async def _begin_exit(
        self,
        t: Trade,
        reason: str,
        now: float,
        *,
        manual: bool,
        fired: rules.RuleResult | None = None,
    ) -> _Exit | None:
        # Mark before any await: no concurrent evaluation may start a second exit.
        intent_id = "x" + uuid.uuid4().hex[:20]
        ex = _Exit(intent_id, t.trade_id, reason, manual, in_flight=True, last_attempt_ts=now)
        self.exits[t.trade_id] = ex
        t.state = TradeState.CLOSING
        self._dirty = True
        try:
            return await self._journal_and_send(t, ex, reason, now, fired)
        finally:
            if not ex.detached:
                ex.in_flight = False
                await self._after_in_flight(t)

    async def _journal_and_send(
        self, t: Trade, ex: _Exit, reason: str, now: float, fired: rules.RuleResult | None
    ) -> _Exit | None:
        intent_id = ex.intent_id
        context = self._context(t, fired, now)
        c = self.contracts.get(t.contract_id)
        q = self.quotes.get(t.contract_id)
        ready = (
            self._data_problem(t, c, q, now) is None
            and self._why_not_sending(ex) is None
            and self._exit_hold(t) is None  # else the intent waits (_attempt_once)
        )
        try:
            if ready:
                # The common case, on the reaction path: intent and first order in one commit.
                assert q is not None
                ex.attempts = 1
                self._price_attempt(t, ex, intent_id, q)
                await self.store.begin_exit(
                    intent_id=intent_id,
                    trade_id=t.trade_id,
                    rule=reason,
                    qty=t.qty,
                    ts=now,
                    context=context,
                    order=self._order_fields(t, intent_id, ex.limits[intent_id]),
                )
            else:
                await self.store.add_intent(intent_id, t.trade_id, reason, t.qty, now, context)
                await self.store.add_audit(
                    now, t.trade_id, "exit_intent", {"intent_id": intent_id, **context}
                )
        except Exception as e:
            self.exits.pop(t.trade_id, None)
            t.state = TradeState.OPEN
            await self._alert(
                AlertKind.EXECUTION_FAILURE,
                Severity.CRITICAL,
                f"{t.trade_id}: could not journal the exit ({e}); nothing sent",
                t.trade_id,
            )
            return None
        if ready:
            assert q is not None
            send = self._send(
                t, ex, intent_id, pricing.mark_price(t, q, self.config.engine.mark), now
            )
            if self._orders_in_tasks:
                self._detach(t, ex, send)
            else:
                await send
        else:
            await self._attempt(t, ex, now)
        return ex

    @property
    def _orders_in_tasks(self) -> bool:
        """An exit's venue call runs in a task of its own, so that quotes, other trades' exits
        and commands go on while it waits: for every venue that talks over a network (a Kalshi
        POST can wait out a timeout and its retries, ~40 s by default; an IB order rests for
        attempt_timeout_seconds). Only a venue that answers in-process at once (`answers_inline`:
        the paper broker) is awaited on the reaction path."""
        if getattr(self.venue, "resting_orders", False):
            return True
        return not getattr(self.venue, "answers_inline", False)

    def _detach(self, t: Trade, ex: _Exit, work: Coroutine[Any, Any, None]) -> None:
        """Run an exit's venue call in a task; the exit stays in flight until it is answered."""
        ex.detached = True
        task = asyncio.create_task(self._detached(t, ex, work), name=f"exit-{t.trade_id}")
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)

    async def _detached(self, t: Trade, ex: _Exit, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as e:
            log.exception("exit of %s failed", t.trade_id)
            await self._alert(
                AlertKind.EXECUTION_FAILURE,
                Severity.CRITICAL,
                f"{t.trade_id}: exit attempt failed inside the engine ({type(e).__name__}: {e}); "
                "will reconcile",
                t.trade_id,
            )
        finally:
            ex.detached = False
            ex.in_flight = False
            self._dirty = True
            await self._after_in_flight(t)

    async def drain_exits(self, timeout: float = 60.0) -> None:
        """Wait for exits whose orders are still working at the venue (at stop)."""
        if self._exit_tasks:
            await asyncio.wait(set(self._exit_tasks), timeout=timeout)

    def _order_fields(self, t: Trade, coid: str, limit: float | None) -> dict[str, Any]:
        action = "buy" if t.side == "short" else "sell"
        return {
            "client_order_id": coid,
            "contract_id": t.contract_id,
            "side": t.side,
            "action": action,
            "qty": t.qty,
            "limit_price": limit,
        }

    def _price_attempt(self, t: Trade, ex: _Exit, coid: str, q: Quote) -> float:
        """The limit of attempt `ex.attempts` (sent as `coid`) from the exit's ladder."""
        a = self.config.ladder()
        if a.on_exhausted == "cross" and ex.attempts > a.max_attempts:
            # The one order after an exhausted ladder: the most aggressive price the venue
            # accepts, below the floor if need be (the floor is the ladder's, not this order's).
            c = self.contracts.get(t.contract_id)
            limit = cross_limit(t, q, c is not None and c.is_binary, a.tick, a.floor)
            ex.limits[coid] = limit
            return limit
        step = exit_limit(t, q, ex.attempts, a.tick, a.floor)
        ex.limits[coid] = step.limit
        if t.side != "short":
            bid, ask = pricing.held_bid_ask(t, q)
            mid = (bid + ask) / 2
            if mid < a.floor:
                ex.low_mids[coid] = mid
        return step.limit

    async def _attempt(self, t: Trade, ex: _Exit, now: float, force: bool = False) -> None:
        """Send (or look up) one order for an exit, each order journaled before it is sent.

        Never while another order of the same exit is outstanding (`in_flight`): a slow venue
        must not get a second closing order for the same position.
        """
        if t.state == TradeState.CLOSED:
            # Filled and on its way to the journal while its venue call is still in flight:
            # that path forgets the exit. Dropping it here opened a window where a positions
            # poll saw the position gone, no exit in flight, and closed the trade again.
            if not ex.in_flight:
                self.exits.pop(t.trade_id, None)
            return
        if ex.in_flight and not force:
            return
        ex.in_flight = True
        if self._orders_in_tasks:
            self._detach(t, ex, self._attempt_once(t, ex, now))
            return
        try:
            await self._attempt_once(t, ex, now)
        finally:
            ex.in_flight = False
            await self._after_in_flight(t)

    async def _attempt_once(self, t: Trade, ex: _Exit, now: float) -> None:
        ex.last_attempt_ts = now
        if ex.unknown_coid is not None:
            coid = ex.unknown_coid
            try:
                res = await self.venue.lookup(coid)
            except VenueError:
                return
            ex.unknown_coid = None
            if res is not None:
                await self._apply_result(t, ex, coid, res, now)
                return
            ex.resend_coid = coid
        why = self._why_not_sending(ex)
        if why is not None:
            await self._reopen(
                t,
                now,
                ex.intent_id,
                AlertKind.EXIT_SIGNAL,
                Severity.WARNING,
                f"{t.trade_id}: exit ({ex.rule}) cancelled: {why}",
            )
            return
        held = self._exit_hold(t)
        if held is not None:
            await self._exit_waits(t, ex, held, now)
            return  # no order, no attempt counted; asked again at the next step
        ex.held = None
        c = self.contracts.get(t.contract_id)
        q = self.quotes.get(t.contract_id)
        problem = self._data_problem(t, c, q, now)
        if problem is not None:
            await self._episode(f"quote:{t.contract_id}", problem, t.trade_id)
            return  # never send on bad data; the tick retries when data recovers
        assert q is not None
        mark = pricing.mark_price(t, q, self.config.engine.mark)
        ex.last_attempt_ts = now
        if ex.resend_coid is not None:
            # The venue never saw this order: the same id again, at the limit it was journaled at.
            coid, ex.resend_coid = ex.resend_coid, None
            if coid not in ex.limits:
                self._price_attempt(t, ex, coid, q)
        else:
            ex.attempts += 1
            coid = ex.intent_id if ex.attempts == 1 else f"{ex.intent_id}-{ex.attempts}"
            limit = self._price_attempt(t, ex, coid, q)
            await self.store.add_order(
                intent_id=ex.intent_id,
                trade_id=t.trade_id,
                ts=now,
                **self._order_fields(t, coid, limit),
            )
            await self.store.update_intent(
                ex.intent_id, status="sent", attempts=ex.attempts, ts=now
            )
            a = self.config.ladder()
            if a.on_exhausted == "cross" and ex.attempts > a.max_attempts:
                await self._alert(
                    AlertKind.EXECUTION_FAILURE,
                    Severity.CRITICAL,
                    f"{t.trade_id}: LIMIT_REACHED: ladder exhausted after {a.max_attempts} "
                    f"attempts — CROSSING: one last order at {limit:g}, the most aggressive price "
                    f"{self.venue.name} accepts ([auto_stop.ladder] on_exhausted = \"cross\"); "
                    "booked at the venue's fill",
                    t.trade_id,
                    data={"intent_id": ex.intent_id, "limit": limit, "attempt": ex.attempts},
                    subject=f"cross:{ex.intent_id}",
                    throttle=False,
                )
        await self._send(t, ex, coid, mark, now)

    async def _send(self, t: Trade, ex: _Exit, coid: str, mark: float, now: float) -> None:
        """Send one journaled order and book its outcome (a timeout is 'unknown', not 'rejected')."""
        ex.last_attempt_ts = now
        req = OrderRequest(
            client_order_id=coid,
            contract_id=t.contract_id,
            side=t.side,
            action="buy" if t.side == "short" else "sell",
            qty=t.qty,
            limit_price=ex.limits.get(coid),
            reference_price=mark,
        )
        try:
            res = await self.venue.submit(req)
        except VenueError as e:
            ex.unknown_coid = coid
            await self.store.update_order(coid, status="unknown", reason=str(e), ts=now)
            if ex.warned:
                return  # one warning per exit; each unknown outcome is in the journal
            ex.warned = True
            await self._alert(
                AlertKind.EXECUTION_FAILURE,
                Severity.WARNING,
                f"{t.trade_id}: exit order {coid} outcome unknown ({e}); will reconcile",
                t.trade_id,
            )
            return
        await self._apply_result(t, ex, coid, res, now)

    async def _apply_result(
        self,
        t: Trade,
        ex: _Exit,
        coid: str,
        res: OrderResult,
        now: float,
        prior: dict[str, Any] | None = None,
    ) -> None:
        """Book a venue answer: order status, fill, trade and intent in one journal commit.

        The fill booked is the venue's: `res.avg_price` (held-side dollars, from the venue's
        fills). An answer that says something filled but gives no price books nothing: the
        order is left 'unknown' and looked up again (never a fill at a guessed price)."""
        already = float(prior.get("filled_qty") or 0.0) if prior else 0.0
        new_qty = max(res.filled_qty - already, 0.0)
        c = self.contracts.get(t.contract_id)
        mult = c.multiplier if c else t.multiplier
        if new_qty > EPS and (res.avg_price is None or not math.isfinite(res.avg_price)):
            await self._fill_without_price(t, ex, coid, res, now)
            return
        fill = None
        if new_qty > EPS and res.avg_price is not None:
            fees = res.fees * (new_qty / res.filled_qty) if res.filled_qty > 0 else res.fees
            fill = {"client_order_id": coid, "qty": new_qty, "price": res.avg_price, "fees": fees}
            pricing.apply_fill(t, new_qty, res.avg_price, fees, mult)
            self._touch(t.contract_id)
            for tl in self.tape_listeners:
                tl("fill", {"ts": now, "trade_id": t.trade_id, "rule": ex.rule, **fill})
        order = {
            "client_order_id": coid,
            "status": res.status,
            "filled_qty": res.filled_qty,
            "avg_price": res.avg_price,
            "fees": res.fees,
            "venue_order_id": res.venue_order_id,
            "reason": res.reason,
        }
        failed = res.status in ("rejected", "unfilled") or (
            res.status == "partial" and new_qty > EPS
        )
        if t.qty <= EPS:
            pricing.close_record(t, None, ex.rule, now)  # all filled; qty back to the opened size
            info = self._exit_info(t, ex, now, mult)
            await self.store.book_result(
                trade=t,
                ts=now,
                order=order,
                fill=fill,
                intent=(ex.intent_id, "filled", None),
                audit=("exit_filled", {"intent_id": ex.intent_id, **info}),
            )
            await self._after_exit(t, ex, info)
            return
        self._dirty = True
        if not failed:
            await self.store.book_result(trade=t, ts=now, order=order, fill=fill)
            return
        if res.status == "rejected" and res.reason.startswith(_HOLD_CODES):
            # The venue held it back unsent (the market closed, other clients' orders found at
            # the last moment): no ladder failure; the exit waits or is given up as for a hold
            # known before (`_exit_waits`).
            await self.store.book_result(trade=t, ts=now, order=order, fill=fill)
            await self._exit_waits(t, ex, self._exit_hold(t) or res.reason, now)
            return
        limit = ex.limits.get(coid)
        a = self.config.ladder()
        msg = (
            f"{t.trade_id}: exit attempt {ex.attempts}"
            f"{f' at {limit:.4f}' if limit is not None else ''} {res.status}"
            f"{' (' + res.reason + ')' if res.reason else ''}; {t.qty:g} left"
        )
        low = ex.low_mids.get(coid)
        if low is not None:
            msg += (
                f"; MID_TOO_LOW: the mid {low:.4f} is below the floor {a.floor:g}, so the limit "
                "stays at the floor and fills only if the book comes back"
            )
        if ex.attempts == a.max_attempts and a.on_exhausted == "cross":
            # Exhausted: the next attempt (the tick, a step later) is the one crossing order.
            await self.store.book_result(trade=t, ts=now, order=order, fill=fill)
            return
        if ex.attempts < a.max_attempts:
            await self.store.book_result(trade=t, ts=now, order=order, fill=fill)
            if ex.warned:
                return  # one warning per exit: each attempt and its answer are in the journal
            ex.warned = True
            await self._alert(
                AlertKind.EXECUTION_FAILURE,
                Severity.WARNING,
                f"{msg}; stepping the limit {a.tick:g} every {a.step_seconds:g}s "
                f"(floor {a.floor:g}, {a.max_attempts} attempts at most)",
                t.trade_id,
                data={"intent_id": ex.intent_id, "limit": limit, "attempt": ex.attempts},
                subject=f"ladder:{ex.intent_id}",
            )
            return
        t.state = TradeState.OPEN
        await self.store.book_result(
            trade=t, ts=now, order=order, fill=fill, intent=(ex.intent_id, "failed", None)
        )
        self.exits.pop(t.trade_id, None)
        st = self.status.get(t.trade_id)
        if st is not None:
            st.exit_blocked_until = now + a.retry_after_seconds
            st.signalled.clear()
        crossed = " and its crossing order" if ex.attempts > a.max_attempts else ""
        await self._alert(
            AlertKind.EXECUTION_FAILURE,
            Severity.CRITICAL,
            f"{msg}: LIMIT_REACHED: ladder exhausted after {min(ex.attempts, a.max_attempts)} "
            f"attempts{crossed} — trade left OPEN, close it by hand; a new ladder starts in "
            f"{a.retry_after_seconds:g}s if the rule still fires",
            t.trade_id,
            data={"intent_id": ex.intent_id},
            subject=f"gaveup:{ex.intent_id}",
        )

    async def _fill_without_price(
        self, t: Trade, ex: _Exit, coid: str, res: OrderResult, now: float
    ) -> None:
        """The venue says `res.filled_qty` of order `coid` filled but gives no price: nothing
        is booked (the position did change, so no other order is sent for it either); the
        order is 'unknown' and the next attempt looks it up again."""
        ex.unknown_coid = coid
        self._touch(t.contract_id)
        why = f"{res.filled_qty:g} filled but the venue gave no fill price"
        await self.store.update_order(
            coid, status="unknown", venue_order_id=res.venue_order_id, reason=why, ts=now
        )
        await self._alert(
            AlertKind.EXECUTION_FAILURE,
            Severity.WARNING,
            f"{t.trade_id}: exit order {coid}: {why}; nothing booked, looking it up again",
            t.trade_id,
            subject=f"noprice:{coid}",
        )

    def _exit_info(self, t: Trade, ex: _Exit, now: float, mult: float) -> dict[str, Any]:
        basis = t.closed_qty * t.entry_price * mult  # the closed size (qty is reset to it on close)
        pnl = t.realized_pnl or 0.0
        return {
            "ts": now,
            "trade_id": t.trade_id,
            "rule": ex.rule,
            "mark": t.exit_price,
            "pnl": pnl,
            "pnl_pct": 100.0 * pnl / basis if basis > 0 else 0.0,
            "manual": ex.manual,
        }

    async def _after_exit(self, t: Trade, ex: _Exit, info: dict[str, Any]) -> None:
        """In-memory bookkeeping and alerts once a closed exit is in the journal."""
        self._forget(t.trade_id)
        self._add_realized(t.realized_pnl or 0.0, t.closed_ts or self.clock.now())
        for listener in self.exit_listeners:
            listener(info)
        pnl, pnl_pct = info["pnl"], info["pnl_pct"]
        if ex.manual:
            await self._alert(
                AlertKind.TRADE_CLOSED,
                Severity.INFO,
                f"{t.trade_id} closed ({ex.rule}) at {t.exit_price:.4f}, P&L {pnl:+.2f}",
                t.trade_id,
                data=info,
            )
        else:
            await self._alert(
                AlertKind.AUTO_STOP,
                Severity.WARNING,
                f"{t.trade_id} closed by {ex.rule} at {t.exit_price:.4f}, "
                f"P&L {pnl:+.2f} ({pnl_pct:+.1f}%)",
                t.trade_id,
                data=info,
            )

    async def _close_in_journal(
        self, t: Trade, price: float | None, reason: str, now: float
    ) -> None:
        """Close a trade in the journal without an order (settled, external, closed elsewhere)."""
        c = self.contracts.get(t.contract_id)
        pricing.close_record(t, price, reason, now, c.multiplier if c else t.multiplier)
        await self.store.save_trade(t)
        self._add_realized(t.realized_pnl or 0.0, t.closed_ts or self.clock.now())
        await self.store.add_audit(now, t.trade_id, "closed", {"reason": reason, "price": price})
        self._forget(t.trade_id)
        for tl in self.tape_listeners:
            tl(
                "closed",
                {
                    "ts": now,
                    "trade_id": t.trade_id,
                    "reason": str(reason),
                    "price": price,
                    "pnl": t.realized_pnl,
                },
            )

    # ------------------------------------------------------------------ trades in and out

    async def _open_trade(self, ev: OpenEvent, source: str) -> CommandResult:
        problem = _open_problem(ev, self.contracts.get(ev.contract_id))
        if problem is None and (
            ev.trade_id in self.trades or await self.store.get_trade(ev.trade_id) is not None
        ):
            problem = f"trade id {ev.trade_id} is already in the journal"
        if problem is not None:
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.WARNING,
                f"ignored trade {ev.trade_id}: {problem}",
                ev.trade_id,
            )
            return CommandResult(False, problem)
        t = Trade(
            trade_id=ev.trade_id,
            contract_id=ev.contract_id,
            side=ev.side,
            qty=float(ev.qty),
            entry_price=float(ev.price),
            opened_ts=ev.ts,
            strategy=ev.strategy,
            venue=self.venue.name,
            multiplier=c.multiplier if (c := self.contracts.get(ev.contract_id)) else 1.0,
        )
        if not await self.store.add_trade(t, source=source):
            # The id is taken by a row the engine cannot read (a bad row): never write over it.
            problem = f"trade id {ev.trade_id} is already in the journal (a row not supervised)"
            await self._alert(
                AlertKind.DATA_QUALITY, Severity.WARNING, f"ignored trade {ev.trade_id}: {problem}"
            )
            return CommandResult(False, problem)
        open_position = getattr(self.venue, "open_position", None)
        if open_position is not None and source != "venue":  # found at the venue: it holds it
            open_position(t.contract_id, t.side, t.qty, t.entry_price)
        self._adopt(t)
        await self._alert(
            AlertKind.TRADE_DETECTED,
            Severity.INFO,
            f"tracking {t.trade_id}: {t.side.upper()} {t.qty:g} {t.contract_id} @ "
            f"{t.entry_price:.4f}{' [' + t.strategy + ']' if t.strategy else ''}",
            t.trade_id,
        )
        await self._evaluate(t.trade_id, self.clock.now())
        return CommandResult(True, f"tracking {t.trade_id}")

    async def _positions_job(self, now: float) -> None:
        """The tick's positions poll, in its own task (see POSITIONS_POLL_BUDGET_SECONDS): an
        unexpected error is a critical alert, as a failed tick is."""
        try:
            await self._poll_positions(now)
        except Exception:
            log.exception("positions poll failed")
            await self._alert(
                AlertKind.DATA_QUALITY, Severity.CRITICAL, "positions poll failed; see the log"
            )

    async def _poll_positions(self, now: float) -> None:
        """Adopt positions that appeared at the venue; close as external those that vanished.

        A contract whose holding changed here while the venue was being read (an exit filled,
        a trade opened or closed) is left to the next poll: the answer may predate the change.
        """
        asked_at = self._holding_seq
        # A venue whose market feed reports its connection (IB's GATEWAY_UNREACHABLE) shares
        # that episode: one outage, one alert, whichever notices it first. The feed ends it
        # (it latches every drop of the connection, however short, and reports its recovery).
        shared = f"source:{self.venue.name}"
        try:
            positions = await self.venue.positions()
        except VenueError as e:
            key = shared if str(e).startswith("GATEWAY_UNREACHABLE") else "venue"
            await self._episode(key, f"venue {self.venue.name} unreachable: {e}", None)
            return
        with self._busy:  # the answer may come long after `now` (see POSITIONS_POLL_BUDGET_SECONDS)
            await self._apply_positions(positions, asked_at, max(now, self.clock.now()))

    async def _apply_positions(
        self, positions: list[VenuePosition], asked_at: int, now: float
    ) -> None:
        await self._recover("venue")
        self._venue_answer_ts = now  # the venue's age in the health list (status, header)
        moved = {c for c, seq in self._touched.items() if seq > asked_at}
        self._touched = {c: seq for c, seq in self._touched.items() if seq > asked_at}
        for cid in [c for c, ts in self._settled.items() if now - ts > SETTLED_MEMORY_SECONDS]:
            del self._settled[cid]
        held: dict[tuple[str, str], float] = {}
        avg: dict[tuple[str, str], float] = {}
        for p in positions:
            if p.qty > EPS and p.contract_id not in self._settled and p.contract_id not in moved:
                held[(p.contract_id, p.side)] = held.get((p.contract_id, p.side), 0.0) + p.qty
                avg[(p.contract_id, p.side)] = p.avg_price
        ours: dict[tuple[str, str], list[Trade]] = {}
        for t in self.trades.values():
            if t.venue == self.venue.name and t.state != TradeState.CLOSED:
                ours.setdefault((t.contract_id, t.side), []).append(t)
        for key, ts in ours.items():
            if key[0] in moved or any(t.trade_id in self.exits for t in ts):
                continue  # an exit in flight (or one that just ended) explains any difference
            if key[0] in self._settled:
                continue  # being settled (or waiting for an in-flight exit to settle after)
            if held.get(key, 0.0) <= EPS:
                c = self.contracts.get(key[0])
                if c is not None and c.close_ts <= now < c.close_ts + SETTLEMENT_WAIT_SECONDS:
                    continue  # closed and paid out: its settlement is on the way
                for t in ts:
                    if (
                        t.trade_id in self.exits
                        or t.trade_id not in self.trades
                        or t.state == TradeState.CLOSED
                    ):
                        continue  # an exit began (or it closed) while the loop awaited
                    mark = self.status[t.trade_id].mark if t.trade_id in self.status else None
                    await self._close_in_journal(t, mark, ExitReason.EXTERNAL, now)
                    await self._alert(
                        AlertKind.TRADE_CLOSED,
                        Severity.WARNING,
                        f"{t.trade_id} is no longer held at {self.venue.name}; closed as external",
                        t.trade_id,
                    )
        for key, qty in held.items():
            have = sum(t.qty for t in ours.get(key, []))
            if qty - have > EPS and not any(t.trade_id in self.exits for t in ours.get(key, [])):
                cid, side = key
                tid = f"{self.venue.name}-{cid}-{side}-{uuid.uuid4().hex[:6]}"
                await self._open_trade(
                    OpenEvent(now, tid, cid, side, qty - have, avg.get(key, 0.0)),  # type: ignore[arg-type]
                    source="venue",
                )

    def _row_context(self, now: float) -> RowContext:
        """What a journal row is checked against here: this engine's venue, clock, contracts."""
        return RowContext(venue=self.venue.name, now=now, contract=self.contracts.get)

    async def _unreconciled_exit(self, trade_id: str) -> str | None:
        """The id of an exit intent still pending or sent for a trade not supervised here (its
        row was unreadable at start, then fixed), or None. Only a start reconciles an exit
        against the venue: adopting the trade before would risk a second exit."""
        for intent in await self.store.intents_for_trade(trade_id):
            if intent.get("status") in ("pending", "sent"):
                return str(intent["intent_id"])
        return None

    @property
    def bad_rows(self) -> list[BadRow]:
        """The journal's open rows this engine cannot supervise (engine.trade_rows), as of its
        last look (start, then every journal poll): positions nothing protects."""
        return [b for b in self._bad_row_list if b.watched]

    def _bad_row_ids(self) -> set[Any]:
        """The trade_ids (as written) of the bad rows the last look at the journal found."""
        return {b.trade_id for b in self._bad_row_list}

    async def _alert_bad_rows(self, bad: Sequence[BadRow]) -> None:
        """One critical alert per bad trades row (engine.trade_rows), naming the row, the field
        and the fix; again only when the row changes. `bad` is every bad row of this look at
        the journal: a row no longer among them (fixed, closed, deleted) is forgotten, so it is
        alerted again if it comes back bad."""
        self._bad_row_list = list(bad)
        seen = {b.rowid for b in bad}
        for rowid in [r for r in self._bad_rows if r not in seen]:
            del self._bad_rows[rowid]
        for b in bad:
            if not b.watched or self._bad_rows.get(b.rowid) == b.fingerprint:
                continue
            self._bad_rows[b.rowid] = b.fingerprint
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.CRITICAL,
                b.message(),
                data=b.data(),
                subject=f"bad_row:{b.rowid}:{b.fingerprint}",
            )

    async def _poll_journal(self, now: float) -> None:
        """Pick up trades other programs inserted into the journal, and queued commands.
        Every row is checked as it enters (engine.trade_rows): a bad one is alerted once and
        left alone, never supervised, and never stops the others."""
        found = await self.store.new_open_rows(set(self.trades), self._row_context(now))
        fresh: list[Trade] = []
        bad: list[BadRow] = []
        for rowid, fp, t in found:
            if isinstance(t, Trade):
                pending = await self._unreconciled_exit(t.trade_id)
                if pending is None:
                    fresh.append(t)
                    continue
                t = BadRow(
                    rowid,
                    t.trade_id,
                    str(t.state),
                    "exit_intents",
                    f"an exit journaled for it ({pending}) was never reconciled",
                    "restart the engine: it looks the exit up at the venue at start",
                    fp,
                )
            bad.append(t)
        await self._alert_bad_rows(bad)
        for t in fresh:
            if t.trade_id not in self.trades:
                self._adopt(t)
                await self._sync_paper_positions()
                await self._alert(
                    AlertKind.TRADE_DETECTED,
                    Severity.INFO,
                    f"tracking {t.trade_id} from the journal: {t.side.upper()} {t.qty:g} "
                    f"{t.contract_id} @ {t.entry_price:.4f}",
                    t.trade_id,
                )
                await self._evaluate(t.trade_id, now)
        await self._take_commands()

    async def _take_commands(self) -> None:
        """Run the commands queued in the journal (`trades close` beside a running engine, other
        programs). A bad row is alerted, naming its id and field, and not acted on; a command
        the engine refuses is alerted too (whoever queued it was told it was queued)."""
        take = getattr(self.store, "take_commands", None)
        if take is None:
            return
        for cmd in await take():
            cid, action, tid = cmd.get("id"), cmd.get("action"), cmd.get("trade_id")
            problem = cmd.get("problem")
            if problem is not None:
                field, what = problem
                await self._alert(
                    AlertKind.DATA_QUALITY,
                    Severity.WARNING,
                    f"journal command {cid} ({action!r} for {tid!r}) ignored: {what}; "
                    "fix: queue it again with the trade-supervisor command",
                    data={"command_id": cid, "field": field, "problem": what},
                    subject=f"bad_command:{cid}",
                )
                continue
            try:
                res = await self.command(Command(action, tid, cmd.get("payload") or {}))
            except Exception as e:  # a command must never stop the poll (or the start)
                log.exception("queued command %s %s failed", cid, action)
                res = CommandResult(False, f"failed: {type(e).__name__}: {e}")
            log.info("queued command %s: %s", action, res.message)
            if not res.ok:
                await self._alert(
                    AlertKind.DATA_QUALITY,
                    Severity.WARNING,
                    f"journal command {cid} ({action} for {tid!r}) not done: {res.message}",
                    tid if isinstance(tid, str) and tid in self.trades else None,
                    data={"command_id": cid, "result": res.message},
                    subject=f"command:{cid}",
                )

    # ------------------------------------------------------------------ commands

    async def command(self, cmd: Command) -> CommandResult:
        """The one way in for the UI, the CLI, replay and signals."""
        with self._busy:
            result = await self._command(cmd)
        self._dirty = True
        self._maybe_publish()
        return result

    async def _command(self, cmd: Command) -> CommandResult:
        now = self.clock.now()
        a = cmd.action
        if self.recorders and a in REPLAY_ACTIONS:
            for rec in self.recorders:
                rec(CommandEvent(now, a, cmd.trade_id))
        try:
            if a in ("pause", "resume", "close", "set_overrides", "journal_close"):
                t = self.trades.get(cmd.trade_id or "")
                if t is None:
                    return CommandResult(False, f"no open trade {cmd.trade_id!r}")
                if a == "close":
                    return await self._manual_close(t, now, ExitReason.MANUAL)
                if a == "journal_close":
                    if t.trade_id in self.exits:
                        return CommandResult(
                            False,
                            f"{t.trade_id} has an exit in flight; check again once it is done",
                        )
                    price = cmd.payload.get("price")
                    close_position = getattr(self.venue, "close_position", None)
                    if close_position is not None:  # the simulated account follows the journal
                        close_position(t.contract_id, t.side, t.qty)
                    await self._close_in_journal(
                        t, float(price) if price is not None else None, ExitReason.MANUAL, now
                    )
                    await self._alert(
                        AlertKind.TRADE_CLOSED,
                        Severity.INFO,
                        f"{t.trade_id} closed in the journal (closed elsewhere)",
                        t.trade_id,
                    )
                    return CommandResult(True, f"{t.trade_id} marked closed")
                if a == "set_overrides":
                    return await self._set_overrides(t, cmd.payload)
                t.paused = a == "pause"
                await self.store.save_trade(t)
                st = self.status[t.trade_id]
                st.signalled.clear()
                await self._audit_command(now, cmd)
                await self._evaluate(t.trade_id, now)
                return CommandResult(
                    True, f"{t.trade_id} auto-stop {'paused' if t.paused else 'resumed'}"
                )
            if a in ("pause_all", "resume_all"):
                self.paused_all = a == "pause_all"
                await self._switched(
                    now,
                    cmd,
                    "paused_all",
                    self.paused_all,
                    AlertKind.RISK_LIMIT if self.paused_all else AlertKind.EXIT_SIGNAL,
                    "kill switch ON: all automatic exits paused"
                    if self.paused_all
                    else "kill switch OFF: automatic exits resume",
                )
                return CommandResult(
                    True, "all auto-stops paused" if self.paused_all else "auto-stops resumed"
                )
            if a in ("arm", "disarm"):
                self.armed = a == "arm"
                await self._switched(
                    now,
                    cmd,
                    "armed",
                    self.armed,
                    AlertKind.EXIT_SIGNAL,
                    "ARMED: automatic exits will be sent"
                    if self.armed
                    else "DISARMED: exits are signalled, not sent",
                )
                return CommandResult(True, "armed" if self.armed else "disarmed")
            if a == "close_all":
                results = [
                    await self._manual_close(t, now, ExitReason.CLOSE_ALL)
                    for t in list(self.trades.values())
                ]
                ok = sum(r.ok for r in results)
                return CommandResult(ok == len(results), f"closing {ok} of {len(results)} trades")
            if a == "reload":
                return await self.reload()
            if a == "release_position":
                # `trades close` with no engine running: the trade is closed in the journal;
                # a simulated account lets go of its position too.
                close_position = getattr(self.venue, "close_position", None)
                p = cmd.payload
                if (
                    close_position is not None
                    and p.get("venue", self.venue.name) == self.venue.name
                ):
                    close_position(str(p["contract_id"]), p["side"], float(p["qty"]))
                return CommandResult(True, "position released")
            if a == "add_trade":
                p = cmd.payload
                ev = OpenEvent(
                    ts=float(p.get("opened_ts", now)),
                    trade_id=str(p["trade_id"]),
                    contract_id=str(p["contract_id"]),
                    side=p["side"],
                    qty=float(p["qty"]),
                    price=float(p["price"]),
                    strategy=str(p.get("strategy", "")),
                )
                return await self._open_trade(ev, source="manual")
        except (KeyError, ValueError, TypeError, StoreError) as e:
            return CommandResult(False, f"bad {a} command: {e}")
        return CommandResult(False, f"unknown command {a!r}")

    async def _manual_close(self, t: Trade, now: float, reason: str) -> CommandResult:
        # Checked and marked with no await in between (an auto-stop may fire at any await).
        if t.trade_id not in self.trades or t.state == TradeState.CLOSED:
            return CommandResult(False, f"{t.trade_id} is already closed")
        if t.trade_id in self.exits or t.state != TradeState.OPEN:
            return CommandResult(False, f"{t.trade_id} is already closing")
        if self.mode == Mode.ALERT_ONLY:
            return CommandResult(False, "alert_only mode sends no orders; close it at the venue")
        ex = await self._begin_exit(t, reason, now, manual=True)
        await self._audit_command(now, Command("close", t.trade_id))
        if ex is None:
            return CommandResult(False, f"{t.trade_id}: the exit could not be journaled")
        if t.trade_id not in self.trades:
            return CommandResult(True, f"{t.trade_id} closed")
        problem = self._data_problem(
            t, self.contracts.get(t.contract_id), self.quotes.get(t.contract_id), now
        )
        if problem is not None:  # journaled, but never sent on bad data: say what it waits for
            return CommandResult(
                True, f"{t.trade_id} closing: the exit is journaled and goes out once its data is "
                f"valid ({problem})"
            )
        return CommandResult(True, f"{t.trade_id} closing")

    async def _set_overrides(self, t: Trade, payload: dict[str, Any]) -> CommandResult:
        # `false` switches a rule off, as in the config; the journal stores that as null.
        if any(v is True for v in payload.values()):
            return CommandResult(
                False, "invalid thresholds: use a number, or false to switch a rule off"
            )
        overrides = {k: (None if v is False else v) for k, v in payload.items()}
        try:
            crit = self.config.auto_stop.criteria_for(t.strategy, overrides)
        except Exception as e:
            return CommandResult(False, f"invalid thresholds: {e}")
        # The same contradiction the config check and the screen's editor refuse, for every
        # path (the CLI, a queued command, replay).
        clash = criteria_contradiction(crit, "")
        if clash is not None:
            return CommandResult(False, f"invalid thresholds: trailing_activation_percent {clash}")
        old, t.overrides = t.overrides, overrides
        try:
            await self.store.save_trade(t)
        except StoreError as e:
            t.overrides = old
            return CommandResult(False, f"thresholds not saved: {e}")
        self.status[t.trade_id].criteria = None
        await self._evaluate(t.trade_id, self.clock.now())
        return CommandResult(True, f"{t.trade_id} thresholds updated")

    async def _switched(
        self, now: float, cmd: Command, key: str, value: bool, kind: AlertKind, message: str
    ) -> None:
        """After arm/disarm or the kill switch: persist it, audit it, say it, and re-evaluate
        every trade under the new switch (exit signals may be raised again)."""
        await self.store.set_state(key, value, now)
        await self._audit_command(now, cmd)
        # Each switch is its own news: never held back by the alert cool-down (a quick
        # disarm/arm must not leave "DISARMED" as the last word seen).
        await self._alert(kind, Severity.WARNING, message, subject=key, throttle=False)
        self._clear_signals()
        await self._reevaluate_all(now)

    async def _audit_command(self, now: float, cmd: Command) -> None:
        await self.store.add_audit(now, cmd.trade_id, f"command:{cmd.action}", dict(cmd.payload))

    def _clear_signals(self) -> None:
        for st in self.status.values():
            st.signalled.clear()

    async def _reevaluate_all(self, now: float) -> None:
        for tid in list(self.trades):
            await self._evaluate(tid, now)

    async def reload(self) -> CommandResult:
        """Re-read the config file; a file that fails validation keeps the running config."""
        now = self.clock.now()
        if self.config_path is None:
            return CommandResult(False, "no config file to reload (running on built-in defaults)")
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.CRITICAL,
                "config reload failed, keeping the running config: " + "; ".join(e.lines),
                subject="reload",
                throttle=False,
            )
            return CommandResult(False, "reload failed: " + "; ".join(e.lines))
        old = self.config
        restart_needed = [
            s
            for s in ("engine", "sim", "paper", "venues", "spot")
            if getattr(old, s) != getattr(new, s)
        ]
        self.config = new
        was = (self.mode, self.armed)
        self.mode = new.auto_stop.mode
        if new.auto_stop.armed != old.auto_stop.armed:
            self.armed = new.auto_stop.armed
            await self.store.set_state("armed", self.armed, now)
        self.alerts.cooldown_seconds = new.alerts.cooldown_seconds
        self._criteria_cache.clear()
        for st in self.status.values():
            st.criteria = None
            st.signalled.clear()
        note = f"; restart to apply [{', '.join(restart_needed)}]" if restart_needed else ""
        changed = []
        if self.mode != was[0]:
            changed.append(f"mode was {was[0].value}")
        if self.armed != was[1]:
            changed.append(f"now {'ARMED' if self.armed else 'DISARMED'}")
        # Every reload is announced (never held back by the cool-down: four SIGHUPs 3 s apart are
        # four alerts, and the last word seen is the state now); one that switched something warns.
        await self._alert(
            AlertKind.EXIT_SIGNAL,
            Severity.WARNING if changed else Severity.INFO,
            f"config reloaded: mode {self.mode.value}, {'armed' if self.armed else 'disarmed'}"
            + (f" ({', '.join(changed)})" if changed else "")
            + note,
            subject="reload",
            throttle=False,
        )
        await self._reevaluate_all(now)
        return CommandResult(True, f"config reloaded{note}")

    # ------------------------------------------------------------------ alerts, risk, health

    async def _alert(
        self,
        kind: AlertKind,
        severity: Severity,
        message: str,
        trade_id: str | None = None,
        data: dict[str, Any] | None = None,
        subject: str | None = None,
        throttle: bool = True,
    ) -> None:
        """`throttle=False`: a change of state (reload, arm/disarm, kill switch, a risk close),
        never held back by the alert cool-down."""
        if self.data_note and kind in _EXIT_ALERT_KINDS:
            message = f"{message} [{self.data_note}]"
        await self.alerts.raise_(
            self.clock.now(), kind, severity, message, trade_id, data, subject, throttle=throttle
        )
        self._dirty = True

    async def _episode(
        self, key: str, problem: str, trade_id: str | None, waiting: bool = False
    ) -> None:
        """Start a data-quality episode: one alert when it begins (not on every bad update).

        Right after start-up feeds have not delivered yet: data that is only missing or old
        (`waiting`) is alerted once it outlasts `max_quote_age_seconds` from the start; the trade
        is treated as stale meanwhile all the same. Invalid data is alerted at once.
        """
        self._bad[key] = problem
        if key in self._alerted:
            return
        now = self.clock.now()
        grace = self.config.engine.max_quote_age_seconds
        if waiting and self.started_ts is not None and now - self.started_ts < grace:
            return
        self._alerted.add(key)
        affected = (
            sorted(self.by_contract.get(key.split(":", 1)[1], ()))
            if key.startswith("quote:")
            else []
        )
        if self._grouping is not None and key.startswith("quote:"):
            # Inside a tick or a batch of quotes: one outage of the venue is one alert for all
            # the contracts it touched (`_flush_grouped`), not one per contract.
            self._grouping[0].append((key, problem, trade_id, affected))
            return
        await self._episode_alert(key, problem, trade_id, affected)

    async def _episode_alert(
        self, key: str, problem: str, trade_id: str | None, affected: list[str]
    ) -> None:
        suffix = f"; auto-stop suspended for {', '.join(affected)}" if affected else ""
        await self._alert(
            AlertKind.DATA_QUALITY,
            Severity.WARNING,
            f"{problem}{suffix}",
            trade_id,
            data={"source": key, "problem": problem},
            subject=f"bad:{key}",
        )

    async def _recover(self, key: str) -> None:
        problem = self._bad.pop(key, None)
        if key in self._alerted:
            self._alerted.discard(key)
            if self._grouping is not None and key.startswith("quote:"):
                self._grouping[1].append((key, problem))
                return
            await self._recover_alert(key, problem)

    async def _recover_alert(self, key: str, problem: str | None) -> None:
        await self._alert(
            AlertKind.DATA_QUALITY,
            Severity.INFO,
            f"data recovered: {key} (was: {problem})",
            data={"source": key},
            subject=f"ok:{key}",
        )

    @contextlib.asynccontextmanager
    async def _grouped_quote_alerts(self) -> AsyncIterator[None]:
        """Collect the quote episodes that start or end inside the block and alert them as one
        (a single contract's alert reads as it always did)."""
        if self._grouping is not None:  # nested: the outer block flushes
            yield
            return
        self._grouping = ([], [])
        try:
            yield
        finally:
            started, ended = self._grouping
            self._grouping = None
            await self._flush_grouped(started, ended)

    async def _flush_grouped(
        self,
        started: list[tuple[str, str, str | None, list[str]]],
        ended: list[tuple[str, str | None]],
    ) -> None:
        if len(started) == 1:
            await self._episode_alert(*started[0])
        elif started:
            trades = sorted({tid for *_x, aff in started for tid in aff})
            contracts = [k.split(":", 1)[1] for k, *_y in started]
            shown = "; ".join(p for _k, p, _t, _a in started[:3])
            more = f"; +{len(started) - 3} more" if len(started) > 3 else ""
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.WARNING,
                f"quotes of {len(started)} contracts unusable: {shown}{more}; auto-stop "
                f"suspended for {len(trades)} trade{'s' if len(trades) != 1 else ''}: "
                f"{', '.join(trades[:8])}{' …' if len(trades) > 8 else ''}",
                data={
                    "source": "quotes",
                    "contracts": contracts,
                    "problems": {k: p for k, p, _t, _a in started},
                    "trades": trades,
                },
                subject=f"bad:quotes:{self.clock.now()}",
            )
        if len(ended) == 1:
            await self._recover_alert(*ended[0])
        elif ended:
            contracts = [k.split(":", 1)[1] for k, _p in ended]
            await self._alert(
                AlertKind.DATA_QUALITY,
                Severity.INFO,
                f"data recovered: quotes of {len(ended)} contracts "
                f"({', '.join(contracts[:4])}{' …' if len(contracts) > 4 else ''})",
                data={"source": "quotes", "contracts": contracts},
                subject=f"ok:quotes:{self.clock.now()}",
            )

    def _add_realized(self, pnl: float, ts: float) -> None:
        """Add realised P&L to the UTC day it happened on (rolling the day over if needed)."""
        day = _utc_day(ts)
        if day != self._today:
            if day < self._today:
                return  # a late booking for a day already over
            self._today, self._realized_today = day, 0.0
        self._realized_today += pnl

    async def _check_risk(self, now: float) -> None:
        day = _utc_day(now)
        if day != self._today:
            self._today, self._realized_today = day, 0.0
        n = len(self.trades)
        at_risk = 0.0
        unreal = 0.0
        for t in self.trades.values():
            c = self.contracts.get(t.contract_id)
            mult = c.multiplier if c else t.multiplier
            at_risk += abs(t.qty) * t.entry_price * mult
            st = self.status.get(t.trade_id)
            if st is not None and st.pnl is not None:
                unreal += st.pnl
        daily = self._realized_today + unreal
        r = self.config.risk
        breaches: list[str] = []
        if r.max_open_positions is not None and n > r.max_open_positions:
            breaches.append(f"open positions {n} > {r.max_open_positions}")
        if r.max_total_risk is not None and at_risk > r.max_total_risk:
            breaches.append(f"total at risk ${at_risk:,.2f} > ${r.max_total_risk:,.2f}")
        if r.max_daily_loss is not None and daily <= -r.max_daily_loss:
            breaches.append(f"daily P&L ${daily:,.2f} beyond the -${r.max_daily_loss:,.2f} limit")
        self._risk = RiskView(n, at_risk, daily, tuple(breaches))
        kinds = {b.split(" ")[0] for b in breaches}
        for b in breaches:
            k = b.split(" ")[0]
            if k not in self._breaches:
                self._breaches.add(k)  # this episode's action is taken once, here
                await self._alert(
                    AlertKind.RISK_LIMIT, Severity.CRITICAL, f"risk limit: {b}", subject=f"risk:{k}"
                )
                policy = {"daily": r.on_daily_loss, "total": r.on_total_risk}.get(k, "alert")
                if policy == "close_all":
                    await self._risk_close_all(k, b, now)
        for k in self._breaches - kinds:
            await self._alert(
                AlertKind.RISK_LIMIT,
                Severity.INFO,
                f"risk limit back within bounds: {k}",
                subject=f"riskok:{k}",
            )
        self._breaches = kinds

    async def _risk_close_all(self, kind: str, breach: str, now: float) -> None:
        """[risk] on_daily_loss / on_total_risk = "close_all": close every supervised trade through
        the normal exit path (journal first, the ladder), once per breach episode. The switches
        still hold (a paused trade, the kill switch, disarmed, alert_only): those trades are named
        in the alert, not closed. A breach never pauses the stops."""
        key = "on_daily_loss" if kind == "daily" else "on_total_risk"
        reason = ExitReason.RISK_DAILY_LOSS if kind == "daily" else ExitReason.RISK_TOTAL_RISK
        closing: list[Trade] = []
        held: list[str] = []
        already: list[str] = []
        for t in list(self.trades.values()):
            if t.state != TradeState.OPEN or t.trade_id in self.exits:
                already.append(t.trade_id)
                continue
            st = self.status.get(t.trade_id) or _Status()
            blocked = self._auto_block_reason(t, st, now)
            if blocked is not None:
                held.append(f"{t.trade_id} ({blocked})")
            else:
                closing.append(t)
        msg = (
            f"risk limit: {breach} — [risk] {key} = \"close_all\": closing "
            f"{len(closing)} trade(s)"
            + (f": {', '.join(t.trade_id for t in closing)}" if closing else "")
        )
        if already:
            msg += f"; already closing: {', '.join(already)}"
        if held:
            msg += f"; NOT closing {', '.join(held)}: close them yourself"
        await self._alert(
            AlertKind.RISK_LIMIT,
            Severity.CRITICAL,
            msg,
            data={"breach": breach, "closing": [t.trade_id for t in closing], "held": held},
            subject=f"risk_close_all:{kind}",
            throttle=False,
        )
        for t in closing:
            # Still open and not closing (a quote may have started its exit meanwhile).
            ok = t.trade_id in self.trades and t.state == TradeState.OPEN
            if ok and t.trade_id not in self.exits:
                await self._begin_exit(t, reason, now, manual=False)

    async def _scan_opportunities(self, now: float) -> None:
        thr = self.config.signals.edge_threshold
        if thr <= 0:
            return
        for row in self._strike_rows(now):
            if not isinstance(row, StrikeRow):
                continue  # an option chain's row: no binary edge
            for side, d in (("YES", row.diff_yes), ("NO", row.diff_no)):
                key = f"{row.contract_id}:{side}"
                if (
                    d is not None
                    and d >= thr
                    and now - self._last_opportunity.get(key, -math.inf)
                    >= OPPORTUNITY_COOLDOWN_SECONDS
                ):
                    self._last_opportunity[key] = now
                    await self._alert(
                        AlertKind.OPPORTUNITY,
                        Severity.INFO,
                        f"{row.contract_id} {side} edge {d * 100:+.1f}¢ (model {row.prob:.2f})",
                        data={"contract": row.contract_id, "side": side, "edge": d},
                        subject=f"opp:{row.contract_id}:{side}",
                    )

    def _heartbeat(self, now: float) -> dict[str, Any]:
        return {
            "ts": now,
            "wall_ts": time.time(),
            "pid": os.getpid(),  # a second engine refuses to open the journal while it is fresh
            "started_ts": self.started_ts,
            "venue": self.venue.name,
            "mode": self.mode.value,
            "armed": self.armed,
            "paused_all": self.paused_all,
            "open_trades": len(self.trades),
            "sources": {h.name: h.age_seconds for h in self._health(now)},
            "bad_data": dict(self._bad),
            "unprotected": {u.trade_id: u.reason for u in self.watchdog.current.values()},
            "unprotected_after_seconds": self.watchdog.limit,
            "market_closed": sorted(self.market_closed),
            "exits_held": {  # exits waiting: the market closed, other clients' orders
                tid: why
                for tid, t in self.trades.items()
                if (why := self._held_reason(t, self.status.get(tid) or _Status()))
            },
            **{k: f() for k, f in self.heartbeat_extras.items()},
        }

    def _health(self, now: float) -> list[SourceHealth]:
        out = []
        spot = self.spot_hist.latest()
        spot_age = now - spot[0] if spot else None
        out.append(
            SourceHealth(
                f"spot {self.symbol}",
                spot[0] if spot else None,
                spot_age,
                spot_age is None or spot_age > self.config.engine.max_spot_age_seconds,
            )
        )
        qts = [q.ts for q in self.quotes.values()]
        last_q = max(qts) if qts else None
        q_age = now - last_q if last_q is not None else None
        out.append(
            SourceHealth(
                "quotes",
                last_q,
                q_age,
                q_age is None or q_age > self.config.engine.max_quote_age_seconds,
            )
        )
        v_ts: float | None = getattr(self, "_venue_answer_ts", None)  # its last positions answer
        v_age = now - v_ts if v_ts is not None else None
        out.append(SourceHealth(f"venue {self.venue.name}", v_ts, v_age, "venue" in self._bad))
        return out

    # ------------------------------------------------------------------ snapshot

    def _maybe_publish(self) -> None:
        if self.subscribers and self._dirty:
            snap = self.snapshot()
            for s in self.subscribers:
                s(snap)

    def held_contract_ids(self) -> set[str]:
        """The contracts of the trades being watched (feeds follow the ones they do not list)."""
        return {t.contract_id for t in self.trades.values()}

    def snapshot(self) -> Snapshot:
        """The current immutable picture (rebuilt only when something changed)."""
        if self._snapshot is not None and not self._dirty:
            return self._snapshot
        now = self.clock.now()
        self._dirty = False
        return self._finish_snapshot(now, self._strike_rows(now), self._trade_rows(now))

    async def snapshot_async(self, slice_seconds: float = SNAPSHOT_SLICE_SECONDS) -> Snapshot:
        """`snapshot()`, built in slices of at most ~`slice_seconds` of CPU with the event loop
        let through between them, so a quote or an exit never waits for a whole picture.

        Building 1000 strikes and 500 trades takes ~30 ms: done in one go, a quote arriving
        meanwhile would wait that long. Each row is built in one piece from the state at that
        moment; a trade closed during the build is left out, and whatever changed during the
        build marks the picture dirty again, so the next one shows it.
        """
        if self._snapshot is not None and not self._dirty:
            return self._snapshot
        seq_before = self._seq
        now = self.clock.now()
        self._dirty = False
        slice_start = time.perf_counter()

        async def let_through() -> None:
            nonlocal slice_start
            if time.perf_counter() - slice_start >= slice_seconds:
                await self.let_reactions_through()
                slice_start = time.perf_counter()

        strikes: list[StrikeRow] = []
        for row in self._strike_rows_iter(now):
            strikes.append(row)
            await let_through()
        trades: list[TradeRow] = []
        for t in list(self.trades.values()):
            if t.trade_id in self.trades:  # not closed while the loop was let through
                trades.append(self._trade_row(t, now))
                await let_through()
        if self._seq != seq_before and self._snapshot is not None:
            return self._snapshot  # a newer picture was taken meanwhile (snapshot())
        return self._finish_snapshot(now, strikes, trades)

    async def let_reactions_through(self) -> None:
        """For long work on the engine loop that is not a reaction (building or encoding the
        screen's picture): give the loop a turn, and if an event or a command is being handled
        (an exit waiting for its journal commit), wait until it is done (at most
        SNAPSHOT_MAX_WAIT_SECONDS) before taking the CPU again."""
        await asyncio.sleep(0)
        await self._busy.wait_idle(SNAPSHOT_MAX_WAIT_SECONDS)

    def _finish_snapshot(
        self, now: float, strikes: Iterable[StrikeRow], trades: Iterable[TradeRow]
    ) -> Snapshot:
        self._seq += 1
        self._snapshot = Snapshot(
            seq=self._seq,
            ts=now,
            venue=self.venue.name,
            mode=self.mode.value,
            badge=self.badge(),
            real_money=self.real_money(),
            armed=self.armed,
            paused_all=self.paused_all,
            market=self._market_view(now),
            strikes=tuple(strikes),
            trades=tuple(trades),
            alerts=tuple(self.alerts.recent),
            health=tuple(self._health(now)),
            risk=self._risk,
            alert_channels=self.alerts.channel_health(),
            unprotected=self._unprotected_view(),
        )
        return self._snapshot

    def current_event(self, now: float) -> tuple[str, float | None, list[Contract]]:
        """The listed event closing next (id, close time, its contracts by strike)."""
        live = [c for c in self.contracts.values() if c.close_ts > now]
        if not live:
            return "", None, []
        close = min(c.close_ts for c in live)
        cs = sorted((c for c in live if c.close_ts == close), key=lambda c: c.strike or 0.0)
        return cs[0].event_id or cs[0].id, close, cs

    def sigma_used(self, now: float | None = None) -> signals.SigmaChoice:
        """The probability model's sigma at `now` (default: the clock) and where it came from:
        [signals] sigma_source, falling back to realised, then to fallback_sigma."""
        sc = self.config.signals
        return signals.choose_sigma(
            sc.sigma_source,
            self.vol.state.sigma,
            sc.fallback_sigma,
            self.implied_vol,
            self.implied_vol_ts,
            self.clock.now() if now is None else now,
            sc.implied_vol_max_age_seconds,
        )

    def _market_view(self, now: float) -> MarketView:
        latest = self.spot_hist.latest()
        spot = latest[1] if latest else None
        past = self.spot_hist.price_at(latest[0] - 1800) if latest else None
        change = 100.0 * (spot / past - 1.0) if spot and past else None
        spark = tuple(self.spot_hist.minute_closes(now, 30)) if latest else ()
        event_id, close, cs = self.current_event(now)
        vs = self.vol.state
        sigma = self.sigma_used(now)
        iv, iv_ts = self.implied_vol, self.implied_vol_ts
        regime, regime_source = self.regime_now(now)
        close_label: str | None = None
        exchange_open: bool | None = None
        if self.market_hours is not None and not any(c.is_binary for c in cs):
            # Options and stocks: TTC to the exchange's close (holidays, early closes).
            chain = self._option_chain(now)
            event_id = chain[0] if chain is not None else ""
            try:
                close = self.market_hours.next_close(now)
                close_label = self.market_hours.close_label(close, now)
                exchange_open = self.market_hours.is_open(now)
            except ValueError:  # outside the calendar's sessions
                close = None
        return MarketView(
            symbol=self.symbol,
            spot=spot,
            spot_ts=latest[0] if latest else None,
            change_30m_pct=change,
            sparkline=spark,
            momentum_pct=tuple(sorted(self.momentum_deltas.items())),
            momentum_bps=self.momentum_bps,
            sigma=vs.sigma,
            sigma_used=sigma.sigma,
            vol_score=vs.score,
            regime=regime,
            event_id=event_id,
            close_ts=close,
            ttc_seconds=(close - now) if close and math.isfinite(close) else None,
            spot_source=self.spot_source,
            sigma_source=sigma.source,
            sigma_wanted=self.config.signals.sigma_source,
            implied_vol=iv,
            implied_vol_age=(now - iv_ts) if iv is not None and iv_ts is not None else None,
            regime_source=regime_source,
            vix=self.vix,
            vix_age=(now - self.vix_ts) if self.vix_ts is not None else None,
            close_label=close_label,
            exchange_open=exchange_open,
        )

    def _strike_rows(self, now: float) -> list[StrikeRow | OptionStrikeRow]:
        return list(self._strike_rows_iter(now))

    def _strike_rows_iter(self, now: float) -> Iterator[StrikeRow | OptionStrikeRow]:
        _, close, cs = self.current_event(now)
        if cs and not any(c.is_binary for c in cs):
            yield from self._option_rows_iter(now)  # options and stocks: the option chain
            return
        latest = self.spot_hist.latest()
        if latest is None:
            return
        spot = latest[1]
        if close is None:
            return
        tau = signals.tau_years(close, now)
        sigma = self.sigma_used(now).sigma
        mu = (
            signals.momentum_drift(self.momentum_bps) if self.config.signals.momentum_drift else 0.0
        )
        thr = self.config.signals.edge_threshold
        atm = min(cs, key=lambda c: abs((c.strike or 0.0) - spot)).id if cs else None
        for c in cs:
            q = self.quotes.get(c.id)
            bid = q.bid if q else None
            ask = q.ask if q else None
            below = c.type == "binary_below"
            m = signals.strike_metrics(
                spot, c.strike or 0.0, c.cap, sigma, tau, bid, ask, mu, below=below
            )
            yield (
                StrikeRow(
                    contract_id=c.id,
                    strike=c.strike or 0.0,
                    cap=c.cap,
                    below=below,
                    buffer=m.buffer,
                    buffer_pct=m.buffer_pct,
                    expected_move=m.expected_move,
                    bm=m.bm,
                    prob=m.prob,
                    yes_bid=bid,
                    yes_ask=ask,
                    no_bid=(1.0 - ask) if ask is not None else None,
                    no_ask=(1.0 - bid) if bid is not None else None,
                    diff_yes=m.diff_yes,
                    diff_no=m.diff_no,
                    volume=q.volume if q else 0.0,
                    open_interest=q.open_interest if q else 0.0,
                    atm=c.id == atm,
                    held=c.id in self.by_contract,
                    edge=thr > 0
                    and any(d is not None and d >= thr for d in (m.diff_yes, m.diff_no)),
                    quote_age=(now - q.ts) if q else None,
                )
            )

    def _option_chain(self, now: float) -> tuple[str, float, list[Contract]] | None:
        """The option chain the strike table shows: the options of the underlying (the spot's
        symbol, when any option is on it; else all) expiring next, as (label, close, options);
        the label is "<underlying> <YYYYMMDD>". None when no option is listed."""
        opts = [c for c in self.contracts.values() if c.type in OPTION_TYPES and c.close_ts > now]
        mine = [c for c in opts if c.underlying == self.symbol]
        opts = mine or opts
        if not opts:
            return None
        close = min(c.close_ts for c in opts)
        chain = [c for c in opts if c.close_ts == close]
        first = chain[0]
        return f"{first.underlying} {_expiry(first)}", close, chain

    def _option_rows_iter(self, now: float) -> Iterator[OptionStrikeRow]:
        """One row per strike of the option chain: call and put side by side, with the venue's
        IV and delta, time value (mid − intrinsic at the quote's und_price, else the spot) and
        N(d2) from each option's own IV to its close."""
        chain = self._option_chain(now)
        if chain is None:
            return
        _, close, cs = chain
        latest = self.spot_hist.latest()
        spot = latest[1] if latest is not None else None
        held = set(self.by_contract)  # traded contracts, and the legs of traded combos
        for cid in self.by_contract:
            combo = self.contracts.get(cid)
            if combo is not None and combo.legs:
                held.update(leg.contract_id for leg in combo.legs)
        by_strike: dict[float, list[Contract | None]] = {}
        for c in cs:
            if c.strike is None:
                continue
            pair = by_strike.setdefault(c.strike, [None, None])
            pair[0 if c.type == "option_call" else 1] = c
        und_ref = spot
        if und_ref is None:  # no spot yet: the first model price a quote carries
            for c in cs:
                q = self.quotes.get(c.id)
                if q is not None and q.und_price is not None and math.isfinite(q.und_price):
                    und_ref = q.und_price
                    break
        atm = (
            min(by_strike, key=lambda k: abs(k - und_ref))
            if by_strike and und_ref is not None
            else None
        )
        tau = signals.tau_years(close, now)
        first = cs[0]
        expiry = _expiry(first)
        for strike in sorted(by_strike):
            call, put = by_strike[strike]
            sides: list[OptionSide | None] = []
            und: float | None = None
            for c in (call, put):
                if c is None:
                    sides.append(None)
                    continue
                q = self.quotes.get(c.id)
                u = q.und_price if q is not None and q.und_price is not None else spot
                und = und if und is not None else u
                m = signals.option_metrics(
                    c.type == "option_call",
                    u,
                    strike,
                    q.iv if q is not None else None,
                    tau,
                    q.bid if q is not None else None,
                    q.ask if q is not None else None,
                )
                sides.append(
                    OptionSide(
                        contract_id=c.id,
                        bid=q.bid if q is not None else None,
                        ask=q.ask if q is not None else None,
                        iv=q.iv if q is not None else None,
                        delta=q.delta if q is not None else None,
                        time_value=m.time_value,
                        prob_itm=m.prob_itm,
                        held=c.id in held,
                        volume=q.volume if q is not None else 0.0,
                        open_interest=q.open_interest if q is not None else 0.0,
                        quote_age=(now - q.ts) if q is not None else None,
                    )
                )
            yield OptionStrikeRow(
                contract_id=f"{first.underlying} {expiry} {strike:g}",
                strike=strike,
                expiry=expiry,
                close_ts=close,
                underlying=und,
                call=sides[0],
                put=sides[1],
                atm=strike == atm,
            )

    def _trade_rows(self, now: float) -> list[TradeRow]:
        return [self._trade_row(t, now) for t in self.trades.values()]

    def _trade_row(self, t: Trade, now: float) -> TradeRow:
        st = self.status.get(t.trade_id) or _Status()
        near = rules.nearest(st.results)
        held = self._held_reason(t, st)
        c = self.contracts.get(t.contract_id)
        time_value: float | None = None
        tv_state: str | None = None
        if c is not None and (c.type in OPTION_TYPES or c.type == "combo"):
            # The evaluation's measure (rules.min_time_value): CRITICAL where the rule fires.
            tv = next((r for r in st.results if r.rule == "min_time_value"), None)
            if tv is not None:
                time_value = tv.value
                tv_state = (
                    "CRITICAL" if tv.fired else signals.time_value_state(tv.value, tv.threshold)
                )
            else:  # no floor set for this trade: the value alone, with no state to measure
                time_value = st.time_value
        return TradeRow(
            trade_id=t.trade_id,
            contract_id=t.contract_id,
            side=t.side,
            qty=t.qty,
            entry=t.entry_price,
            mark=st.mark,
            pnl=st.pnl,
            pnl_pct=st.pnl_pct,
            peak_pnl=t.peak_pnl,
            peak_pnl_pct=t.peak_pnl_pct,
            drawdown=(t.peak_pnl - st.pnl) if st.pnl is not None else 0.0,
            opened_ts=t.opened_ts,
            held_seconds=max(now - t.opened_ts, 0.0),
            nearest=_held_words(held)
            if held
            else f"{st.blocked[0]} FIRED — {st.blocked[1]}"
            if st.blocked is not None
            else near.describe()
            if near
            else "—",
            rules=tuple(
                RuleView(r.rule, r.fired, r.value, r.threshold, r.distance, r.unit, r.describe())
                for r in st.results
            ),
            state=(
                _held_state(held)  # the watchdog's verdict stays first
                if held and t.trade_id not in self.watchdog.current
                else self._trade_state(t, st, now)
            ),
            problem=st.problem or held,
            strategy=t.strategy,
            paused=t.paused,
            proceeds=pricing.exit_value(t, st.mark, c.multiplier if c else t.multiplier)
            if st.mark is not None
            else None,
            contract_type=c.type if c is not None else "",
            time_value=time_value,
            tv_state=tv_state,
            unprotected=u.reason if (u := self.watchdog.current.get(t.trade_id)) else None,
            blocked=st.blocked[1] if st.blocked is not None else None,
        )

    def badge(self) -> str:
        """The mode badge the header shows: SIM, PAPER, LIVE or ALERT-ONLY, followed by the
        data note when there is one ("LIVE · DELAYED DATA")."""
        badge = self._mode_badge()
        return f"{badge} · {self.data_note.upper()}" if self.data_note else badge

    def _mode_badge(self) -> str:
        if self.mode == Mode.ALERT_ONLY:
            return "ALERT-ONLY"
        if self.venue.name == "sim":
            return "SIM"
        if self.venue.name == "paper" or self.mode == Mode.DRY_RUN:
            return "PAPER"
        return "LIVE"

    def real_money(self) -> bool:
        """Whether arming lets the engine send real orders (asked to confirm in the UI)."""
        return self._mode_badge() == "LIVE"

    async def trade_detail(self, trade_id: str) -> TradeDetail | None:
        """The detail screen's picture of one open trade (None once it is closed)."""
        t = self.trades.get(trade_id)
        if t is None:
            return None
        now = self.clock.now()
        st = self.status.get(trade_id) or _Status()
        row = self._trade_row(t, now)
        c = self.contracts.get(t.contract_id)
        mult = c.multiplier if c else t.multiplier
        basis = pricing.original_cost_basis(t, mult)
        crit = self._criteria(t, st) if trade_id in self.status else Criteria()
        marks = [
            (ts, pnl) for ts, _m, pnl, _p in await self.store.marks(trade_id) if pnl is not None
        ]
        marks.extend((ts, pnl) for tid, ts, _m, pnl, _p in self._marks_pending if tid == trade_id)
        if st.pnl is not None and (not marks or marks[-1][0] < now):
            marks.append((now, st.pnl))
        audit = [
            AuditEntry(a["ts"], a["event"], _compact(a.get("data") or {}))
            for a in await self.store.audit_for_trade(trade_id)
        ]
        stored = await self.store.alerts_for_trade(trade_id)
        alerts = [a for a in map(alert_from_row, stored) if a is not None]
        return TradeDetail(
            row=row,
            contract=_contract_title(c) if c else t.contract_id,
            cost_basis=basis,
            marks=tuple(sorted(marks)),
            levels=tuple(_pnl_levels(t, crit, basis)),
            criteria=tuple(crit.model_dump().items()),
            overrides=tuple(sorted(t.overrides.items())),
            audit=tuple(audit),
            alerts=tuple(alerts),
        )

    def _trade_state(self, t: Trade, st: _Status, now: float) -> str:
        if t.state == TradeState.CLOSING or t.trade_id in self.exits:
            return "closing"
        if t.trade_id in self.watchdog.current:
            return "unprotected"
        if t.trade_id in self.market_closed:
            return "mkt closed"
        if st.problem is not None:
            return "stale"
        if self.mode == Mode.ALERT_ONLY:
            return "alert_only"
        if t.paused or self.paused_all:
            return "paused"
        if not self.armed:
            return "disarmed"
        return "armed"

    @staticmethod
    def _new_vol_tracker(config: Config) -> signals.VolatilityTracker:
        """Realised volatility of the underlying: an IBKR underlying trades only while its exchange
        is open, so its minute returns are annualised over trading minutes, not 24/7 ones."""
        s = config.signals
        return signals.VolatilityTracker(
            s.volatility_windows_minutes,
            s.volatility_lookback_minutes,
            s.regime_thresholds,
            minutes_per_year=(
                signals.TRADING_MINUTES_PER_YEAR
                if config.engine.venue == "ibkr"
                else signals.MINUTES_PER_YEAR
            ),
        )


_RULE_RANK = {name: i for i, name in enumerate(rules.RULE_ORDER)}


def _open_problem(ev: OpenEvent, contract: Contract | None) -> str | None:
    if not isinstance(ev.trade_id, str) or not ev.trade_id.strip():
        return "the trade id is empty"
    if not isinstance(ev.ts, int | float) or not math.isfinite(ev.ts) or ev.ts <= 0:
        return f"open time {ev.ts!r} is not a Unix timestamp"
    if ev.side not in ("yes", "no", "long", "short"):
        return f"side {ev.side!r} is not yes/no/long/short"
    for name, v in (("qty", ev.qty), ("price", ev.price)):
        if not isinstance(v, int | float) or not math.isfinite(v):
            return f"{name} {v!r} is not a number"
    if ev.qty <= 0:
        return f"qty {ev.qty} must be > 0"
    if ev.qty > MAX_QTY:
        return f"qty {ev.qty:g} is more than {MAX_QTY:,.0f} contracts (docs/trades-schema.md)"
    if ev.price < 0:
        return f"price {ev.price} must be >= 0"
    binary_side = ev.side in ("yes", "no")
    if (binary_side or (contract is not None and contract.is_binary)) and ev.price > 1:
        return f"price {ev.price} is outside 0..1 for a binary contract"
    if contract is not None and contract.is_binary != binary_side:
        return f"side {ev.side!r} does not fit a {contract.type} contract"
    return None


_BLOCK_LABELS = {
    "alert_only mode (close it yourself)": "alert_only",
    "disarmed": "disarmed",
    "all auto-stops paused (kill switch)": "kill switch",
    "auto-stop paused for this trade": "paused",
    "a recent exit failed; retrying after a cool-down": "cool-down",
}


def _block_label(reason: str) -> str:
    """`Engine._auto_block_reason` in a word, for the trade's row; a venue's own reason (IB's
    read-only session) is "venue"."""
    return _BLOCK_LABELS.get(reason, "venue")


# Reasons a venue gives for an order it held back unsent (`Venue.exit_hold`): not a failure.
_HOLD_CODES = ("MARKET_CLOSED", "FOREIGN_ORDERS")


def _held_words(held: str) -> str:
    """The few words the trade table shows for an exit that waits (`Engine._exit_hold`)."""
    return "exit due at the open" if held.startswith("MARKET_CLOSED") else "exit held"


def _held_state(held: str) -> str:
    return "mkt closed" if held.startswith("MARKET_CLOSED") else "exit held"


def _utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _pnl_levels(t: Trade, crit: Criteria, basis: float) -> list[PnlLevel]:
    """Where entry, peak and the P&L-based stops sit, in P&L dollars, for the detail chart."""

    def at(pct: float) -> float:
        return pct / 100.0 * basis

    out = [
        PnlLevel("entry", 0.0, "entry (P&L 0)"),
        PnlLevel("peak", t.peak_pnl, f"peak {t.peak_pnl:+,.2f}"),
    ]
    if crit.max_loss_percent is not None:
        v = at(-crit.max_loss_percent)
        out.append(PnlLevel("max_loss", v, f"max_loss -{crit.max_loss_percent:g}% = {v:+,.2f}"))
    if crit.profit_target_percent is not None:
        v = at(crit.profit_target_percent)
        out.append(
            PnlLevel(
                "profit_target", v, f"profit_target +{crit.profit_target_percent:g}% = {v:+,.2f}"
            )
        )
    dd = crit.trailing_drawdown_percent
    if dd is not None and t.peak_pnl_pct >= (crit.trailing_activation_percent or 0.0):
        v = at(t.peak_pnl_pct - dd)
        out.append(PnlLevel("trailing_stop", v, f"trailing_stop {dd:g}% below peak = {v:+,.2f}"))
    return out


def _contract_title(c: Contract) -> str:
    close = time.strftime("%H:%M UTC", time.gmtime(c.close_ts))
    if c.type == "binary_above" and c.strike is not None:
        return f"{c.underlying} above ${c.strike:,.0f} at {close}"
    if c.type == "binary_below" and c.strike is not None:
        return f"{c.underlying} below ${c.strike:,.0f} at {close}"
    if c.type == "binary_range" and c.cap is not None:
        return f"{c.underlying} ${c.strike:,.0f}–${c.cap:,.0f} at {close}"
    if c.type in ("option_call", "option_put"):
        kind = "call" if c.type == "option_call" else "put"
        day = time.strftime("%Y-%m-%d", time.gmtime(c.close_ts))
        return f"{c.underlying} {c.strike:g} {kind}, expires {day}"
    return f"{c.underlying} ({c.type})"


def _expiry(c: Contract) -> str:
    """An option's expiry YYYYMMDD: from its id ("AAPL 20260116 150C"), else its close's date."""
    parts = c.id.split()
    if len(parts) >= 2 and len(parts[1]) == 8 and parts[1].isdigit():
        return parts[1]
    return time.strftime("%Y%m%d", time.gmtime(c.close_ts))


def _compact(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.items())
