"""The journal: a real SQLite file in WAL mode, its lock, migrations and each table's round trip."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import store as store_mod
from engine.models import AlertKind, Severity, Trade, TradeState
from engine.store import SCHEMA_VERSION, Store, StoreError, StoreLocked


def make_trade(trade_id: str = "T1", **kw) -> Trade:
    base = dict(
        trade_id=trade_id,
        contract_id="KXBTC-25JAN01-14-B100000",
        side="yes",
        qty=10.0,
        entry_price=0.42,
        opened_ts=1_700_000_000.0,
    )
    base.update(kw)
    return Trade(**base)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "journal.sqlite"


@pytest.fixture
async def store(db_path: Path):
    s = Store(db_path)
    await s.open()
    yield s
    await s.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection (autocommit), as another program would use, closed after."""
    c = sqlite3.connect(path, isolation_level=None)
    try:
        c.execute("PRAGMA busy_timeout = 5000")
        yield c
    finally:
        c.close()


# --- trades --------------------------------------------------------------------------------------


async def test_trade_round_trip_all_fields(store: Store) -> None:
    t = make_trade(
        side="short",
        qty=3.5,
        entry_price=12.25,
        strategy="scalp",
        venue="ibkr",
        overrides={"max_loss_percent": 20.0, "profit_target_percent": None},
        state=TradeState.CLOSED,
        paused=True,
        fees=0.07,
        peak_pnl=4.5,
        peak_pnl_pct=0.1,
        trough_pnl=-2.0,
        trough_pnl_pct=-0.05,
        closed_ts=1_700_000_900.5,
        exit_price=11.0,
        exit_reason="max_loss",
        realized_pnl=4.305,
        closed_qty=3.5,
    )
    assert await store.add_trade(t, source="venue") is True
    got = await store.get_trade("T1")
    assert got == t
    assert isinstance(got.state, TradeState)
    assert got.overrides == {"max_loss_percent": 20.0, "profit_target_percent": None}
    assert await store.trade_source("T1") == "venue"
    assert store.last_load_problems == []


async def test_add_trade_refuses_duplicates_and_never_overwrites(store: Store) -> None:
    assert await store.add_trade(make_trade(qty=10.0)) is True
    assert await store.add_trade(make_trade(qty=99.0, side="no")) is False
    got = await store.get_trade("T1")
    assert got is not None and got.qty == 10.0 and got.side == "yes"


async def test_add_trade_rejects_invalid_trade(store: Store) -> None:
    with pytest.raises(StoreError, match="qty"):
        await store.add_trade(make_trade(qty=math.nan))
    with pytest.raises(StoreError, match="side"):
        await store.add_trade(make_trade(side="up"))  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="overrides"):
        await store.add_trade(make_trade(overrides={"max_loss_percent": math.inf}))
    with pytest.raises(StoreError, match="overrides"):
        await store.add_trade(make_trade(overrides={"no_such_rule": 1.0}))
    assert await store.all_trades() == []


async def test_save_trade_updates_mutable_fields(store: Store) -> None:
    t = make_trade()
    await store.add_trade(t)
    t.state = TradeState.CLOSING
    t.paused = True
    t.peak_pnl = 1.25
    t.trough_pnl = -0.5
    t.overrides = {"trailing_drawdown_percent": 30.0}
    await store.save_trade(t, ts=1_700_000_100.0)
    assert await store.get_trade("T1") == t
    with raw(store.path) as c:
        assert c.execute("SELECT updated_ts FROM trades").fetchone()[0] == 1_700_000_100.0


async def test_save_unknown_trade_raises(store: Store) -> None:
    with pytest.raises(StoreError, match="not in the journal"):
        await store.save_trade(make_trade("ghost"))


async def test_load_trades_by_state_and_all_trades_newest_first(store: Store) -> None:
    await store.add_trade(make_trade("A", opened_ts=100.0))
    await store.add_trade(make_trade("B", opened_ts=200.0, state=TradeState.CLOSING))
    await store.add_trade(make_trade("C", opened_ts=300.0, state=TradeState.CLOSED))
    assert [t.trade_id for t in await store.load_trades()] == ["A", "B"]
    assert [t.trade_id for t in await store.load_trades(("closed",))] == ["C"]
    assert [t.trade_id for t in await store.all_trades()] == ["C", "B", "A"]
    assert [t.trade_id for t in await store.all_trades(limit=1)] == ["C"]
    with pytest.raises(StoreError, match="unknown trade state"):
        await store.load_trades(("gone",))


async def test_invalid_rows_are_skipped_and_reported(db_path: Path) -> None:
    # A journal made before the trades table had CHECK constraints (schema version 3), holding
    # rows such a table accepts: it keeps its table, and the rows are refused when loading.
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as c:
        for n, script in enumerate(store_mod.MIGRATIONS[:3], start=1):
            c.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {n};\nCOMMIT;")
        ins = (
            "INSERT INTO trades (trade_id, contract_id, side, qty, entry_price, opened_ts,"
            " overrides) VALUES (?, 'K', 'yes', ?, 0.5, 1.0, ?)"
        )
        c.execute(ins, ("BADJSON", 1.0, "{not json"))
        c.execute(ins, ("NANQTY", "NaN", "{}"))
        c.execute(ins, ("BADKEY", 1.0, '{"max_loss_pct": 5}'))
        c.execute(ins, ("NOTOBJ", 1.0, "[1, 2]"))
    store = Store(db_path)
    await store.open()
    await store.add_trade(make_trade("GOOD"))
    trades = await store.load_trades()
    assert [t.trade_id for t in trades] == ["GOOD"]
    problems = store.last_load_problems
    assert len(problems) == 4
    by_id = {
        tid: p for tid in ("BADJSON", "NANQTY", "BADKEY", "NOTOBJ") for p in problems if tid in p
    }
    assert "overrides is not valid JSON" in by_id["BADJSON"]
    assert "qty" in by_id["NANQTY"]
    assert "max_loss_pct" in by_id["BADKEY"]
    assert "JSON object" in by_id["NOTOBJ"]
    assert await store.get_trade("BADJSON") is None
    assert "BADJSON" in store.last_load_problems[0]
    await store.close()


async def test_external_insert_with_defaults_is_picked_up(store: Store) -> None:
    """The documented INSERT (docs/trades-schema.md) yields an open trade the engine loads."""
    with raw(store.path) as c:
        c.execute(
            "INSERT INTO trades (trade_id, contract_id, side, qty, entry_price, opened_ts,"
            " strategy, venue, overrides) VALUES ('bot-42', 'KXBTC-25JAN01-14-B100000', 'yes',"
            " 10, 0.42, 1735740000.0, 'momentum', 'kalshi', '{\"max_loss_percent\": 25}')"
        )
    (t,) = await store.load_trades()
    assert t.trade_id == "bot-42" and t.state is TradeState.OPEN and not t.paused
    assert t.qty == 10.0 and isinstance(t.qty, float)
    assert t.overrides == {"max_loss_percent": 25}
    assert await store.trade_source("bot-42") == "external"


async def test_schema_checks_reject_bad_side_from_other_programs(store: Store) -> None:
    with raw(store.path) as c, pytest.raises(sqlite3.IntegrityError):
        c.execute(
            "INSERT INTO trades (trade_id, contract_id, side, qty, entry_price, opened_ts)"
            " VALUES ('x', 'K', 'up', 1, 0.5, 1.0)"
        )


# --- lock ----------------------------------------------------------------------------------------


async def test_second_writer_is_locked_out_readonly_works(store: Store, db_path: Path) -> None:
    await store.add_trade(make_trade())
    assert (db_path.parent / "journal.sqlite.lock").read_text().strip() == str(os.getpid())

    other = Store(db_path)
    with pytest.raises(StoreLocked) as ei:
        await other.open()
    msg = str(ei.value)
    assert f"another trade-supervisor (pid {os.getpid()}) is using {db_path}" in msg
    assert "stop it or use another data_dir" in msg
    assert not other.is_open

    ro = Store(db_path)
    await ro.open(readonly=True)
    try:
        assert [t.trade_id for t in await ro.load_trades()] == ["T1"]
        # the reader sees later commits of the running engine (WAL)
        await store.add_trade(make_trade("T2", opened_ts=1_700_000_001.0))
        assert [t.trade_id for t in await ro.all_trades()] == ["T2", "T1"]
        with pytest.raises(StoreError, match="read-only"):
            await ro.set_state("armed", False)
    finally:
        await ro.close()


async def test_lock_released_after_close(db_path: Path) -> None:
    a = Store(db_path)
    await a.open()
    await a.close()
    b = Store(db_path)
    await b.open()
    try:
        with pytest.raises(StoreLocked):
            await Store(db_path).open()
    finally:
        await b.close()
    await a.close()  # closing twice is harmless


async def test_async_context_manager(db_path: Path) -> None:
    async with Store(db_path) as s:
        await s.set_state("k", 1)
    async with Store(db_path) as s:
        assert await s.get_state("k") == 1


async def test_readonly_on_missing_journal_creates_nothing(tmp_path: Path) -> None:
    p = tmp_path / "nope.sqlite"
    with pytest.raises(StoreError, match="no journal at"):
        await Store(p).open(readonly=True)
    assert list(tmp_path.iterdir()) == []


async def test_readonly_without_running_engine(db_path: Path) -> None:
    async with Store(db_path) as s:
        await s.add_trade(make_trade())
    ro = Store(db_path)
    await ro.open(readonly=True)
    try:
        assert (await ro.get_trade("T1")) is not None
    finally:
        await ro.close()


# --- file format, migrations ---------------------------------------------------------------------


async def test_wal_mode_and_pragmas(store: Store, db_path: Path) -> None:
    assert await store._pragma("journal_mode") == "wal"
    assert await store._pragma("synchronous") == 1  # NORMAL
    assert await store._pragma("foreign_keys") == 1
    assert await store._pragma("busy_timeout") == store_mod.BUSY_TIMEOUT_MS
    with raw(db_path) as c:  # WAL is persistent in the file
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_migrates_empty_file_and_is_idempotent(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.touch()  # an empty file is an empty SQLite database
    async with Store(db_path) as s:
        await s.add_trade(make_trade())
    with raw(db_path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("PRAGMA application_id").fetchone()[0] == store_mod.APPLICATION_ID
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        idx = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"trades", "marks", "exit_intents", "orders", "fills", "alerts", "audit", "state"} <= (
        tables
    )
    assert "marks_trade_ts" in idx
    async with Store(db_path) as s:  # reopen: no migration re-run, data intact
        assert (await s.get_trade("T1")) is not None
    with raw(db_path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_failed_migration_rolls_back(db_path: Path, monkeypatch) -> None:
    async with Store(db_path) as s:
        await s.add_trade(make_trade())
    bad = "CREATE TABLE extra (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, bad])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    s = Store(db_path)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} failed"):
        await s.open()
    with raw(db_path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("SELECT name FROM sqlite_master WHERE name='extra'").fetchone() is None
        assert c.execute("SELECT count(*) FROM trades").fetchone()[0] == 1
    # the failed open released its lock
    monkeypatch.undo()
    async with Store(db_path) as s2:
        assert (await s2.get_trade("T1")) is not None


async def test_newer_schema_is_refused(db_path: Path) -> None:
    async with Store(db_path) as s:
        await s.add_trade(make_trade())
    with raw(db_path) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    before = db_path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(StoreError) as ei:
            await Store(db_path).open(readonly=readonly)
        msg = str(ei.value)
        assert f"schema version {SCHEMA_VERSION + 5}" in msg and "upgrade the app" in msg
        assert str(db_path) in msg
    assert db_path.read_bytes() == before
    async with Store(db_path.with_name("other.sqlite")):
        pass  # the refused open did not leave anything locked or broken


async def test_non_sqlite_file_is_refused_and_untouched(tmp_path: Path) -> None:
    p = tmp_path / "journal.sqlite"
    content = b"these are my precious trading notes, not a database\n" * 50
    p.write_bytes(content)
    s = Store(p)
    with pytest.raises(StoreError) as ei:
        await s.open()
    msg = str(ei.value)
    assert str(p) in msg and "move it aside" in msg
    assert p.read_bytes() == content
    assert not (tmp_path / "journal.sqlite-wal").exists()
    with pytest.raises(StoreError, match="move it aside"):
        await Store(p).open(readonly=True)
    assert p.read_bytes() == content
    # the lock was released by the failed open
    p2 = tmp_path / "journal.sqlite"
    p2.rename(tmp_path / "moved-aside")
    async with Store(p) as s2:
        assert await s2.all_trades() == []


async def test_corrupt_sqlite_body_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "j.sqlite"
    p.write_bytes(store_mod.SQLITE_MAGIC + b"\xff" * 200)
    with pytest.raises(StoreError, match="move it aside"):
        await Store(p).open()


async def test_other_applications_database_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "j.sqlite"
    with raw(p) as c:
        c.execute("CREATE TABLE customers (name TEXT)")
        c.execute("INSERT INTO customers VALUES ('alice')")
    before = p.read_bytes()
    with pytest.raises(StoreError, match=r"another application .*customers"):
        await Store(p).open()
    assert p.read_bytes() == before


# --- intents, orders, fills ----------------------------------------------------------------------


async def test_intent_order_fill_round_trip(store: Store) -> None:
    await store.add_trade(make_trade())
    ctx = {"rule": "max_loss", "pnl_pct": -0.31, "spot": 97123.5, "iv": math.nan, "q": (1, 2)}
    await store.add_intent("I1", "T1", "max_loss", 10.0, 1000.0, ctx)
    with pytest.raises(StoreError, match="already journaled"):
        await store.add_intent("I1", "T1", "max_loss", 10.0, 1000.0, ctx)

    (it,) = await store.open_intents()
    assert it["intent_id"] == "I1" and it["status"] == "pending" and it["attempts"] == 0
    assert it["context"] == {
        "rule": "max_loss",
        "pnl_pct": -0.31,
        "spot": 97123.5,
        "iv": None,
        "q": [1, 2],
    }
    await store.update_intent("I1", status="sent", attempts=1, ts=1001.0)
    (it,) = await store.open_intents()
    assert (it["status"], it["attempts"], it["updated_ts"]) == ("sent", 1, 1001.0)
    with pytest.raises(StoreError, match="status"):
        await store.update_intent("I1", status="done")
    with pytest.raises(StoreError, match="not in the journal"):
        await store.update_intent("nope", status="sent")

    await store.add_order(
        client_order_id="I1-1",
        intent_id="I1",
        trade_id="T1",
        contract_id="KXBTC-25JAN01-14-B100000",
        side="yes",
        action="sell",
        qty=10.0,
        limit_price=0.30,
        ts=1001.0,
    )
    await store.update_order("I1-1", status="partial", filled_qty=4.0, avg_price=0.3, ts=1002.0)
    await store.update_order(
        "I1-1", status="filled", filled_qty=10.0, avg_price=0.29, fees=0.1, venue_order_id="V9"
    )
    (o,) = await store.orders_for_intent("I1")
    assert o["status"] == "filled" and o["filled_qty"] == 10.0 and o["avg_price"] == 0.29
    assert o["fees"] == 0.1 and o["venue_order_id"] == "V9" and o["updated_ts"] == 1002.0
    assert o["action"] == "sell" and o["limit_price"] == 0.30 and o["created_ts"] == 1001.0
    with pytest.raises(StoreError, match="order status"):
        await store.update_order("I1-1", status="weird")

    await store.add_fill(client_order_id="I1-1", trade_id="T1", qty=4.0, price=0.3, fees=0.04, ts=2)
    await store.add_fill(
        client_order_id="I1-1", trade_id="T1", qty=6.0, price=0.28, fees=0.06, ts=3
    )
    fills = await store.fills_for_trade("T1")
    assert [(f["qty"], f["price"], f["fees"], f["ts"]) for f in fills] == [
        (4.0, 0.3, 0.04, 2.0),
        (6.0, 0.28, 0.06, 3.0),
    ]
    assert fills[0]["client_order_id"] == "I1-1"

    await store.update_intent("I1", status="filled")
    assert await store.open_intents() == []
    assert (await store.get_intent("I1"))["status"] == "filled"


async def test_writes_for_unknown_trade_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="'ghost' is not in the journal"):
        await store.add_mark("ghost", 1.0, 0.5, 0.0, 0.0)
    with pytest.raises(StoreError, match="'ghost' is not in the journal"):
        await store.add_intent("I", "ghost", "max_loss", 1.0, 1.0, {})
    await store.add_trade(make_trade())
    with pytest.raises(StoreError, match="exit intent 'nope' is not in the journal"):
        await store.add_order(
            client_order_id="c",
            intent_id="nope",
            trade_id="T1",
            contract_id="K",
            side="yes",
            action="sell",
            qty=1.0,
            limit_price=None,
            ts=1.0,
        )


async def test_marks_round_trip(store: Store) -> None:
    await store.add_trade(make_trade())
    await store.add_mark("T1", 2.0, 0.45, 0.3, 0.07)
    await store.add_mark("T1", 1.0, 0.40, -0.2, -0.05)
    await store.add_mark("T1", 3.0, math.nan, math.inf, 0.0)
    assert await store.marks("T1") == [
        (1.0, 0.40, -0.2, -0.05),
        (2.0, 0.45, 0.3, 0.07),
        (3.0, None, None, 0.0),
    ]
    assert await store.marks("other") == []


async def test_book_result_is_atomic(store: Store) -> None:
    t = make_trade()
    await store.add_trade(t)
    await store.add_intent("I1", "T1", "max_loss", 10.0, 1.0, {})
    t.state = TradeState.CLOSED
    t.exit_price = 0.3
    t.realized_pnl = -1.2
    t.closed_ts = 5.0
    t.closed_qty = 10.0
    t.exit_reason = "max_loss"
    ghost = make_trade()
    ghost.trade_id = "NOPE"
    with pytest.raises(StoreError, match="'NOPE' is not in the journal"):
        await store.book_result(trade=ghost, ts=5.0, intent=("I1", "filled", None))
    assert (await store.get_intent("I1"))["status"] == "pending"  # nothing half-written

    await store.book_result(
        trade=t, ts=5.0, intent=("I1", "filled", None), audit=("closed", {"x": 1})
    )
    assert await store.get_trade("T1") == t
    assert (await store.get_intent("I1"))["status"] == "filled"
    assert [a["event"] for a in await store.audit_for_trade("T1")] == ["closed"]
    await store.set_state("after", True)  # the connection is usable after both paths
    assert await store.get_state("after") is True


# The first order of an exit, as the engine passes it to begin_exit.
EXIT_ORDER = {
    "client_order_id": "I1",
    "contract_id": "KXBTC-25JAN01-14-B100000",
    "side": "yes",
    "action": "sell",
    "qty": 10.0,
}


async def test_begin_exit_commits_intent_order_and_audit_together(
    store: Store, db_path: Path
) -> None:
    await store.add_trade(make_trade())
    order = dict(EXIT_ORDER)
    await store.begin_exit(
        intent_id="I1",
        trade_id="T1",
        rule="max_loss",
        qty=10.0,
        ts=7.0,
        context={"p": 1},
        order=order,
    )
    # Committed before it returned: another program sees all three rows.
    with raw(db_path) as c:
        assert c.execute("SELECT status, attempts FROM exit_intents").fetchall() == [("sent", 1)]
        assert c.execute("SELECT client_order_id, status FROM orders").fetchall() == [
            ("I1", "pending")
        ]
        assert c.execute("SELECT event FROM audit").fetchall() == [("exit_intent",)]

    # The same client order id again: the order insert fails after the intent insert, and
    # the whole exit is rolled back (no second intent, no audit), the journal still writable.
    with pytest.raises(StoreError, match="could not journal exit 'I2'"):
        await store.begin_exit(
            intent_id="I2",
            trade_id="T1",
            rule="manual",
            qty=10.0,
            ts=8.0,
            context={},
            order=order,
        )
    assert await store.get_intent("I2") is None
    assert [a["event"] for a in await store.audit_for_trade("T1")] == ["exit_intent"]
    await store.set_state("after", True)
    assert await store.get_state("after") is True


async def test_begin_exit_behind_another_programs_write_fails_clearly_then_works(
    store: Store, db_path: Path
) -> None:
    await store.add_trade(make_trade())
    order = dict(EXIT_ORDER)
    kw = {"trade_id": "T1", "rule": "max_loss", "qty": 10.0, "ts": 7.0, "context": {}}
    with raw(db_path) as other:
        other.execute("BEGIN IMMEDIATE")  # e.g. the CLI, mid-write, holding the write lock
        with pytest.raises(StoreError, match=r"could not journal exit 'I1'.*locked"):
            await store.begin_exit(intent_id="I1", order=order, **kw)
        other.execute("COMMIT")
    assert await store.get_intent("I1") is None  # nothing half-written
    await store.begin_exit(intent_id="I1", order=order, **kw)
    assert (await store.get_intent("I1"))["status"] == "sent"


# --- alerts, audit, state ------------------------------------------------------------------------


async def test_alerts_newest_first(store: Store) -> None:
    for i in range(5):
        await store.add_alert(
            ts=float(i),
            kind=AlertKind.AUTO_STOP,
            severity=Severity.CRITICAL,
            trade_id="T1" if i % 2 else None,
            message=f"alert {i}",
            data={"i": i, "bad": math.nan},
        )
    alerts = await store.recent_alerts(limit=3)
    assert [a["message"] for a in alerts] == ["alert 4", "alert 3", "alert 2"]
    assert alerts[1]["kind"] == "auto_stop" and alerts[1]["severity"] == "critical"
    assert alerts[1]["trade_id"] == "T1" and alerts[0]["trade_id"] is None
    assert alerts[0]["data"] == {"i": 4, "bad": None}


async def test_audit_round_trip_keeps_full_context(store: Store) -> None:
    ctx = {
        "rule": "trailing_drawdown",
        "numbers": {"peak": 5.0, "pnl": 2.0, "threshold_pct": 50.0},
        "market": {"spot": 97000.0, "ttc_s": 1200, "momentum_bps": -12.5, "regime": "high"},
        "quote": {"bid": 0.4, "ask": 0.42, "ts": 999.5},
        "weird": {1: float("-inf"), "obj": object()},
    }
    await store.add_audit(1000.0, "T1", "auto_stop", ctx)
    await store.add_audit(1001.0, None, "armed", {"by": "key"})
    (rec,) = await store.audit_for_trade("T1")
    assert rec["event"] == "auto_stop" and rec["ts"] == 1000.0
    assert rec["data"]["market"] == ctx["market"]
    assert rec["data"]["numbers"] == ctx["numbers"]
    assert rec["data"]["weird"]["1"] is None
    assert rec["data"]["weird"]["obj"].startswith("<object")


async def test_state_round_trip(store: Store) -> None:
    assert await store.get_state("armed") is None
    assert await store.get_state("armed", True) is True
    await store.set_state("armed", False, ts=1.0)
    await store.set_state("paused", {"T1": True, "x": math.nan})
    await store.set_state("armed", True, ts=2.0)
    assert await store.get_state("armed") is True
    assert await store.get_state("paused") == {"T1": True, "x": None}
    with raw(store.path) as c:
        row = c.execute("SELECT value, updated_ts FROM state WHERE key='armed'").fetchone()
    assert json.loads(row[0]) is True and row[1] == 2.0


# --- durability ----------------------------------------------------------------------------------


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    s = Store(db_path)
    await s.open()
    await s.add_trade(make_trade(overrides={"max_loss_percent": 10.0}))
    await s.add_intent("I1", "T1", "max_loss", 10.0, 1.0, {"spot": 1.0})
    await s.add_alert(
        ts=1.0, kind="trade_detected", severity="info", trade_id="T1", message="m", data={}
    )
    await s.set_state("armed", True)
    await s.close()

    s = Store(db_path)
    await s.open()
    try:
        (t,) = await s.load_trades()
        assert t.overrides == {"max_loss_percent": 10.0}
        assert [i["intent_id"] for i in await s.open_intents()] == ["I1"]
        assert len(await s.recent_alerts()) == 1
        assert await s.get_state("armed") is True
    finally:
        await s.close()


async def test_written_before_return_visible_to_other_connection(store: Store) -> None:
    """A write is committed when its coroutine returns (the engine's journal-before-send rule)."""
    await store.add_trade(make_trade())
    await store.add_intent("I1", "T1", "max_loss", 10.0, 1.0, {})
    with raw(store.path) as c:
        assert c.execute("SELECT status FROM exit_intents").fetchone()[0] == "pending"


async def test_write_latency_is_small(store: Store) -> None:
    await store.add_trade(make_trade())
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        await store.add_intent(f"I{i}", "T1", "max_loss", 1.0, float(i), {"i": i, "spot": 97000.0})
    mean = (time.perf_counter() - t0) / n
    assert mean < 0.005, f"mean journal write {mean * 1000:.2f} ms"


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_a_cancelled_transaction_leaves_the_journal_writable(tmp_path, yields):
    """An engine stopping mid-write (its task cancelled) must not leave the shared connection
    inside a transaction, or every later write fails ('cannot start a transaction within a
    transaction') — seen when `record` stopped while marks were being flushed."""
    store = Store(tmp_path / "j.db")
    await store.open()
    t = Trade("t1", "C", "yes", 1, 0.5, 1.0)
    await store.add_trade(t)
    rows = [("t1", float(i), 0.5, 0.0, 0.0) for i in range(2000)]
    task = asyncio.create_task(store.add_marks(rows))
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.add_marks([("t1", 9999.0, 0.4, -0.1, -20.0)])  # must not raise
    await store.set_state("k", 1)
    marks = await store.marks("t1")
    assert marks[-1] == (9999.0, 0.4, -0.1, -20.0)
    assert len(marks) in (1, 2001)  # the cancelled batch is all in or all out
    await store.close()


async def test_exit_writes_never_meet_a_read_left_open_on_the_main_connection(
    store: Store,
) -> None:
    """Reads on the main connection (the tick's polls) run beside the exit path: the exit
    writer's commit, then book_result's BEGIN IMMEDIATE. A read must not keep a statement open
    between two hand-offs to aiosqlite's thread: its stale snapshot would make the write fail at
    once with 'database is locked' (SQLITE_BUSY_SNAPSHOT, no busy wait)."""
    for i in range(20):
        await store.add_trade(make_trade(f"T{i}"))
    stop = asyncio.Event()

    async def reader() -> int:
        n = 0
        while not stop.is_set():
            await store.open_trade_ids()
            n += 1
        return n

    readers = [asyncio.create_task(reader()) for _ in range(2)]
    try:
        for i in range(200):
            t = make_trade(f"T{i % 20}")
            coid = f"I{i}"
            await store.begin_exit(
                intent_id=coid,
                trade_id=t.trade_id,
                rule="max_loss",
                qty=10.0,
                ts=float(i),
                context={},
                order={**EXIT_ORDER, "client_order_id": coid},
            )
            await store.book_result(
                trade=t,
                ts=float(i),
                order={"client_order_id": coid, "status": "rejected", "reason": "READ_ONLY"},
            )
    finally:
        stop.set()
        counts = await asyncio.gather(*readers)
    assert min(counts) > 0


async def test_tick_flush_beside_reads_and_another_programs_writes(
    store: Store, db_path: Path
) -> None:
    """The tick's flush is a transaction; a read on the main connection may run inside it (reads
    take no write lock). Begun DEFERRED, that read pins a snapshot, and another program's commit
    (the CLI) then makes the flush's first write fail at once (SQLITE_BUSY, no busy wait): it
    must take the write lock at BEGIN (IMMEDIATE) and wait like every other write."""
    import threading

    await store.add_trade(make_trade("T1"))
    stop = threading.Event()

    def other_program() -> None:
        with raw(db_path) as c:
            n = 0
            while not stop.is_set():
                c.execute(
                    "INSERT INTO state (key, value, updated_ts) VALUES ('cli', '1', ?)"
                    " ON CONFLICT(key) DO UPDATE SET updated_ts = excluded.updated_ts",
                    (n,),
                )
                n += 1
                time.sleep(0.001)

    async def reader() -> None:
        while not stop.is_set():
            await store.open_trade_ids()

    th = threading.Thread(target=other_program)
    th.start()
    r = asyncio.create_task(reader())
    try:
        for i in range(200):
            await store.flush_tick([("T1", float(i), 0.5, 1.0, 1.0)], [], {"hb": i}, float(i))
    finally:
        stop.set()
        th.join()
        await r
