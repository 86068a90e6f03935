"""Legs → combo trades (engine/venues/ibkr/groups.py): by config, by the opening executions
(orderRef, one BAG order's permId), remembered in `ibkr_groups.json` across a restart; a
remembered group partly held is held back for the grace period (time on a `ManualClock`).

The venue tests run the REAL ib_async client against the loopback TWS gateway; the pure rules
(`group_legs`) are also tested directly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ib_async import IB

from engine.clock import ManualClock
from engine.config import IbkrConfig, IbkrGroupConfig
from engine.models import Leg
from engine.venues.base import VenuePosition
from engine.venues.ibkr.groups import (
    GROUPS_FILE,
    PARTIAL_GRACE_SECONDS,
    GroupStore,
    HeldLeg,
    OpeningFill,
    PartialHold,
    RememberedGroup,
    group_legs,
    group_name_of_ref,
)
from engine.venues.ibkr.venue import IbkrVenue
from tests.tws_gateway import (
    Gateway,
    GwContract,
    GwExecution,
    option_contract,
    stock_contract,
    tws_gateway,
)

ACCOUNT = "DU1234567"
DEADLINE = 2.0
EXP = "20260116"
AAPL = stock_contract(265598, "AAPL")
# a sold iron condor, 2 units: +140P −145P −155C +160C
P140 = option_contract(800140, "AAPL", EXP, 140.0, "P")
P145 = option_contract(800145, "AAPL", EXP, 145.0, "P")
C155 = option_contract(800155, "AAPL", EXP, 155.0, "C")
C160 = option_contract(800160, "AAPL", EXP, 160.0, "C")
IC_LEGS = [f"AAPL {EXP} 140P", f"AAPL {EXP} 145P", f"AAPL {EXP} 155C", f"AAPL {EXP} 160C"]
# a bull call spread bought with orderRef "ts:vert-1": +150C −165C
C150 = option_contract(800150, "AAPL", EXP, 150.0, "C")
C165 = option_contract(800165, "AAPL", EXP, 165.0, "C")

_exec_ids = itertools.count(1)


def opening(
    gw: Gateway,
    contract: GwContract,
    side: str,
    shares: float,
    price: float,
    order_ref: str = "",
    perm_id: int = 0,
) -> None:
    """An execution of today (from TWS, client 0) that opened `contract`."""
    n = next(_exec_ids)
    gw.state.executions.append(
        GwExecution(
            exec_id=f"0000f00d.{n:08x}.01.01",
            order_id=0,
            client_id=0,
            perm_id=perm_id or 1_700_000_000 + n,
            contract=contract,
            time=time.strftime("%Y%m%d %H:%M:%S UTC", time.gmtime(1_767_000_000 + n)),
            account=ACCOUNT,
            exchange="CBOE",
            side=side,
            shares=shares,
            price=price,
            cum_qty=shares,
            avg_price=price,
            order_ref=order_ref,
            commission=0.65 * shares,
            currency="USD",
            realized_pnl=None,
        )
    )


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with tws_gateway(accounts=[ACCOUNT]) as gateway:
        s = gateway.state
        s.add_position(AAPL, 100, 180.25)
        s.add_position(P140, 2, 50.0)  # bought at 0.50
        s.add_position(P145, -2, 120.0)  # sold at 1.20
        s.add_position(C155, -2, 110.0)  # sold at 1.10
        s.add_position(C160, 2, 40.0)  # bought at 0.40: a credit of 1.40 per condor
        s.add_position(C150, 1, 200.0)  # bought at 2.00
        s.add_position(C165, -1, 80.0)  # sold at 0.80: a debit of 1.20
        opening(gateway, C150, "BOT", 1, 2.00, "ts:vert-1", perm_id=1_800_000_001)
        opening(gateway, C165, "SLD", 1, 0.80, "ts:vert-1", perm_id=1_800_000_001)
        yield gateway


class Clients:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.ib: IB | None = None
        self.all: list[IB] = []

    async def connect(self) -> IB:
        if self.ib is not None:
            self.ib.disconnect()
        ib = IB()
        self.all.append(ib)
        await ib.connectAsync(self.gw.host, self.gw.port, clientId=7, timeout=DEADLINE)
        self.ib = ib
        return ib


@pytest.fixture
async def clients(gw: Gateway) -> AsyncIterator[Clients]:
    c = Clients(gw)
    yield c
    for ib in c.all:
        ib.disconnect()


def venue_of(
    clients: Clients, data_dir: Path, *groups: IbkrGroupConfig, clock: ManualClock | None = None
) -> IbkrVenue:
    return IbkrVenue(
        lambda: clients.ib,
        IbkrConfig(groups=list(groups)),
        data_dir,
        now=(clock or ManualClock(1_000.0)).now,
    )


IC_CONFIG = IbkrGroupConfig(name="ic-1", legs=IC_LEGS)


async def test_iron_condor_by_config_and_vertical_by_order_ref(
    clients: Clients, tmp_path: Path
) -> None:
    await clients.connect()
    venue = venue_of(clients, tmp_path, IC_CONFIG)
    got = {p.contract_id: p for p in await venue.positions()}
    assert got == {
        "AAPL": VenuePosition("AAPL", "long", 100, 180.25),
        # sold for a net credit of 1.40: held short, the legs inverted
        "AAPL ic-1": VenuePosition("AAPL ic-1", "short", 2, pytest.approx(1.40)),
        # bought for a net debit of 1.20: held long, the legs as held
        "AAPL vert-1": VenuePosition("AAPL vert-1", "long", 1, pytest.approx(1.20)),
    }
    contracts = {c.id: c for c in venue.held_contracts()}
    ic = contracts["AAPL ic-1"]
    assert (ic.type, ic.underlying, ic.multiplier, ic.strike) == ("combo", "AAPL", 100.0, None)
    assert ic.legs == (
        Leg(IC_LEGS[0], -1),
        Leg(IC_LEGS[1], 1),
        Leg(IC_LEGS[2], 1),
        Leg(IC_LEGS[3], -1),
    )
    assert ic.close_ts == contracts[IC_LEGS[0]].close_ts  # the legs' expiry
    assert contracts["AAPL vert-1"].legs == (
        Leg(f"AAPL {EXP} 150C", 1),
        Leg(f"AAPL {EXP} 165C", -1),
    )
    # the legs are there for the market feed, each once
    assert set(contracts) == {"AAPL", "AAPL ic-1", "AAPL vert-1", *IC_LEGS} | {
        f"AAPL {EXP} 150C",
        f"AAPL {EXP} 165C",
    }

    saved = json.loads((tmp_path / GROUPS_FILE).read_text())
    assert saved["version"] == 1
    groups = {g["name"]: g for g in saved["groups"]}
    assert set(groups) == {"ic-1", "vert-1"}
    assert (groups["ic-1"]["source"], groups["ic-1"]["orientation"]) == ("config", -1)
    assert (groups["vert-1"]["source"], groups["vert-1"]["orientation"]) == ("orderRef", 1)
    assert [leg["con_id"] for leg in groups["vert-1"]["legs"]] == [C150.con_id, C165.con_id]


async def test_groups_survive_a_restart_without_the_executions(
    gw: Gateway, clients: Clients, tmp_path: Path
) -> None:
    await clients.connect()
    first = sorted(await venue_of(clients, tmp_path).positions(), key=lambda p: p.contract_id)
    assert "AAPL vert-1" in {p.contract_id for p in first}

    # another day: IB no longer returns yesterday's executions; a new process, a new client
    gw.state.executions.clear()
    ib = await clients.connect()
    assert ib.fills() == []
    again = venue_of(clients, tmp_path)
    assert sorted(await again.positions(), key=lambda p: p.contract_id) == first
    # without the file the legs would be separate
    fresh = venue_of(clients, tmp_path / "elsewhere")
    assert "AAPL vert-1" not in {p.contract_id for p in await fresh.positions()}


async def set_position(gw: Gateway, ib: IB, contract: GwContract, position: float) -> None:
    """The account's position in `contract` changes at TWS; the client has seen it."""
    pos = gw.state.position_of(contract.con_id)
    assert pos is not None
    pos.position = position
    gw.push_position(pos)
    await asyncio.wait_for(ib.positionEvent, DEADLINE)


def saved_groups(data_dir: Path) -> set[str]:
    return {g["name"] for g in json.loads((data_dir / GROUPS_FILE).read_text())["groups"]}


VERT_LEGS = {f"AAPL {EXP} 150C", f"AAPL {EXP} 165C"}


async def test_a_leg_closed_by_hand_becomes_single_after_the_grace_period(
    gw: Gateway, clients: Clients, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(1_000.0)
    ib = await clients.connect()
    venue = venue_of(clients, tmp_path, clock=clock)
    assert "AAPL vert-1" in {p.contract_id for p in await venue.positions()}
    caplog.set_level(logging.INFO, logger="engine.venues.ibkr")
    await set_position(gw, ib, C165, 0)  # the short leg bought back by hand

    # within the grace period: the combo as last held in full (its trade is not closed as
    # external on what may be a transient state), its long leg not as a single
    for _ in range(3):
        got = {p.contract_id for p in await venue.positions()}
        assert got == {"AAPL", *IC_LEGS, "AAPL vert-1"}
        assert {"AAPL vert-1", *VERT_LEGS} <= {c.id for c in venue.held_contracts()}
        assert saved_groups(tmp_path) == {"vert-1"}  # still remembered
        clock.advance(PARTIAL_GRACE_SECONDS / 3 - 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in caplog.records if "partly held" in r.getMessage()] == [
        f"ibkr group AAPL vert-1 partly held (AAPL {EXP} 165C not held): reported as last held "
        f"in full, its other legs not as singles, for up to {PARTIAL_GRACE_SECONDS:g}s"
    ]  # once

    clock.advance(3)  # the grace period is over: a leg was closed by hand
    got = {p.contract_id: p for p in await venue.positions()}
    assert "AAPL vert-1" not in got
    assert got[f"AAPL {EXP} 150C"] == VenuePosition(f"AAPL {EXP} 150C", "long", 1, 2.0)
    [warned] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned.getMessage() == (
        f"ibkr group AAPL vert-1 dropped: AAPL {EXP} 165C no longer held after 60s; "
        "its other legs are single positions now"
    )
    assert saved_groups(tmp_path) == set()
    assert "AAPL vert-1" not in {c.id for c in venue.held_contracts()}
    clock.advance(600)
    assert f"AAPL {EXP} 150C" in {p.contract_id for p in await venue.positions()}


async def test_legs_closed_one_at_a_time_keep_the_combo_then_the_group_is_closed(
    gw: Gateway, clients: Clients, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A combo closed at TWS: its legs' updates arrive one by one, polls land in between."""
    clock = ManualClock(1_000.0)
    ib = await clients.connect()
    venue = venue_of(clients, tmp_path, IC_CONFIG, clock=clock)
    before = {p.contract_id for p in await venue.positions()}
    assert before == {"AAPL", "AAPL ic-1", "AAPL vert-1"}
    caplog.set_level(logging.INFO, logger="engine.venues.ibkr")

    for i, leg in enumerate((P140, C160, P145)):  # three of the condor's four legs go
        await set_position(gw, ib, leg, 0)
        clock.advance(1)
        got = {p.contract_id for p in await venue.positions()}
        assert got == {"AAPL", "AAPL vert-1", "AAPL ic-1"}, f"after {i + 1} legs"
        assert "AAPL ic-1" in {c.id for c in venue.held_contracts()}
        assert saved_groups(tmp_path) == {"ic-1", "vert-1"}
    await set_position(gw, ib, C155, 0)
    assert {p.contract_id for p in await venue.positions()} == {"AAPL", "AAPL vert-1"}
    assert saved_groups(tmp_path) == {"vert-1"}  # dropped at once: closed, not timed out
    assert "AAPL ic-1" not in {c.id for c in venue.held_contracts()}
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]

    # the same for a group remembered from its opening executions, and nothing left over
    await set_position(gw, ib, C150, 0)
    assert {p.contract_id for p in await venue.positions()} == {"AAPL", "AAPL vert-1"}
    await set_position(gw, ib, C165, 0)
    assert {p.contract_id for p in await venue.positions()} == {"AAPL"}
    assert saved_groups(tmp_path) == set()
    clock.advance(PARTIAL_GRACE_SECONDS * 2)
    assert {p.contract_id for p in await venue.positions()} == {"AAPL"}
    # nothing dropped; only the config's group that is not held any more is pointed out
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in warned if "(config)" not in m or "not held; not grouped" not in m] == []


async def test_a_group_whose_legs_come_back_is_the_same_combo(
    gw: Gateway, clients: Clients, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Updates in flight: a leg missing for a moment; the combo is reported again as it was,
    and a later partial state has a grace period of its own."""
    clock = ManualClock(1_000.0)
    ib = await clients.connect()
    venue = venue_of(clients, tmp_path, clock=clock)
    first = {p.contract_id: p for p in await venue.positions()}
    assert first["AAPL vert-1"] == VenuePosition("AAPL vert-1", "long", 1, pytest.approx(1.20))
    caplog.set_level(logging.WARNING, logger="engine.venues.ibkr")

    await set_position(gw, ib, C150, 0)
    clock.advance(50)
    got = {p.contract_id: p for p in await venue.positions()}
    assert not VERT_LEGS & set(got) and got["AAPL vert-1"] == first["AAPL vert-1"]
    await set_position(gw, ib, C150, 1)
    assert {p.contract_id: p for p in await venue.positions()} == first

    clock.advance(5)  # 55 s after the first partial state: a new one starts its own clock
    await set_position(gw, ib, C150, 0)
    assert "AAPL vert-1" in {p.contract_id for p in await venue.positions()}
    clock.advance(PARTIAL_GRACE_SECONDS - 1)
    got = {p.contract_id for p in await venue.positions()}
    assert not VERT_LEGS & got and "AAPL vert-1" in got
    clock.advance(1)
    got = {p.contract_id for p in await venue.positions()}
    assert f"AAPL {EXP} 165C" in got and "AAPL vert-1" not in got
    assert [r.getMessage() for r in caplog.records] == [
        f"ibkr group AAPL vert-1 dropped: AAPL {EXP} 150C no longer held after 60s; "
        "its other legs are single positions now"
    ]


async def test_a_partly_held_config_group_is_held_back_too(
    gw: Gateway, clients: Clients, tmp_path: Path
) -> None:
    """A config group once formed, seen partly held after a restart (a new process reading the
    groups file): held back, then its remaining legs single after the grace period."""
    ib = await clients.connect()
    assert "AAPL ic-1" in {
        p.contract_id for p in await venue_of(clients, tmp_path, IC_CONFIG).positions()
    }
    await set_position(gw, ib, P140, 0)

    clock = ManualClock(5_000.0)
    again = venue_of(clients, tmp_path, IC_CONFIG, clock=clock)
    got = {p.contract_id for p in await again.positions()}
    assert got == {"AAPL", "AAPL vert-1"}
    assert saved_groups(tmp_path) == {"ic-1", "vert-1"}
    clock.advance(PARTIAL_GRACE_SECONDS)
    got = {p.contract_id for p in await again.positions()}
    assert got == {"AAPL", "AAPL vert-1", *IC_LEGS[1:]}
    assert saved_groups(tmp_path) == {"vert-1"}

    # a config group never formed (here: a leg not held from the start) is not held back
    fresh = venue_of(
        clients, tmp_path / "fresh", IbkrGroupConfig(name="x", legs=IC_LEGS), clock=clock
    )
    assert set(IC_LEGS[1:]) <= {p.contract_id for p in await fresh.positions()}


async def test_legs_of_one_bag_order_without_order_ref(
    gw: Gateway, clients: Clients, tmp_path: Path
) -> None:
    """The leg executions of one BAG order share its permId: they group without an orderRef."""
    opening(gw, P140, "BOT", 2, 0.50, perm_id=1_800_000_077)
    opening(gw, P145, "SLD", 2, 1.20, perm_id=1_800_000_077)
    await clients.connect()
    got = {p.contract_id: p for p in await venue_of(clients, tmp_path).positions()}
    # a sold put spread: 0.50 − 1.20 = −0.70 → short at 0.70
    assert got["AAPL bag-1800000077"] == VenuePosition(
        "AAPL bag-1800000077", "short", 2, pytest.approx(0.70)
    )
    assert f"AAPL {EXP} 155C" in got  # the calls were not in that order


async def test_config_wins_over_the_executions(
    gw: Gateway, clients: Clients, tmp_path: Path
) -> None:
    await clients.connect()
    mine = IbkrGroupConfig(name="mine", legs=[f"AAPL {EXP} 150C", IC_LEGS[3]])
    got = {p.contract_id for p in await venue_of(clients, tmp_path, mine).positions()}
    assert "AAPL mine" in got
    assert "AAPL vert-1" not in got
    assert f"AAPL {EXP} 165C" in got  # its partner stays a single leg


async def test_config_group_with_a_leg_not_held_is_not_formed(
    clients: Clients, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await clients.connect()
    caplog.set_level(logging.WARNING, logger="engine.venues.ibkr")
    bad = IbkrGroupConfig(name="gone", legs=[IC_LEGS[0], "AAPL 20260116 130P"])
    venue = venue_of(clients, tmp_path, bad)
    got = {p.contract_id for p in await venue.positions()}
    assert IC_LEGS[0] in got and "AAPL gone" not in got
    await venue.positions()
    warned = [r for r in caplog.records if "'gone'" in r.getMessage()]
    assert len(warned) == 1  # once, not on every poll


# ---- the rules, directly ------------------------------------------------------------------------


def leg(con_id: int, cid: str, position: float, avg_cost: float, mult: float = 100.0) -> HeldLeg:
    return HeldLeg(con_id, cid, cid.split()[0], "USD", mult, position, avg_cost)


def test_ratio_spread_qty_is_the_gcd() -> None:
    held = [leg(1, "X 20260116 100C", 2, 300.0), leg(2, "X 20260116 110C", -4, 100.0)]
    fills = [OpeningFill(1, "ts:r", 5, "BOT"), OpeningFill(2, "ts:r", 5, "SLD")]
    [combo] = group_legs(held, [], fills, []).combos
    assert combo.qty == 2
    # +1 at 3.00, −2 at 1.00: a debit of 1.00
    assert [(lg.contract_id, r) for lg, r in combo.legs] == [
        ("X 20260116 100C", 1),
        ("X 20260116 110C", -2),
    ]
    assert (combo.side, combo.entry, combo.contract_id) == ("long", pytest.approx(1.0), "X r")


def test_closing_executions_and_mixed_multipliers_do_not_group() -> None:
    held = [leg(1, "X 20260116 100C", 1, 300.0), leg(2, "X 20260116 110C", -1, 100.0)]
    closing = [OpeningFill(1, "t", 5, "SLD"), OpeningFill(2, "t", 5, "BOT")]
    assert group_legs(held, [], closing, []).combos == ()
    stock = [leg(1, "X", 100, 50.0, mult=1.0), leg(2, "X 20260116 60C", -1, 100.0)]
    same = [OpeningFill(1, "cc", 5, "BOT"), OpeningFill(2, "cc", 5, "SLD")]
    grouping = group_legs(stock, [], same, [])
    assert grouping.combos == () and len(grouping.singles) == 2


def test_remembered_orientation_is_kept() -> None:
    """A group formed as a credit stays short even if its legs' costs later say debit."""
    held = [leg(1, "X 20260116 100P", 1, 300.0), leg(2, "X 20260116 110P", -1, 100.0)]
    memory = [RememberedGroup("s", "X", "orderRef", -1, (1, 2), ("a", "b"))]
    [combo] = group_legs(held, [], [], memory).combos
    assert (combo.side, combo.entry) == ("short", pytest.approx(-2.0))
    assert [r for _, r in combo.legs] == [-1, 1]


def test_partial_hold_in_the_rules() -> None:
    """`group_legs` with a `PartialHold`: partly held → held back (neither combo nor singles)
    until the grace period ends; in full again → the combo, and the clock forgotten."""
    a, b = leg(1, "X 20260116 100C", 1, 300.0), leg(2, "X 20260116 110C", -1, 100.0)
    memory = [RememberedGroup("v", "X", "orderRef", 1, (1, 2), (a.contract_id, b.contract_id))]
    hold = PartialHold(60.0)
    dropped: list[str] = []

    def rules(held: list[HeldLeg], now: float) -> tuple[list[str], list[str], list[str]]:
        g = group_legs(
            held, [], [], memory, partial=hold, now=now, warn=lambda k, m: dropped.append(k)
        )
        return (
            [c.contract_id for c in g.combos],
            [s.contract_id for s in g.singles],
            [h.contract_id for h in g.held_back],
        )

    assert rules([a, b], 0.0) == (["X v"], [], [])
    assert rules([a], 10.0) == ([], [], ["X v"])
    assert hold.since == {"X v": 10.0}
    assert rules([a], 69.9) == ([], [], ["X v"])
    assert rules([a, b], 70.0) == (["X v"], [], [])
    assert hold.since == {}
    assert rules([b], 100.0) == ([], [], ["X v"])
    assert rules([b], 160.0) == ([], [b.contract_id], [])
    assert dropped == ["dropped:X v"]
    assert rules([], 161.0) == ([], [], [])
    assert hold.since == {}
    # without a PartialHold, as before: dropped at once
    g = group_legs([a], [], [], memory, warn=lambda k, m: dropped.append(k))
    assert ([s.contract_id for s in g.singles], g.held_back) == ([a.contract_id], ())


def test_names_from_order_refs() -> None:
    assert group_name_of_ref("ts:ic-1") == "ic-1"
    assert group_name_of_ref("my iron condor!") == "my-iron-condor"
    assert group_name_of_ref("   ") == ""
    held = [leg(1, "X 20260116 100C", 1, 300.0), leg(2, "X 20260116 110C", -1, 100.0)]
    held += [leg(3, "X 20260116 120C", 1, 300.0), leg(4, "X 20260116 130C", -1, 100.0)]
    fills = [OpeningFill(c, "a b", 5, s) for c, s in ((1, "BOT"), (2, "SLD"))]
    fills += [OpeningFill(c, "a:b", 6, s) for c, s in ((3, "BOT"), (4, "SLD"))]
    names = sorted(c.contract_id for c in group_legs(held, [], fills, []).combos)
    assert names == ["X a-b", "X a:b"]


def test_a_damaged_groups_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / GROUPS_FILE
    path.write_text("{not json")
    store = GroupStore(path)
    assert store.groups == ()
    assert (tmp_path / (GROUPS_FILE + ".damaged")).exists()
    g = RememberedGroup("v", "X", "orderRef", 1, (1, 2), ("X 20260116 1C", "X 20260116 2C"))
    store.save([g])
    assert GroupStore(path).groups == (g,)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
