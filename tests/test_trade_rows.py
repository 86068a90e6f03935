"""Rows other programs write into the journal's trades table (docs/trades-schema.md).

A bad row is never supervised, never sent an order, never deleted and never fatal: it gets one
alert naming its rowid, its trade_id as written, the field and the fix, and the other trades keep
being protected, at start and while the engine runs. Rows are written here through a plain sqlite3
connection, as another program would. Journals made before the trades table carried CHECK
constraints accept such rows; `old_journal` makes one as an older release did.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.models import Contract, Trade
from engine.store import MIGRATIONS, Store
from engine.trade_rows import BadRow, RowContext, check_row
from tests.engine_harness import CID, T0, Harness, config

GOOD: dict[str, Any] = {
    "trade_id": "bad",
    "contract_id": CID,
    "side": "yes",
    "qty": 10.0,
    "entry_price": 0.50,
    "opened_ts": T0,
    "venue": "sim",
    "overrides": "{}",
    "fees": 0.0,
}

# kind -> (the columns written differently from a good row, the field the alert must name)
BAD_KINDS: dict[str, tuple[dict[str, Any], str]] = {
    "empty_id": ({"trade_id": ""}, "trade_id"),
    "blank_id": ({"trade_id": "   "}, "trade_id"),
    "null_id": ({"trade_id": None}, "trade_id"),
    "blob_id": ({"trade_id": b"\x01\x02"}, "trade_id"),
    "empty_contract": ({"contract_id": ""}, "contract_id"),
    "text_qty": ({"qty": "ten"}, "qty"),
    "nan_qty": ({"qty": "NaN"}, "qty"),
    "huge_qty": ({"qty": 1e15}, "qty"),
    "blob_price": ({"entry_price": b"\x3f"}, "entry_price"),
    "price_above_1": ({"entry_price": 7.5}, "entry_price"),
    "negative_fees": ({"fees": -1.0}, "fees"),
    "overrides_list": ({"overrides": "[1, 2]"}, "overrides"),
    "overrides_unknown_key": ({"overrides": '{"max_loss_pct": 5}'}, "overrides"),
    "overrides_not_json": ({"overrides": "{oops"}, "overrides"),
    "other_venue": ({"venue": "paper"}, "venue"),
    "ms_timestamp": ({"opened_ts": T0 * 1000}, "opened_ts"),
    "future_timestamp": ({"opened_ts": T0 + 10 * 86400}, "opened_ts"),
    "option_side_on_binary_venue": ({"side": "long"}, "side"),
}

CRIT = config(auto_stop={"criteria": {"max_loss_percent": 30}})


def old_journal(path: Path, *, keeper: bool = True) -> None:
    """A journal as releases before the CHECK constraints made it (their trades table has none;
    the schema is brought to the current version, which a read-only CLI needs). With
    `keeper`, it holds an old closed row the checks refuse (a text qty), so it keeps its table
    without them and the engine's own checks are all that stands between a bad row and it."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        for n, script in enumerate(MIGRATIONS, start=1):
            con.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {n};\nCOMMIT;")
        if keeper:
            con.execute(
                "INSERT INTO trades (trade_id, contract_id, side, qty, entry_price, opened_ts,"
                " state) VALUES ('old-closed', 'K', 'yes', 'x', 0.5, ?, 'closed')",
                (T0 - 86400,),
            )
    finally:
        con.close()


def write_row(path: Path, **cols: Any) -> int:
    """Insert one trades row as another program would; returns its rowid."""
    row = {**GOOD, **cols}
    con = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        names = ", ".join(row)
        marks = ", ".join("?" * len(row))
        cur = con.execute(f"INSERT INTO trades ({names}) VALUES ({marks})", tuple(row.values()))
        return int(cur.lastrowid)
    finally:
        con.close()


def read_row(path: Path, rowid: int) -> tuple[Any, ...] | None:
    con = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        return con.execute("SELECT * FROM trades WHERE rowid = ?", (rowid,)).fetchone()
    finally:
        con.close()


def row_alerts(h: Harness, rowid: int) -> list[Any]:
    return [a for a in h.of_kind("data_quality") if a.data.get("rowid") == rowid]


async def running(tmp: Path) -> Harness:
    """An engine on an old journal with one contract, a fresh quote and trade t1 (YES 10 @ 0.50)."""
    h = await Harness(tmp, CRIT).open()
    await h.contract()
    await h.spot(97100.0)
    await h.quote(0.50, 0.52)
    await h.start()
    await h.open_trade()
    return h


async def restart(h: Harness) -> Harness:
    await h.close()
    h2 = await Harness(h.tmp, h.cfg).open()
    h2.clock.set(h.clock.now())
    await h2.contract()
    await h2.spot(97100.0)
    await h2.quote(0.50, 0.52)
    await h2.start()  # never fails because of one row
    return h2


async def polls(h: Harness, *at: float, bid: float = 0.50) -> None:
    """Ticks at T0 + each of `at` on fresh data (the journal is polled every 5 s)."""
    for dt in at:
        h.at(dt)
        await h.spot(97100.0)
        await h.quote(bid, bid + 0.02)
        await h.engine.tick()


def assert_bad_row_alerted_once(h: Harness, rowid: int, field: str, written: Any) -> None:
    alerts = row_alerts(h, rowid)
    assert len(alerts) == 1, [a.message for a in h.of_kind("data_quality")]
    a = alerts[0]
    assert a.data["field"] == field
    assert f"row {rowid} " in a.message and field in a.message
    assert repr(written) in a.message  # the trade_id as written
    assert "fix:" in a.message


@pytest.mark.parametrize("when", ["at_start", "while_running"])
@pytest.mark.parametrize("kind", list(BAD_KINDS))
async def test_a_bad_row_is_alerted_never_supervised_and_the_others_are_protected(
    tmp_path: Path, kind: str, when: str
) -> None:
    changes, field = BAD_KINDS[kind]
    path = tmp_path / "trades.db"
    old_journal(path)
    tid = changes.get("trade_id", f"bad-{kind}")
    cols = {**changes, "trade_id": tid}
    if when == "at_start":
        rowid = write_row(path, **cols)
        good = write_row(path, trade_id="ext-good", qty=3.0)
        h = await running(tmp_path)
    else:
        h = await running(tmp_path)
        await polls(h, 1)
        rowid = write_row(path, **cols)
        good = write_row(path, trade_id="ext-good", qty=3.0)
    before = read_row(path, rowid)
    await polls(h, 6, 12, 18)  # three journal polls: still one alert
    assert_bad_row_alerted_once(h, rowid, field, tid)
    assert set(h.engine.trades) == {"t1", "ext-good"}
    assert [b.rowid for b in h.engine.bad_rows] == [rowid]
    assert read_row(path, good) is not None

    # The others' rules still fire and close them; nothing is sent for the bad row.
    await polls(h, 20, 21, 27, bid=0.30)
    assert sorted(e["trade_id"] for e in h.exits) == ["ext-good", "t1"]
    assert sorted(r.qty for r in h.venue.submitted) == [3.0, 10.0]
    assert await h.venue.positions() == []
    t1, ext = await h.store.get_trade("t1"), await h.store.get_trade("ext-good")
    assert (t1.state, t1.closed_qty, ext.state, ext.closed_qty) == ("closed", 10.0, "closed", 3.0)
    assert h.of_kind("risk_limit") == []
    assert read_row(path, rowid) == before  # untouched, not deleted

    # A restart still works, alerts the row once more, and still leaves it alone.
    h2 = await restart(h)
    await polls(h2, 30, 36)
    assert_bad_row_alerted_once(h2, rowid, field, tid)
    assert h2.engine.trades == {}
    assert read_row(path, rowid) == before
    await h2.close()


async def test_an_empty_trade_id_never_reaches_the_venue_and_never_loops_start(
    tmp_path: Path,
) -> None:
    """The crash loop of issue 15: '' was supervised, its exit filled, the booking refused, and
    every later start failed ("trade '' cannot be journaled")."""
    path = tmp_path / "trades.db"
    old_journal(path)
    h = await running(tmp_path)
    await polls(h, 1)
    rowid = write_row(path, trade_id="", qty=4.0)
    await polls(h, 6)
    await polls(h, 8, 12, bid=0.30)
    assert [e["trade_id"] for e in h.exits] == ["t1"]
    assert [r.qty for r in h.venue.submitted] == [10.0]
    # A journal an older engine left mid-exit for the '' row (intent and order journaled).
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(
        "INSERT INTO exit_intents (intent_id, trade_id, rule, qty, created_ts, status)"
        " VALUES ('ix', '', 'max_loss', 4, ?, 'sent')",
        (T0 + 9,),
    )
    con.execute(
        "INSERT INTO orders (client_order_id, intent_id, trade_id, contract_id, side, action,"
        " qty, status, created_ts) VALUES ('ix', 'ix', '', ?, 'yes', 'sell', 4, 'pending', ?)",
        (CID, T0 + 9),
    )
    con.close()
    for _ in range(2):
        h = await restart(h)
        await polls(h, 20, 26)
        assert "" not in h.engine.trades and len(row_alerts(h, rowid)) == 1
        assert read_row(path, rowid) is not None
        assert h.venue.submitted == []
        assert (await h.store.get_intent("ix"))["status"] == "sent"  # left for a reconcile
    await h.close()


def journal_exit(path: Path, trade_id: str, qty: float) -> None:
    """An exit an older engine journaled (intent and order) and never saw answered."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(
        "INSERT INTO exit_intents (intent_id, trade_id, rule, qty, created_ts, status)"
        " VALUES ('ix', ?, 'max_loss', ?, ?, 'sent')",
        (trade_id, qty, T0 - 60),
    )
    con.execute(
        "INSERT INTO orders (client_order_id, intent_id, trade_id, contract_id, side, action,"
        " qty, status, created_ts) VALUES ('ix', 'ix', ?, ?, 'yes', 'sell', ?, 'pending', ?)",
        (trade_id, CID, qty, T0 - 60),
    )
    con.close()


async def test_a_row_fixed_while_running_with_an_exit_journaled_waits_for_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trades.db"
    old_journal(path)
    rowid = write_row(path, trade_id="bot-9", entry_price=7.5, qty=4.0)
    journal_exit(path, "bot-9", 4.0)
    h = await running(tmp_path)
    assert "bot-9" not in h.engine.trades and len(row_alerts(h, rowid)) == 1
    assert (await h.store.get_intent("ix"))["status"] == "sent"  # not cancelled unseen
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("UPDATE trades SET entry_price = 0.5 WHERE rowid = ?", (rowid,))
    con.close()
    await polls(h, 1, 7)
    assert "bot-9" not in h.engine.trades  # no second exit beside the journaled one
    (a,) = row_alerts(h, rowid)[1:]
    assert a.data["field"] == "exit_intents" and "restart" in a.message
    h = await restart(h)
    assert "bot-9" in h.engine.trades and "bot-9" in h.engine.exits  # the exit is resumed
    await polls(h, 10, 12)
    t = await h.store.get_trade("bot-9")
    assert (t.state, t.exit_reason, t.closed_qty) == ("closed", "max_loss", 4.0)
    assert [r.qty for r in h.venue.submitted] == [4.0]
    await h.close()


async def test_a_changed_bad_row_is_alerted_again_and_a_fixed_one_is_supervised(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trades.db"
    old_journal(path)
    h = await running(tmp_path)
    rowid = write_row(path, trade_id="bot-7", entry_price=7.5)
    await polls(h, 1, 7)
    assert len(row_alerts(h, rowid)) == 1
    assert "7.5" in row_alerts(h, rowid)[0].message
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("UPDATE trades SET entry_price = 8.5 WHERE rowid = ?", (rowid,))
    await polls(h, 13, 19)
    msgs = [a.message for a in row_alerts(h, rowid)]
    assert len(msgs) == 2 and "8.5" in msgs[1]
    con.execute("UPDATE trades SET entry_price = 0.5 WHERE rowid = ?", (rowid,))
    con.close()
    await polls(h, 25)
    assert "bot-7" in h.engine.trades
    assert any(a.trade_id == "bot-7" for a in h.of_kind("trade_detected"))
    await polls(h, 30, bid=0.30)
    assert sorted(e["trade_id"] for e in h.exits) == ["bot-7", "t1"]
    await h.close()


async def test_a_null_trade_id_does_not_break_the_trades_on_its_contract(tmp_path: Path) -> None:
    path = tmp_path / "trades.db"
    old_journal(path)
    rowid = write_row(path, trade_id=None)
    write_row(path, trade_id="ext-good", qty=3.0)
    h = await running(tmp_path)
    assert None not in h.engine.trades
    for dt in (2, 4, 6):  # quotes of the contract
        h.at(dt)
        await h.quote(0.49, 0.51)
    h.at(8)
    await h.quote(0.30, 0.32)
    assert sorted(e["trade_id"] for e in h.exits) == ["ext-good", "t1"]
    assert len(row_alerts(h, rowid)) == 1
    await h.close()


async def test_rows_another_process_writes_while_the_engine_runs(tmp_path: Path) -> None:
    """A separate program (its own process and SQLite connection, WAL beside the engine's)."""
    path = tmp_path / "trades.db"
    old_journal(path)
    h = await running(tmp_path)
    await polls(h, 1)
    script = (
        "import sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)\n"
        "ins = ('INSERT INTO trades (trade_id, contract_id, side, qty, entry_price, opened_ts,'\n"
        "       ' venue) VALUES (?, ?, ?, ?, ?, ?, ?)')\n"
        "for row in [('', sys.argv[2], 'yes', 4, 0.5, float(sys.argv[3]), 'sim'),\n"
        "            ('bot-1', sys.argv[2], 'yes', 1e15, 0.5, float(sys.argv[3]), 'sim'),\n"
        "            ('bot-2', sys.argv[2], 'yes', 2, 0.5, float(sys.argv[3]), 'sim')]:\n"
        "    print(con.execute(ins, row).lastrowid)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path), CID, str(T0)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    empty, huge, good = (int(x) for x in proc.stdout.split())
    await polls(h, 6, 12)
    assert set(h.engine.trades) == {"t1", "bot-2"}
    assert [row_alerts(h, r)[0].data["field"] for r in (empty, huge)] == ["trade_id", "qty"]
    await polls(h, 14, 18, bid=0.30)
    assert sorted(e["trade_id"] for e in h.exits) == ["bot-2", "t1"]
    assert h.of_kind("risk_limit") == []  # qty 1e15 never counted
    h = await restart(h)
    assert h.engine.trades == {} and read_row(path, good) is not None
    await h.close()


# --- new journals: SQLite itself refuses what it can check ---------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        "empty_id",
        "blank_id",
        "null_id",
        "blob_id",
        "empty_contract",
        "text_qty",
        "nan_qty",
        "huge_qty",
        "blob_price",
        "price_above_1",
        "negative_fees",
        "overrides_list",
        "ms_timestamp",
    ],
)
async def test_a_new_journal_refuses_what_sqlite_can_check(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "trades.db"
    s = Store(path)
    await s.open()
    await s.close()
    with pytest.raises(sqlite3.IntegrityError):
        write_row(path, **{"trade_id": f"x-{kind}", **BAD_KINDS[kind][0]})
    write_row(path, trade_id="fine")  # the documented insert still works


async def test_an_old_journal_with_good_rows_gets_the_checks_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trades.db"
    old_journal(path, keeper=False)
    ids = [write_row(path, trade_id=f"g{i}", qty=1.0 + i) for i in range(3)]
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("DELETE FROM trades WHERE trade_id = 'g0'")  # rowids with a gap
    con.execute(
        "INSERT INTO marks (trade_id, ts, mark, pnl, pnl_pct) VALUES ('g1', ?, 0.5, 0, 0)", (T0,)
    )
    before = con.execute("SELECT rowid, * FROM trades ORDER BY rowid").fetchall()
    con.close()
    s = Store(path)
    await s.open()
    assert [t.trade_id for t in await s.load_trades()] == ["g1", "g2"]
    assert len(await s.marks("g1")) == 1
    await s.close()
    con = sqlite3.connect(path, isolation_level=None)
    assert con.execute("SELECT rowid, * FROM trades ORDER BY rowid").fetchall() == before
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    con.close()
    assert ids[1:] == [r[0] for r in before]
    with pytest.raises(sqlite3.IntegrityError):
        write_row(path, trade_id="")


async def test_an_old_journal_with_a_bad_row_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "trades.db"
    old_journal(path, keeper=False)
    bad = write_row(path, trade_id="", qty="ten")
    con = sqlite3.connect(path, isolation_level=None)
    schema = con.execute("SELECT sql FROM sqlite_master WHERE name = 'trades'").fetchone()
    row = con.execute("SELECT * FROM trades WHERE rowid = ?", (bad,)).fetchone()
    con.close()
    s = Store(path)
    await s.open()
    assert await s.load_trades() == []
    assert [b.rowid for b in s.last_bad_rows] == [bad]
    await s.close()
    assert read_row(path, bad) == row
    con = sqlite3.connect(path, isolation_level=None)
    assert con.execute("SELECT sql FROM sqlite_master WHERE name = 'trades'").fetchone() == schema
    con.close()


# --- the command line ----------------------------------------------------------------------------


def test_trades_list_shows_a_bad_row_as_bad_instead_of_crashing(tmp_path: Path) -> None:
    from tests.test_cli import Cli

    cli = Cli(tmp_path)
    cli.write_config()
    cli.data.mkdir()
    path = cli.data / "trades.db"
    old_journal(path)  # row 1: an old closed row with a text qty
    write_row(path, trade_id="fine", qty=2.0)
    bad = {
        write_row(path, trade_id=None): ("None", "trade_id is NULL"),
        write_row(path, trade_id="p75", entry_price=7.5): (
            "p75",
            "entry_price 7.5 is outside 0..1",
        ),
        write_row(path, trade_id="q", qty="ten"): ("q", "qty is the text 'ten'"),
        write_row(path, trade_id="", qty=2.0): ("''", "trade_id is empty"),
        write_row(path, trade_id="elsewhere", venue="kalshi"): ("elsewhere", "venue 'kalshi'"),
    }
    for flags, closed_shown in (((), False), (("--all",), True)):
        proc = cli.run("--config", str(cli.config), "trades", "list", *flags)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert any(line.startswith("fine ") and " open " in line for line in lines)
        for rowid, (shown, problem) in bad.items():
            (line,) = [ln for ln in lines if f"(row {rowid};" in ln]
            assert line.startswith(shown) and "BAD: " in line and problem in line, line
            assert "fix: " in line
        assert any("(row 1;" in ln and "BAD: qty" in ln for ln in lines) == closed_shown
        assert f"{len(bad) + closed_shown} bad row(s)" in lines[-1]

    listed = json.loads(cli.ok("--config", str(cli.config), "trades", "list", "--json", "--all"))
    by_row = {t["rowid"]: t for t in listed if "bad" in t}
    assert set(by_row) == {1, *bad}
    assert by_row[min(bad)]["bad"]["field"] == "trade_id"
    assert [t["trade_id"] for t in listed if "bad" not in t] == ["fine"]

    status = cli.ok("--config", str(cli.config), "status")
    assert "open trades: 1" in status
    assert f"bad rows (not supervised): {len(bad)}" in status
    assert all(f"row {rowid}" in status for rowid in bad)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--id", "   "), "trade_id"),
        (("--price", "7.5"), "entry_price"),
        (("--qty", "1e15"), "qty"),
        (("--opened", "1764000000000"), "opened_ts"),
        (("--opened", "4102444800"), "opened_ts"),  # 2100
    ],
)
def test_trades_add_refuses_a_row_the_engine_would_refuse(
    tmp_path: Path, args: tuple[str, ...], field: str
) -> None:
    from tests.test_cli import Cli

    cli = Cli(tmp_path)
    cli.write_config()
    base = {"--id": "m1", "--contract": CID, "--side": "yes", "--qty": "10", "--price": "0.5"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [x for kv in base.items() for x in kv]
    proc = cli.run("--config", str(cli.config), "trades", "add", *argv)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert field in proc.stderr and "nothing was written" in proc.stderr
    listed = json.loads(cli.ok("--config", str(cli.config), "trades", "list", "--json", "--all"))
    assert listed == []


# --- the commands table --------------------------------------------------------------------------


def queue_command(path: Path, action: Any, trade_id: Any, payload: Any) -> int:
    con = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        cur = con.execute(
            "INSERT INTO commands (ts, action, trade_id, payload) VALUES (?, ?, ?, ?)",
            (T0, action, trade_id, payload),
        )
        return int(cur.lastrowid)
    finally:
        con.close()


BAD_COMMANDS = {
    "payload_list": ("journal_close", "t1", "[0.4]", "payload"),
    "payload_not_json": ("journal_close", "t1", "{price: 0.4", "payload"),
    "payload_text": ("set_overrides", "t1", '"max_loss_percent"', "payload"),
    "blob_action": (b"close", "t1", "{}", "action"),
    "unknown_action": ("sell_everything", None, "{}", "action"),
    "blob_trade_id": ("close", b"t1", "{}", "trade_id"),
}


@pytest.mark.parametrize("when", ["at_start", "while_running"])
@pytest.mark.parametrize("kind", list(BAD_COMMANDS))
async def test_a_bad_queued_command_is_alerted_and_changes_nothing(
    tmp_path: Path, kind: str, when: str
) -> None:
    action, tid, payload, field = BAD_COMMANDS[kind]
    path = tmp_path / "trades.db"
    h = await running(tmp_path)
    if when == "at_start":
        await h.close()
        cid = queue_command(path, action, tid, payload)
        h = await restart(h)  # never fails because of one command
    else:
        cid = queue_command(path, action, tid, payload)
    await polls(h, 1, 7, 13)
    alerts = [a for a in h.of_kind("data_quality") if a.data.get("command_id") == cid]
    assert len(alerts) == 1, [a.message for a in h.alerts]
    assert alerts[0].data["field"] == field and f"command {cid} " in alerts[0].message
    t1 = h.engine.trades["t1"]
    assert (t1.state, t1.paused, t1.overrides) == ("open", False, {})
    assert h.venue.submitted == []
    await polls(h, 20, bid=0.30)  # t1 is still protected
    assert [e["trade_id"] for e in h.exits] == ["t1"]
    await h.close()


async def test_a_queued_command_the_engine_refuses_is_alerted(tmp_path: Path) -> None:
    path = tmp_path / "trades.db"
    h = await running(tmp_path)
    cid = queue_command(path, "journal_close", "nope", '{"price": 0.4}')
    await polls(h, 1)
    (a,) = [a for a in h.alerts if a.data.get("command_id") == cid]
    assert "no open trade 'nope'" in a.message and a.severity == "warning"
    await h.close()


# --- the rules that need the engine: its venue, the contract -------------------------------------


def _row(**cols: Any) -> dict[str, Any]:
    row = {
        "row_id": 5,
        **GOOD,
        "trade_id": "r5",
        "strategy": "",
        "state": "open",
        "paused": 0,
        "peak_pnl": 0.0,
        "peak_pnl_pct": 0.0,
        "trough_pnl": 0.0,
        "trough_pnl_pct": 0.0,
        "closed_ts": None,
        "exit_price": None,
        "exit_reason": None,
        "realized_pnl": None,
        "closed_qty": 0.0,
        "source": "external",
        "updated_ts": None,
        "multiplier": 1.0,
    }
    row.update(cols)
    return row


OPTION = Contract("AAPL 20270115 150C", "AAPL", "option_call", 150.0, T0 + 86400 * 30)
BINARY = Contract(CID, "BTC-USD", "binary_above", 97000.0, T0 + 3600)


@pytest.mark.parametrize(
    ("cols", "venue", "contract", "field"),
    [
        ({"side": "yes", "contract_id": OPTION.id}, "ibkr", None, "side"),
        ({"side": "long", "contract_id": OPTION.id, "entry_price": 7.5}, "ibkr", None, None),
        ({"side": "yes", "contract_id": OPTION.id, "entry_price": 0.5}, "paper", OPTION, "side"),
        ({"side": "long"}, "paper", BINARY, "side"),
        ({"side": "long", "entry_price": 7.5}, "paper", None, None),  # contract not known yet
        ({"side": "short"}, "kalshi", None, "side"),
        ({"venue": "sim", "state": "closed"}, "kalshi", None, None),  # history of another venue
        ({"qty": 2.0, "fees": -0.1, "closed_qty": 1.0}, "sim", None, None),  # a venue's rebate
    ],
)
def test_the_rules_that_need_the_engine(
    cols: dict[str, Any], venue: str, contract: Contract | None, field: str | None
) -> None:
    ctx = RowContext(venue=venue, now=T0, contract={c.id: c for c in [contract] if c}.get)
    row = _row(**{"venue": venue, **cols})
    got = check_row(row, ctx)
    if field is None:
        assert isinstance(got, Trade), got
    else:
        assert isinstance(got, BadRow) and got.field == field and got.rowid == 5, got
