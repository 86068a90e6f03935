"""The replay / record file format: JSON Lines, one market event per line.

Scenario tests and later tools depend on this exact format (see the README, "Replay format").
Every line is an object with `ts` (Unix seconds, float) and `kind`, one of: contract, spot, quote,
open, settle, command. Parsing is strict: a line that does not fit raises `ReplayLineError` with a
message saying what is wrong; callers report it with the line number and skip it.

A tape (engine/tape.py, docs/tape-format.md) is this format with a `header` line carrying the
format `version` (TAPE_VERSION) and informational kinds (INFO_KINDS: exit, fill, closed, dropped)
that a replay accepts and never feeds to the engine as market events; `spot_history` (the spot
feed's start-up backfill of past closes) is not a market event either: replay seeds the engine's
spot history with it, as the live feed did. A header of another version
raises `TapeVersionError`, which is not a skippable line: the whole file is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, get_args

from engine.commands import ACTIONS, REPLAY_ACTIONS
from engine.models import (
    CommandEvent,
    Contract,
    ContractEvent,
    ContractType,
    Leg,
    MarketEvent,
    OpenEvent,
    Quote,
    QuoteEvent,
    SettleEvent,
    SpotEvent,
)

_CONTRACT_TYPES: tuple[str, ...] = get_args(ContractType)


class ReplayLineError(ValueError):
    pass


TAPE_VERSION = 2  # a plain recording without a header is version 1
INFO_KINDS: tuple[str, ...] = (
    "header",
    "exit",
    "fill",
    "closed",
    "dropped",
    "spot_history",
    "call",
)
# Of those, the ones a replay makes the engine act on again (not market events, and not merely
# informational): the spot feed's start-up backfill, and a feed's calls (REPLAY_CALLS).
FED_INFO_KINDS: tuple[str, ...] = ("spot_history", "call")
# A feed's call → the types of its arguments (Engine methods of the same names).
REPLAY_CALLS: dict[str, tuple[type, ...]] = {
    "hold_quotes": (list, str),
    "release_quotes": (list,),
    "source_problem": (str, str),
    "source_ok": (str,),
    "vix_update": (float, float),
}


class TapeVersionError(ValueError):
    """A tape header of a version this build cannot read: the whole file is refused."""


@dataclass(frozen=True, slots=True)
class InfoRecord:
    """An informational tape line (INFO_KINDS): read, kept, never fed to the engine."""

    ts: float
    kind: str
    data: dict[str, Any]


def parse_info(obj: dict[str, Any]) -> InfoRecord:
    """A decoded line whose kind is in INFO_KINDS → its record; a header is version-checked."""
    ts = _num(obj, "ts")
    assert ts is not None
    kind = str(obj["kind"])
    if kind == "header":
        v = obj.get("version")
        if v != TAPE_VERSION or isinstance(v, bool):
            raise TapeVersionError(
                f"tape format version {v!r}; this build reads version {TAPE_VERSION} (and plain "
                "recordings without a header): replay it with the release that wrote it"
            )
    elif kind == "dropped":
        n = _num(obj, "count")
        assert n is not None
    elif kind == "spot_history":
        closes = obj.get("closes")
        if not isinstance(closes, list) or not all(
            isinstance(c, list)
            and len(c) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in c)
            for c in closes
        ):
            raise ReplayLineError("'closes' must be a list of [ts, price] pairs")
    elif kind == "call":
        call, args = obj.get("call"), obj.get("args")
        types = REPLAY_CALLS.get(call) if isinstance(call, str) else None
        if types is None:
            raise ReplayLineError(f"'call' must be one of {', '.join(REPLAY_CALLS)}, got {call!r}")
        if (
            not isinstance(args, list)
            or len(args) != len(types)
            or not all(
                isinstance(a, int | float) and not isinstance(a, bool)
                if t is float
                else isinstance(a, t)
                for a, t in zip(args, types, strict=False)
            )
        ):
            raise ReplayLineError(f"call {call!r} takes {len(types)} argument(s), got {args!r}")
    return InfoRecord(ts, kind, obj)


def _num(obj: dict[str, Any], key: str, *, optional: bool = False) -> float | None:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise ReplayLineError(f"missing {key!r}")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ReplayLineError(f"{key!r} must be a number, got {v!r}")
    return float(v)


def _str(obj: dict[str, Any], key: str, *, optional: bool = False, default: str = "") -> str:
    v = obj.get(key)
    if v is None:
        if optional:
            return default
        raise ReplayLineError(f"missing {key!r}")
    if not isinstance(v, str) or not v:
        raise ReplayLineError(f"{key!r} must be a non-empty string, got {v!r}")
    return v


def _legs(v: Any) -> tuple[Leg, ...]:
    """A combo's `legs`: [{"contract": ID, "ratio": ±N}, ...] (absent: not a combo)."""
    if v is None:
        return ()
    if not isinstance(v, list) or not v:
        raise ReplayLineError("'legs' must be a non-empty list of {contract, ratio}")
    out = []
    for leg in v:
        if not isinstance(leg, dict):
            raise ReplayLineError("each leg must be an object {contract, ratio}")
        ratio = leg.get("ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio == 0:
            raise ReplayLineError(
                f"a leg's 'ratio' must be a whole number other than 0, got {ratio!r}"
            )
        out.append(Leg(_str(leg, "contract"), ratio))
    return tuple(out)


def parse_event(obj: Any) -> MarketEvent:
    """One decoded JSON object → one event. Values are checked for type, not for market sanity
    (a NaN or crossed quote is a valid line: the engine's data guard must see it)."""
    if not isinstance(obj, dict):
        raise ReplayLineError("a line must be a JSON object")
    ts = _num(obj, "ts")
    assert ts is not None
    if not math.isfinite(ts):
        raise ReplayLineError("'ts' must be finite")
    kind = obj.get("kind")
    if kind == "spot":
        return SpotEvent(
            ts, _str(obj, "symbol", optional=True, default="BTC-USD"), _num(obj, "price")
        )  # type: ignore[arg-type]
    if kind == "quote":
        q = Quote(
            id=_str(obj, "id"),
            bid=_num(obj, "bid", optional=True),
            ask=_num(obj, "ask", optional=True),
            ts=ts,
            bid_size=_num(obj, "bid_size", optional=True) or 0.0,
            ask_size=_num(obj, "ask_size", optional=True) or 0.0,
            last=_num(obj, "last", optional=True),
            volume=_num(obj, "volume", optional=True) or 0.0,
            open_interest=_num(obj, "open_interest", optional=True) or 0.0,
            iv=_num(obj, "iv", optional=True),
            delta=_num(obj, "delta", optional=True),
        )
        return QuoteEvent(ts, q)
    if kind == "contract":
        ctype = _str(obj, "type")
        if ctype not in _CONTRACT_TYPES:
            raise ReplayLineError(
                f"'type' must be one of {', '.join(_CONTRACT_TYPES)}, got {ctype!r}"
            )
        c = Contract(
            id=_str(obj, "id"),
            underlying=_str(obj, "underlying", optional=True, default="BTC-USD"),
            type=ctype,  # type: ignore[arg-type]
            strike=_num(obj, "strike", optional=ctype in ("stock", "combo")),
            close_ts=_num(obj, "close_ts"),  # type: ignore[arg-type]
            cap=_num(obj, "cap", optional=True),
            multiplier=_num(obj, "multiplier", optional=True) or 1.0,
            event_id=_str(obj, "event_id", optional=True),
            legs=_legs(obj.get("legs")),
        )
        return ContractEvent(ts, c)
    if kind == "open":
        side = _str(obj, "side")
        if side not in ("yes", "no", "long", "short"):
            raise ReplayLineError(f"'side' must be yes, no, long or short, got {side!r}")
        qty, price = _num(obj, "qty"), _num(obj, "price")
        assert qty is not None and price is not None
        if not (math.isfinite(qty) and qty > 0):
            raise ReplayLineError(f"'qty' must be > 0, got {qty}")
        if not (math.isfinite(price) and price >= 0):
            raise ReplayLineError(f"'price' must be >= 0, got {price}")
        return OpenEvent(
            ts,
            _str(obj, "trade_id"),
            _str(obj, "contract"),
            side,
            qty,
            price,  # type: ignore[arg-type]
            _str(obj, "strategy", optional=True),
        )
    if kind == "settle":
        value = _num(obj, "value")
        assert value is not None
        # A settlement books the payout straight into the journal (no data guard sees it first), and
        # the engine pays YES `value` and NO `1 - value`: anything outside 0..1 (or NaN) is refused.
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ReplayLineError(f"'value' must be a number from 0 to 1, got {value}")
        return SettleEvent(ts, _str(obj, "id"), value)
    if kind == "command":
        action = _str(obj, "action")
        if action not in REPLAY_ACTIONS:
            raise ReplayLineError(
                f"'action' must be one of {', '.join(REPLAY_ACTIONS)}, got {action!r}"
            )
        assert action in ACTIONS
        tid = obj.get("trade_id")
        if action in ("pause", "resume", "close") and not isinstance(tid, str):
            raise ReplayLineError(f"command {action!r} needs a 'trade_id'")
        return CommandEvent(ts, action, tid if isinstance(tid, str) else None)
    raise ReplayLineError(
        f"unknown kind {kind!r} (expected contract, spot, quote, open, settle or command, or on "
        f"a tape {', '.join(INFO_KINDS)})"
    )


def parse_line(line: str) -> MarketEvent | None:
    """A text line → an event; None for a blank line or an informational tape line. Raises
    ReplayLineError (TapeVersionError for a header of another version)."""
    rec = parse_record(line)
    return None if isinstance(rec, InfoRecord) else rec


def parse_record(line: str) -> MarketEvent | InfoRecord | None:
    """A text line → an event, an informational record (INFO_KINDS), or None for a blank line."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ReplayLineError(f"not valid JSON ({e.msg})") from None
    if isinstance(obj, dict) and obj.get("kind") in INFO_KINDS:
        return parse_info(obj)
    return parse_event(obj)


def event_to_json(ev: MarketEvent) -> dict[str, Any]:
    """One event → the JSON object of its line (the inverse of parse_event)."""
    if isinstance(ev, SpotEvent):
        return {"ts": ev.ts, "kind": "spot", "symbol": ev.symbol, "price": ev.price}
    if isinstance(ev, QuoteEvent):
        q = ev.quote
        out: dict[str, Any] = {"ts": ev.ts, "kind": "quote", "id": q.id, "bid": q.bid, "ask": q.ask}
        for k in ("bid_size", "ask_size", "volume", "open_interest"):
            v = getattr(q, k)
            if v:
                out[k] = v
        for k in ("last", "iv", "delta"):
            v = getattr(q, k)
            if v is not None:
                out[k] = v
        return out
    if isinstance(ev, ContractEvent):
        c = ev.contract
        out = {
            "ts": ev.ts,
            "kind": "contract",
            "id": c.id,
            "underlying": c.underlying,
            "type": c.type,
            "strike": c.strike,
            "close_ts": c.close_ts,
        }
        if c.cap is not None:
            out["cap"] = c.cap
        if c.multiplier != 1.0:
            out["multiplier"] = c.multiplier
        if c.event_id:
            out["event_id"] = c.event_id
        if c.legs:
            out["legs"] = [{"contract": leg.contract_id, "ratio": leg.ratio} for leg in c.legs]
        return out
    if isinstance(ev, OpenEvent):
        out = {
            "ts": ev.ts,
            "kind": "open",
            "trade_id": ev.trade_id,
            "contract": ev.contract_id,
            "side": ev.side,
            "qty": ev.qty,
            "price": ev.price,
        }
        if ev.strategy:
            out["strategy"] = ev.strategy
        return out
    if isinstance(ev, SettleEvent):
        return {"ts": ev.ts, "kind": "settle", "id": ev.contract_id, "value": ev.value}
    if isinstance(ev, CommandEvent):
        out = {"ts": ev.ts, "kind": "command", "action": ev.action}
        if ev.trade_id:
            out["trade_id"] = ev.trade_id
        return out
    raise TypeError(f"not a market event: {ev!r}")


def dumps(ev: MarketEvent) -> str:
    return json.dumps(event_to_json(ev), separators=(",", ":"))
