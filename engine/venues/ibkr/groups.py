"""Legs held at IB → the engine's trades: which legs form one combo, and how it is priced.

Legs form one combo trade (docs/ibkr.md) when

1. `[venues.ibkr] groups` in config names them (config wins over everything else);
2. a group remembered in `data_dir/ibkr_groups.json` still has all its legs held;
3. the opening executions show they were opened together: the same non-empty `orderRef` (the
   strategy tag, e.g. "ts:ic-1" → group "ic-1"), or, without one, the same order (`permId`: the
   leg executions of one BAG order share it). An execution is opening for a leg when its side
   agrees with the position held (BOT for a long, SLD for a short).

Only legs of the same underlying symbol, currency and multiplier form a combo (one BAG order,
one price per share). A group is remembered (written atomically: temp file, fsync, rename) so a
restart on another day, when IB no longer returns yesterday's executions, groups the same way.

A remembered group (a config group once formed included) whose legs are only PARTLY held is held
back for `PARTIAL_GRACE_SECONDS` (`PartialHold`): IB sends a closed combo's leg position updates
one at a time, so a read between them sees the group partly held. While held back neither the
combo nor its remaining legs are reported (no leg turns into a single the engine would adopt) and
the group stays remembered. All its legs held again: it is the combo it was. None held: it is
dropped at once (closed). Still partly held when the grace period ends: it is dropped (a warning:
a leg was closed by hand) and its remaining legs are single positions from then on.

Normalisation: a combo's legs keep their signed ratio (+ held long, − held short); `qty` is the
number of combo units, the gcd of the legs' absolute positions, and ratio = position / qty. The
price of one unit is Σ ratio × leg price per share (IB `avgCost` / multiplier). A combo opened for
a net debit (price ≥ 0) is defined with its legs as held and held `long`; one opened for a net
credit is defined with its legs inverted (the combo one would buy back) and held `short` at the
credit, so prices stay positive. The orientation is chosen when the group is first formed and
remembered with it, so it does not flip later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import private_files
from engine.models import Contract, Leg, Side
from engine.venues.ibkr.ids import combo_contract, contract_from_ib, default_close_of

__all__ = [
    "GROUPS_FILE",
    "PARTIAL_GRACE_SECONDS",
    "Combo",
    "GroupStore",
    "Grouping",
    "HeldBack",
    "HeldLeg",
    "OpeningFill",
    "PartialHold",
    "RememberedGroup",
    "group_legs",
    "group_name_of_ref",
]

log = logging.getLogger("engine.venues.ibkr.groups")

GROUPS_FILE = "ibkr_groups.json"
FILE_VERSION = 1
STRATEGY_PREFIX = "ts:"  # the orderRef prefix of the strategy tag: "ts:ic-1" → group "ic-1"
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:\-]+")
_NAME_MAX = 40
# How long a remembered group seen partly held is held back before its remaining legs become
# single positions. IB sends the leg updates of one combo fill within a second or two of each
# other (a reconnect's position download within seconds); the engine reads positions every 5 s.
# 60 s is a dozen polls of margin for a slow or busy gateway, and still short for a person who
# closed one leg by hand: the legs left are watched as singles a minute later.
PARTIAL_GRACE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class HeldLeg:
    """One position at IB: `position` signed (short < 0), `avg_cost` as IB reports it (per unit
    including the multiplier), `ib_contract` the IB contract of the position."""

    con_id: int
    contract_id: str  # engine id
    symbol: str
    currency: str
    multiplier: float
    position: float
    avg_cost: float
    ib_contract: Any = field(default=None, compare=False, repr=False)

    @property
    def price(self) -> float:
        """Entry price per share (per unit of the instrument)."""
        return abs(self.avg_cost) / self.multiplier if self.multiplier else abs(self.avg_cost)

    @property
    def side(self) -> Side:
        return "long" if self.position > 0 else "short"


@dataclass(frozen=True, slots=True)
class OpeningFill:
    """An execution as evidence of how legs were opened."""

    con_id: int
    order_ref: str
    perm_id: int
    side: str  # BOT / SLD
    time: str = ""


@dataclass(frozen=True, slots=True)
class RememberedGroup:
    """A group as kept in the groups file: its legs by conId (and engine id, for people) and the
    orientation chosen when it was formed (+1: legs as held, long; −1: inverted, short)."""

    name: str
    symbol: str
    source: str  # "config" / "orderRef" / "permId"
    orientation: int
    con_ids: tuple[int, ...]
    contract_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "symbol": self.symbol,
            "source": self.source,
            "orientation": self.orientation,
            "legs": [
                {"con_id": c, "contract_id": i}
                for c, i in zip(self.con_ids, self.contract_ids, strict=True)
            ],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RememberedGroup:
        legs = raw["legs"]
        orientation = int(raw.get("orientation", 1))
        return cls(
            name=str(raw["name"]),
            symbol=str(raw["symbol"]),
            source=str(raw.get("source", "")),
            orientation=-1 if orientation < 0 else 1,
            con_ids=tuple(int(leg["con_id"]) for leg in legs),
            contract_ids=tuple(str(leg.get("contract_id", "")) for leg in legs),
        )


@dataclass(frozen=True, slots=True)
class Combo:
    """Several held legs traded as one. `legs` are as the combo is DEFINED (after orientation):
    (leg, signed ratio); `qty` combo units; `entry` the price of one unit per share (≥ 0 when
    the orientation was chosen from these prices)."""

    name: str
    symbol: str
    currency: str
    multiplier: float
    legs: tuple[tuple[HeldLeg, int], ...]
    qty: float
    side: Side
    entry: float
    source: str
    orientation: int

    @property
    def contract_id(self) -> str:
        return f"{self.symbol} {self.name}"

    def contract(
        self, close_of: Callable[[str], float] = default_close_of
    ) -> Contract:  # the engine's Contract
        close_ts = math.inf
        for leg, _ in self.legs:
            c = contract_from_ib(leg.ib_contract, close_of) if leg.ib_contract else None
            if c is not None:
                close_ts = min(close_ts, c.close_ts)
        return combo_contract(
            self.symbol,
            self.name,
            tuple(Leg(leg.contract_id, ratio) for leg, ratio in self.legs),
            close_ts,
            self.multiplier,
        )

    def remembered(self) -> RememberedGroup:
        return RememberedGroup(
            self.name,
            self.symbol,
            self.source,
            self.orientation,
            tuple(leg.con_id for leg, _ in self.legs),
            tuple(leg.contract_id for leg, _ in self.legs),
        )


@dataclass(frozen=True, slots=True)
class HeldBack:
    """A remembered group partly held, within its grace period: `legs` its legs still held
    (reported neither as the combo nor as singles), `missing` the engine ids of the others,
    `since` when it was first seen partly held."""

    group: RememberedGroup
    legs: tuple[HeldLeg, ...]
    missing: tuple[str, ...]
    since: float

    @property
    def contract_id(self) -> str:
        return f"{self.group.symbol} {self.group.name}"


@dataclass(frozen=True, slots=True)
class Grouping:
    combos: tuple[Combo, ...]
    singles: tuple[HeldLeg, ...]
    held_back: tuple[HeldBack, ...] = ()

    def combo(self, contract_id: str) -> Combo | None:
        return next((c for c in self.combos if c.contract_id == contract_id), None)

    def single(self, contract_id: str) -> HeldLeg | None:
        return next((s for s in self.singles if s.contract_id == contract_id), None)


# ---- the file ----------------------------------------------------------------------------------


class GroupStore:
    """The remembered groups in `path` (JSON), rewritten atomically when they change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.groups: tuple[RememberedGroup, ...] = self._load()

    def _load(self) -> tuple[RememberedGroup, ...]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ()
        try:
            raw = json.loads(text)
            if raw.get("version") != FILE_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {FILE_VERSION}")
            return tuple(RememberedGroup.from_json(g) for g in raw.get("groups", []))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Unreadable: group from config and executions; the file is rewritten at the next
            # change. The damaged file is kept aside for a person to look at.
            log.error("ibkr groups file %s is unreadable (%s); starting without it", self.path, exc)
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path.with_name(self.path.name + ".damaged"))
            return ()

    def save(self, groups: Iterable[RememberedGroup]) -> None:
        groups = tuple(sorted(groups, key=lambda g: (g.symbol, g.name)))
        if groups == self.groups and self.path.exists():
            return
        body = {"version": FILE_VERSION, "groups": [g.to_json() for g in groups]}
        _write_atomically(self.path, json.dumps(body, indent=1) + "\n")
        self.groups = groups


def _write_atomically(path: Path, text: str) -> None:
    private_files.make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ---- grouping ----------------------------------------------------------------------------------


class PartialHold:
    """When each remembered group was first seen partly held (by its combo contract id), to hold
    it back for `grace_seconds` (module docstring). `group_legs` keeps it current: a group held
    in full again, not held at all, or dropped is forgotten here."""

    def __init__(self, grace_seconds: float = PARTIAL_GRACE_SECONDS) -> None:
        self.grace_seconds = grace_seconds
        self.since: dict[str, float] = {}

    def holds(self, key: str, now: float) -> bool:
        """Is group `key`, partly held at `now`, within its grace period (counted from the
        first time it was seen so)?"""
        first = self.since.setdefault(key, now)
        return now - first < self.grace_seconds

    def keep_only(self, keys: Iterable[str]) -> None:
        keep = set(keys)
        self.since = {k: t for k, t in self.since.items() if k in keep}


def group_name_of_ref(order_ref: str) -> str:
    """The group name an opening orderRef gives: "ts:ic-1" → "ic-1"; other text with anything
    outside [A-Za-z0-9_.:-] replaced by "-" (at most 40 characters); "" when nothing is left."""
    ref = order_ref.strip()
    if ref.startswith(STRATEGY_PREFIX):
        ref = ref[len(STRATEGY_PREFIX) :]
    name = _NAME_BAD.sub("-", ref).strip("-")[:_NAME_MAX]
    return name


def _gcd(values: Iterable[float]) -> int:
    out = 0
    for v in values:
        out = math.gcd(out, round(abs(v)))
    return out


def _combine(
    name: str, legs: Sequence[HeldLeg], source: str, orientation: int | None
) -> Combo | None:
    """The combo of `legs` (None when their positions are not whole numbers)."""
    if any(abs(leg.position - round(leg.position)) > 1e-9 for leg in legs):
        return None
    qty = _gcd(leg.position for leg in legs)
    if qty <= 0:
        return None
    held = [(leg, round(leg.position) // qty) for leg in sorted(legs, key=_leg_order)]
    net = sum(ratio * leg.price for leg, ratio in held)
    if orientation is None:
        orientation = 1 if net >= -1e-12 else -1
    first = legs[0]
    return Combo(
        name=name,
        symbol=first.symbol,
        currency=first.currency,
        multiplier=first.multiplier,
        legs=tuple((leg, orientation * ratio) for leg, ratio in held),
        qty=float(qty),
        side="long" if orientation > 0 else "short",
        entry=round(orientation * net, 10),
        source=source,
        orientation=orientation,
    )


def _leg_order(leg: HeldLeg) -> tuple:
    c = leg.ib_contract
    expiry = str(getattr(c, "lastTradeDateOrContractMonth", "") or "")
    strike = float(getattr(c, "strike", 0.0) or 0.0)
    return (expiry, strike, str(getattr(c, "right", "") or ""), leg.contract_id)


def _compatible(legs: Sequence[HeldLeg]) -> str | None:
    """Why `legs` cannot be one combo, or None."""
    if len(legs) < 2:
        return "fewer than two legs"
    kinds = {(leg.symbol, leg.currency, leg.multiplier) for leg in legs}
    if len(kinds) > 1:
        return "legs of different underlyings, currencies or multipliers"
    return None


def group_legs(
    held: Sequence[HeldLeg],
    config_groups: Sequence[Any],
    fills: Iterable[OpeningFill],
    remembered: Sequence[RememberedGroup],
    *,
    warn: Callable[[str, str], None] | None = None,
    partial: PartialHold | None = None,
    now: float = 0.0,
) -> Grouping:
    """Group the held legs (see the module's docstring for the rules and their order).

    `config_groups` are `IbkrGroupConfig`s (name, legs as engine ids). `warn(key, message)` is
    told about config groups that cannot be formed and remembered groups that are dropped (the
    default logs each message). `partial` (updated in place), with the time `now`, holds back
    remembered groups seen partly held; without it such a group is dropped at once.
    """

    def _warn(key: str, message: str) -> None:
        if warn is not None:
            warn(key, message)
        else:
            log.warning("%s", message)

    by_id = {leg.contract_id: leg for leg in held}
    by_con = {leg.con_id: leg for leg in held}
    claimed: set[int] = set()
    combos: list[Combo] = []
    used_ids: set[str] = set()
    memory = {g.name: g for g in remembered}
    held_back: list[HeldBack] = []
    partly: list[str] = []  # the groups seen partly held in this call

    def take(combo: Combo) -> None:
        combos.append(combo)
        used_ids.add(combo.contract_id)
        claimed.update(leg.con_id for leg, _ in combo.legs)

    def hold_back(group: RememberedGroup, legs: Sequence[HeldLeg], missing: Sequence[str]) -> str:
        """A partly held group: "held" back within its grace period; "expired" when the grace
        period ran out (dropped and told here); "no" when it is not to be held back."""
        key = f"{group.symbol} {group.name}"
        if partial is None or any(leg.con_id in claimed for leg in legs) or key in used_ids:
            return "no"
        partly.append(key)
        if not partial.holds(key, now):
            _warn(
                f"dropped:{key}",
                f"ibkr group {key} dropped: {', '.join(missing)} no longer held after "
                f"{now - partial.since[key]:.0f}s; its other legs are single positions now",
            )
            return "expired"
        held_back.append(HeldBack(group, tuple(legs), tuple(missing), partial.since[key]))
        used_ids.add(key)
        claimed.update(leg.con_id for leg in legs)
        return "held"

    # 1. config
    for cfg in config_groups:
        missing = [cid for cid in dict.fromkeys(cfg.legs) if cid not in by_id]
        prior = memory.get(cfg.name)
        if (
            missing
            and len(missing) < len(set(cfg.legs))
            and prior is not None
            and prior.source == "config"
            and set(prior.contract_ids) == set(cfg.legs)  # formed before, as configured now
        ):
            still = [by_id[cid] for cid in dict.fromkeys(cfg.legs) if cid in by_id]
            if hold_back(prior, still, missing) != "no":
                continue
        if missing:
            _warn(
                f"config:{cfg.name}:missing",
                f"ibkr group {cfg.name!r} (config): {', '.join(missing)} not held; not grouped",
            )
            continue
        legs = [by_id[cid] for cid in dict.fromkeys(cfg.legs)]
        if any(leg.con_id in claimed for leg in legs):
            _warn(
                f"config:{cfg.name}:claimed",
                f"ibkr group {cfg.name!r} (config): a leg is already in another group",
            )
            continue
        why = _compatible(legs)
        if why is not None:
            _warn(f"config:{cfg.name}:why", f"ibkr group {cfg.name!r} (config): {why}")
            continue
        same = prior is not None and set(prior.con_ids) == {leg.con_id for leg in legs}
        combo = _combine(cfg.name, legs, "config", prior.orientation if same and prior else None)
        if combo is None:
            _warn(f"config:{cfg.name}:qty", f"ibkr group {cfg.name!r}: fractional positions")
            continue
        take(combo)

    # 2. remembered
    for group in remembered:
        if group.source == "config":
            continue  # config decides about its own groups (formed above, or no longer wanted)
        legs_or_none = [by_con.get(c) for c in group.con_ids]
        legs = [leg for leg in legs_or_none if leg is not None]
        if not legs:
            log.info("ibkr group %s %s closed: none of its legs is held", group.symbol, group.name)
            continue
        if len(legs) != len(group.con_ids):
            gone = [
                cid or str(con)
                for con, cid, leg in zip(
                    group.con_ids,
                    group.contract_ids or ("",) * len(group.con_ids),
                    legs_or_none,
                    strict=True,
                )
                if leg is None
            ]
            if hold_back(group, legs, gone) != "no":
                continue
            _warn(
                f"dropped:{group.symbol} {group.name}",
                f"ibkr group {group.symbol} {group.name} dropped: {', '.join(gone)} no longer held",
            )
            continue
        if any(leg.con_id in claimed for leg in legs):
            _warn(
                f"dropped:{group.symbol} {group.name}",
                f"ibkr group {group.symbol} {group.name} dropped: its legs are in a config group",
            )
            continue
        if f"{group.symbol} {group.name}" in used_ids or _compatible(legs) is not None:
            continue
        combo = _combine(group.name, legs, group.source, group.orientation)
        if combo is not None:
            take(combo)

    # 3. opening executions: same orderRef, else same permId (one BAG order)
    keyed: dict[tuple[str, str], list[HeldLeg]] = {}
    for f in sorted(fills, key=lambda f: f.time):
        leg = by_con.get(f.con_id)
        if leg is None or leg.con_id in claimed:
            continue
        if f.side != ("BOT" if leg.position > 0 else "SLD"):
            continue  # a closing (or reducing) execution says nothing about how it was opened
        if f.order_ref.strip():
            key = ("orderRef", f.order_ref.strip())
        elif f.perm_id:
            key = ("permId", str(f.perm_id))
        else:
            continue
        members = keyed.setdefault(key, [])
        if leg not in members:
            members.append(leg)
    for (source, ref), members in keyed.items():
        free = [leg for leg in members if leg.con_id not in claimed]
        # one combo per underlying (a tag spanning two underlyings gives two combos)
        kinds: dict[tuple, list[HeldLeg]] = {}
        for leg in free:
            kinds.setdefault((leg.symbol, leg.currency, leg.multiplier), []).append(leg)
        for legs in kinds.values():
            if len(legs) < 2:
                continue
            base = group_name_of_ref(ref) if source == "orderRef" else ""
            if not base:
                base = f"bag-{ref}" if source == "permId" else "group"
            name = _unique(base, legs[0].symbol, used_ids)
            combo = _combine(name, legs, source, None)
            if combo is not None:
                take(combo)

    if partial is not None:
        partial.keep_only(partly)
    singles = tuple(leg for leg in held if leg.con_id not in claimed)
    return Grouping(tuple(combos), singles, tuple(held_back))


def _unique(base: str, symbol: str, used: set[str]) -> str:
    name, n = base, 1
    while f"{symbol} {name}" in used:
        n += 1
        suffix = f"-{n}"
        name = base[: _NAME_MAX - len(suffix)] + suffix
    return name
