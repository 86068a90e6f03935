"""The rules for a good row of the journal's `trades` table, and what a bad one is.

This module owns the check of a trades row as it enters the engine: at start (`Store.load_trades`),
on every journal poll while the engine runs (rows other programs inserted), in `trades list`, and
before the store writes a trade. docs/trades-schema.md says the same rules in words; the CHECK
constraints of the table (`TRADES_CHECKED_DDL` in engine/store.py) are the part SQLite can check.

`check_row` turns a row into a `Trade` or a `BadRow`: the rowid and the trade_id as written, the
first field that is wrong, what is wrong and how to fix it, and a fingerprint of the whole row
so a caller alerts once per bad row and again only when the row changes. Nothing here writes to
the journal: a bad row is left exactly as it was written.

Checks that need the engine (its venue, its clock, the contract) are made when a `RowContext`
gives them; without it only what the row itself says is checked (a YES/NO side's price must be in
0..1 whatever the contract, since a binary pays at most $1).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.models import Contract, Trade, TradeState

__all__ = [
    "BINARY_ONLY_VENUES",
    "MAX_PRICE",
    "MAX_QTY",
    "MAX_TS",
    "NO_BINARY_VENUES",
    "BadRow",
    "RowContext",
    "check_row",
    "command_problem",
    "fingerprint",
    "num_ok",
    "overrides_problem",
    "trade_problem",
]

SIDES = ("yes", "no", "long", "short")
BINARY_SIDES = ("yes", "no")
TRADE_STATES = tuple(s.value for s in TradeState)
WATCHED_STATES = ("open", "closing")

MAX_QTY = 1e7  # contracts (shares): more is a unit mistake (qty 1e15 raised a -$3e13 breach)
MAX_PRICE = 1e7  # dollars per contract, for options and stocks (binaries: 0..1)
MAX_TS = 1e11  # Unix seconds end well below this (year 5138); milliseconds (1.7e12) do not
FUTURE_SLACK_SECONDS = 86400.0  # an external row's opened_ts may be this far ahead of the clock
# Venues whose contracts are all binaries: a long/short side there is a mistake.
BINARY_ONLY_VENUES = frozenset({"sim", "kalshi"})
# Venues with no binaries at all (IBKR: options, stocks, combos): a yes/no side there is a mistake.
NO_BINARY_VENUES = frozenset({"ibkr"})

_REQUIRED_NUMS = (
    "qty",
    "entry_price",
    "opened_ts",
    "fees",
    "peak_pnl",
    "peak_pnl_pct",
    "trough_pnl",
    "trough_pnl_pct",
    "closed_qty",
    "multiplier",
)
_OPTIONAL_NUMS = ("closed_ts", "exit_price", "realized_pnl")


@dataclass(frozen=True, slots=True)
class RowContext:
    """What the engine knows that a row alone does not say. Every field is optional."""

    venue: str | None = None  # the engine's venue name: watched rows must name it
    now: float | None = None  # the engine's clock, for rows dated in the future
    contract: Callable[[str], Contract | None] | None = None  # a known contract by id


@dataclass(frozen=True, slots=True)
class BadRow:
    """A trades row the engine cannot use. It is never supervised, sent, changed or deleted."""

    rowid: int
    trade_id: Any  # as written: may be None, bytes, '' ...
    state: Any
    field: str
    problem: str
    fix: str
    fingerprint: str

    @property
    def watched(self) -> bool:
        """True for a row in a state the engine would supervise (open or closing)."""
        return self.state in WATCHED_STATES

    @property
    def shown_id(self) -> str:
        """The trade_id for a listing: the text itself, else its repr (None, b'..')."""
        t = self.trade_id
        return t if isinstance(t, str) and t.strip() else repr(t)

    def message(self) -> str:
        return (
            f"journal row {self.rowid} (trade_id {self.trade_id!r}) is not supervised: "
            f"{self.problem}; fix: {self.fix}"
        )

    def data(self) -> dict[str, Any]:
        tid = self.trade_id
        return {
            "rowid": self.rowid,
            "trade_id": tid if isinstance(tid, str) or tid is None else repr(tid),
            "field": self.field,
            "problem": self.problem,
            "fix": self.fix,
        }


class _Bad(Exception):
    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.field, self.problem, self.fix = field, problem, fix


def num_ok(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _shown(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return f"a BLOB ({len(v)} bytes)"
    if isinstance(v, str):
        return f"the text {v!r}"
    return repr(v)


def fingerprint(row: Mapping[str, Any] | Any) -> str:
    """A digest of every column of `row` (values and their types): changes when the row does."""
    keys = list(row.keys())
    parts = [(k, type(row[k]).__name__, repr(row[k])) for k in keys]
    return hashlib.sha1(repr(parts).encode("utf-8", "replace")).hexdigest()[:16]


def _where(rowid: int | None) -> str:
    return f" WHERE rowid = {rowid}" if rowid is not None else ""


def _text_id(name: str, v: Any, rowid: int | None, example: str) -> None:
    if isinstance(v, str) and v.strip():
        return
    what = "blank text" if isinstance(v, str) else f"{_shown(v)}, not text"
    raise _Bad(
        name,
        f"{name} is {what}" if v != "" else f"{name} is empty",
        f"set a non-blank text {name} (UPDATE trades SET {name} = '{example}'{_where(rowid)})",
    )


def _number(name: str, v: Any, rowid: int | None) -> None:
    if not num_ok(v):
        raise _Bad(
            name,
            f"{name} is {_shown(v)}, not a finite number",
            f"write {name} as a number (UPDATE trades SET {name} = ...{_where(rowid)})",
        )


def overrides_problem(o: Any) -> str | None:
    """Overrides are a JSON object of Criteria keys to a finite number or null (rule disabled)."""
    if not isinstance(o, dict):
        return f"overrides must be a JSON object, got {type(o).__name__}"
    if not o:
        return None  # the common case: nothing to validate (and this runs on every trade load)
    for k, v in o.items():
        if not isinstance(k, str):
            return f"overrides key {k!r} is not a string"
        if v is not None and not num_ok(v):
            return f"overrides[{k!r}] is not a finite number or null ({v!r})"
    try:
        from engine.config import Criteria  # lazy: keeps the store importable on its own

        Criteria().merged(o)
    except ImportError:  # pragma: no cover - config always ships with the engine
        pass
    except Exception as e:  # pydantic ValidationError: unknown key or value out of range
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            for err in getattr(e, "errors", lambda: [])()
        )
        return f"overrides are not valid criteria ({detail or e})"
    return None


def _entry_rules(
    get: Callable[[str], Any], rowid: int | None, ctx: RowContext, source: Any
) -> None:
    """The fields a program writing a trade fills: ids, side, sizes, prices, time, venue."""
    _text_id("trade_id", get("trade_id"), rowid, "your-unique-id")
    _text_id("contract_id", get("contract_id"), rowid, "KXBTCD-25NOV2415-T97000")
    side, state = get("side"), get("state")
    if side not in SIDES:
        raise _Bad(
            "side",
            f"side {_shown(side)} is not one of {', '.join(SIDES)}",
            "yes/no for binaries, long/short for options",
        )
    if state not in TRADE_STATES:
        raise _Bad(
            "state",
            f"state {_shown(state)} is not one of {', '.join(TRADE_STATES)}",
            "leave state to its default 'open'",
        )
    for name in _REQUIRED_NUMS:
        _number(name, get(name), rowid)
    for name in _OPTIONAL_NUMS:
        if get(name) is not None:
            _number(name, get(name), rowid)
    qty, price = get("qty"), get("entry_price")
    if not 0 < qty <= MAX_QTY:
        raise _Bad(
            "qty",
            f"qty {qty:g} is not in 0 < qty <= {MAX_QTY:,.0f}",
            "qty is the number of contracts held, > 0 (the direction is in side)",
        )
    if price < 0 or price > MAX_PRICE:
        raise _Bad(
            "entry_price",
            f"entry_price {price:g} is not in 0..{MAX_PRICE:,.0f}",
            "entry_price is the average entry in dollars per contract, >= 0",
        )
    if side in BINARY_SIDES and price > 1:
        raise _Bad(
            "entry_price",
            f"entry_price {price:g} is outside 0..1 for a {side.upper()} (binary) contract",
            "a binary's price is in dollars per contract, 0..1 (42 cents is 0.42)",
        )
    c = ctx.contract(get("contract_id")) if ctx.contract is not None else None
    if c is not None and c.is_binary != (side in BINARY_SIDES):
        raise _Bad(
            "side",
            f"side {side!r} does not fit the {c.type} contract {c.id}",
            "yes/no for binaries, long/short for options and stocks",
        )
    if ctx.venue in BINARY_ONLY_VENUES and side not in BINARY_SIDES:
        raise _Bad(
            "side",
            f"side {side!r} is for options and stocks; venue {ctx.venue} has only binaries",
            "use yes or no",
        )
    if ctx.venue in NO_BINARY_VENUES and side in BINARY_SIDES:
        raise _Bad(
            "side",
            f"side {side!r} is for binaries; venue {ctx.venue} has options and stocks",
            "use long or short",
        )
    fees = get("fees")
    # Once the supervisor has closed part of a trade its fees include the exit's, which a venue
    # may report as a rebate: only the opening fees another program writes must be >= 0.
    if fees < 0 and not get("closed_qty"):
        raise _Bad(
            "fees", f"fees {fees:g} are negative", "fees are what opening cost, in dollars, >= 0"
        )
    ts = get("opened_ts")
    if not 0 < ts < MAX_TS:
        raise _Bad(
            "opened_ts",
            f"opened_ts {ts:.0f} is not Unix seconds"
            + (" (milliseconds?)" if ts >= MAX_TS else ""),
            "opened_ts is Unix seconds, UTC (e.g. 1735740000.0)",
        )
    if (
        ctx.now is not None
        and source == "external"
        and state in WATCHED_STATES
        and ts > ctx.now + FUTURE_SLACK_SECONDS
    ):
        raise _Bad(
            "opened_ts",
            f"opened_ts {ts:.0f} is {(ts - ctx.now) / 86400:.1f} days in the future",
            "opened_ts is when the trade was opened, Unix seconds, UTC",
        )
    if get("multiplier") <= 0:
        raise _Bad(
            "multiplier",
            f"multiplier {get('multiplier'):g} is not > 0",
            "leave multiplier to its default 1",
        )
    if get("closed_qty") < 0:
        raise _Bad(
            "closed_qty",
            f"closed_qty {get('closed_qty'):g} is negative",
            "leave closed_qty to its default 0",
        )
    venue = get("venue")
    if not isinstance(venue, str) or not venue.strip():
        raise _Bad(
            "venue", f"venue is {_shown(venue)}", "name the venue: sim, paper, kalshi or ibkr"
        )
    if ctx.venue is not None and state in WATCHED_STATES and venue != ctx.venue:
        raise _Bad(
            "venue",
            f"venue {venue!r} is not this engine's venue {ctx.venue!r}",
            f"a trade is supervised by an engine on its own venue: set venue = '{ctx.venue}' if "
            f"the position is held there, else run an engine on {venue!r}",
        )


def check_row(row: Mapping[str, Any] | Any, ctx: RowContext | None = None) -> Trade | BadRow:
    """The Trade a trades row describes, or a BadRow saying what is wrong with it.

    `row` is a sqlite3.Row (or mapping) of `SELECT rowid AS row_id, * FROM trades`.
    """
    ctx = ctx or RowContext()
    keys = set(row.keys())
    rowid = int(row["row_id"]) if "row_id" in keys and row["row_id"] is not None else None

    def get(name: str) -> Any:
        return row[name] if name in keys else None

    try:
        _entry_rules(get, rowid, ctx, get("source"))
        if get("paused") not in (0, 1):
            raise _Bad("paused", f"paused is {_shown(get('paused'))}", "paused is 0 or 1")
        for name in ("strategy",):
            if not isinstance(get(name), str):
                raise _Bad(
                    name,
                    f"{name} is {_shown(get(name))}, not text",
                    f"write {name} as text ('' for none)",
                )
        if get("exit_reason") is not None and not isinstance(get("exit_reason"), str):
            raise _Bad(
                "exit_reason",
                f"exit_reason is {_shown(get('exit_reason'))}",
                "leave exit_reason to the supervisor",
            )
        raw = get("overrides")
        if raw is not None and not isinstance(raw, str):
            raise _Bad(
                "overrides",
                f"overrides is {_shown(raw)}, not JSON text",
                "write overrides as JSON text, e.g. '{}'",
            )
        try:
            overrides = json.loads(raw) if raw not in (None, "") else {}
        except ValueError as e:
            raise _Bad(
                "overrides",
                f"overrides is not valid JSON ({raw!r}: {e})",
                'write a JSON object, e.g. {"max_loss_percent": 25}',
            ) from None
        problem = overrides_problem(overrides)
        if problem:
            raise _Bad(
                "overrides",
                problem,
                "a JSON object of [auto_stop.criteria] keys to numbers (or null to switch a rule off)",
            )
    except _Bad as b:
        return BadRow(
            rowid if rowid is not None else -1,
            get("trade_id"),
            get("state"),
            b.field,
            b.problem,
            b.fix,
            fingerprint(row),
        )
    return Trade(
        trade_id=get("trade_id"),
        contract_id=get("contract_id"),
        side=get("side"),
        qty=float(get("qty")),
        entry_price=float(get("entry_price")),
        opened_ts=float(get("opened_ts")),
        strategy=get("strategy"),
        venue=get("venue"),
        overrides={k: None if v is None else float(v) for k, v in overrides.items()},
        state=TradeState(get("state")),
        paused=bool(get("paused")),
        fees=float(get("fees")),
        peak_pnl=float(get("peak_pnl")),
        peak_pnl_pct=float(get("peak_pnl_pct")),
        trough_pnl=float(get("trough_pnl")),
        trough_pnl_pct=float(get("trough_pnl_pct")),
        closed_ts=None if get("closed_ts") is None else float(get("closed_ts")),
        exit_price=None if get("exit_price") is None else float(get("exit_price")),
        exit_reason=get("exit_reason"),
        realized_pnl=None if get("realized_pnl") is None else float(get("realized_pnl")),
        closed_qty=float(get("closed_qty")),
        multiplier=float(get("multiplier")),
    )


def trade_problem(t: Trade, ctx: RowContext | None = None, source: str | None = None) -> str | None:
    """Why `t` must not be journaled, or None: the same rules a row must pass to be loaded back,
    so the store never writes a trade it would refuse at the next start. `ctx` and `source`
    add the checks a row of that source gets from an engine (`trades add` uses them)."""
    values = {
        "trade_id": t.trade_id,
        "contract_id": t.contract_id,
        "side": t.side,
        "state": str(t.state),
        "venue": t.venue or "sim",
        **{n: getattr(t, n) for n in _REQUIRED_NUMS + _OPTIONAL_NUMS},
    }
    try:
        # `trades add` asks as an external program would (its time checked against now);
        # rows the engine wrote are not: a sim on a scaled clock runs ahead of real time.
        _entry_rules(values.get, None, ctx or RowContext(), "external" if source else None)
    except _Bad as b:
        return b.problem
    return overrides_problem(t.overrides)


def command_problem(action: Any, trade_id: Any, payload: Any) -> tuple[str, str] | None:
    """What is wrong with a row of the journal's `commands` table (queued by the CLI or another
    program), as (field, problem), or None. `payload` is the column as written (JSON text)."""
    from engine.commands import ACTIONS

    if not isinstance(action, str) or action not in ACTIONS:
        return "action", f"action {_shown(action)} is not one of {', '.join(ACTIONS)}"
    if trade_id is not None and not (isinstance(trade_id, str) and trade_id.strip()):
        return "trade_id", f"trade_id is {_shown(trade_id)}, not a non-blank text or NULL"
    if payload is None or payload == "":
        return None
    if not isinstance(payload, str):
        return "payload", f"payload is {_shown(payload)}, not JSON text"
    try:
        value = json.loads(payload)
    except ValueError as e:
        return "payload", f"payload is not valid JSON ({payload!r}: {e})"
    if not isinstance(value, dict):
        return "payload", f"payload must be a JSON object, got {type(value).__name__} {payload!r}"
    return None
