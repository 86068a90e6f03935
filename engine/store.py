"""The trade journal: one SQLite file (WAL mode) written through a single aiosqlite connection.

Money safety rests on this module:

* Every write is committed before its coroutine returns (the connection is in autocommit mode;
  multi-statement writes run in one explicit transaction). The engine relies on "written to the
  journal before the order is sent".
* One engine per journal: a writable `Store.open()` takes an exclusive, non-blocking `flock` on
  `<db path>.lock` and raises `StoreLocked` if another process holds it. `Store.open(readonly=True)`
  takes no lock and never writes (for `status` / `trades list` while an engine runs).
* The schema is versioned with `PRAGMA user_version`; migration N runs in one transaction. A file
  that is not SQLite, not ours, or newer than this code is refused with a `StoreError` that says
  what to do. Nothing here ever deletes or overwrites user data.
* A trade row another program wrote badly (blank id, NaN, a price outside its range, bad overrides:
  the rules are engine/trade_rows.py) is skipped when loading, never changed, and described in
  `last_bad_rows` so the engine can raise an alert naming the row. Journals get CHECK constraints
  on the trades table where that is safe (`_ensure_trade_checks`).

Units follow engine.models: prices in dollars per contract, quantities in contracts, timestamps in
Unix seconds (float, UTC). JSON columns (`overrides`, `context`, `data`, `value`) hold UTF-8 JSON
text; NaN/inf in data columns are written as null so a bad number never breaks a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from engine import private_files, trade_rows
from engine.models import Trade, TradeState
from engine.trade_rows import BadRow, RowContext

log = logging.getLogger(__name__)

__all__ = [
    "APPLICATION_ID",
    "INTENT_STATUSES",
    "JOURNAL_FILENAME",
    "MIGRATIONS",
    "ORDER_STATUSES",
    "SCHEMA_VERSION",
    "JournalUnwritable",
    "Store",
    "StoreError",
    "StoreLocked",
]

log = logging.getLogger(__name__)

JOURNAL_FILENAME = "trades.db"  # the journal's name inside the configured data_dir
SIDE_FILES = ("-wal", "-shm", ".lock")  # SQLite's files beside it, and the engine's lock
SQLITE_MAGIC = b"SQLite format 3\x00"
APPLICATION_ID = 0x54535550  # "TSUP": marks a SQLite file as a trade-supervisor journal
BUSY_TIMEOUT_MS = 5000
EXIT_WRITER_BUSY_MS = 250  # the exit writer blocks the engine loop while it waits
# A journal whose heartbeat (written every 2 s by a running engine) is younger than this, from a
# live process, has an engine, lock file or not: a second engine refuses to open it.
LIVE_HEARTBEAT_SECONDS = 30.0

SIDES = ("yes", "no", "long", "short")
TRADE_STATES = tuple(s.value for s in TradeState)
INTENT_STATUSES = ("pending", "sent", "filled", "failed", "cancelled")
ORDER_STATUSES = ("pending", "filled", "partial", "unfilled", "rejected", "unknown")


class StoreError(Exception):
    """The journal cannot be opened or written; the message says which file and what to do."""


class StoreLocked(StoreError):
    """Another process (another engine) holds the journal's lock."""


class JournalUnwritable(StoreError):
    """The disk under the journal refused a write: full, read-only, or an I/O error. Nothing
    more can be journaled, so nothing more may be sent: the engine stops on it."""


# SQLite's primary result codes for "the disk refused": SQLITE_READONLY, SQLITE_IOERR,
# SQLITE_FULL, SQLITE_CANTOPEN (the -wal/-shm file cannot be created).
_DISK_CODES = {8: "read-only", 10: "I/O error", 13: "full", 14: "cannot create files"}
_DISK_TEXT = (
    ("disk is full", "full"),
    ("readonly database", "read-only"),
    ("read-only", "read-only"),
    ("disk i/o error", "I/O error"),
    ("unable to open database file", "cannot create files"),
)


def disk_problem(e: BaseException) -> str | None:
    """'full', 'read-only', 'I/O error' or 'cannot create files' when `e` is the disk refusing
    (SQLite or the OS), else None."""
    if isinstance(e, OSError):
        return {
            errno.ENOSPC: "full",
            errno.EDQUOT: "full",
            errno.EROFS: "read-only",
            errno.EACCES: "read-only",
            errno.EPERM: "read-only",
            errno.EIO: "I/O error",
        }.get(e.errno or 0)
    if not isinstance(e, sqlite3.Error):
        return None
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _DISK_CODES:
        return _DISK_CODES[code & 0xFF]
    text = str(e).lower()
    return next((what for needle, what in _DISK_TEXT if needle in text), None)


def free_space(path: Path) -> str:
    """'12.3 MB free on /dir' for the nearest existing directory of `path`."""
    d = Path(path)
    while not d.exists() and d != d.parent:
        d = d.parent
    if d.is_file():
        d = d.parent
    try:
        free = shutil.disk_usage(d).free
    except OSError as e:
        return f"free space on {d} unknown ({e.strerror or e})"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            break
        free /= 1024
    shown = f"{free:.0f} bytes" if unit == "bytes" else f"{free:.1f} {unit}"
    return f"{shown} free on {d}"


def disk_message(path: Path, what: str, e: BaseException) -> str:
    """What to tell the trader when the disk under the journal refused (`what`: disk_problem)."""
    fix = {
        "full": "free some space on that disk",
        "read-only": "make the directory writable (or remount the disk read-write)",
        "I/O error": "make room on that disk and check it is healthy (df -h, dmesg)",
        "cannot create files": "make the directory writable and free some space",
    }[what]
    label = {
        "full": "the disk is full",
        "read-only": "the disk or directory is read-only",
        "I/O error": "the disk refused the write (I/O error: full, over a size limit, or failing)",
    }.get(what, f"the disk reports: {what}")
    return (
        f"cannot write the journal {path}: {label} ({e}; {free_space(path)}). "
        f"Keep the journal: it holds the open trades. Fix: {fix}, then start again"
    )


# --- schema ----------------------------------------------------------------------------------
# MIGRATIONS[i] takes the schema from version i to version i + 1. Append only; never edit a
# migration that has shipped. Each runs inside one transaction together with its user_version bump.

_V1 = f"""
PRAGMA application_id = {APPLICATION_ID};

CREATE TABLE trades (
    trade_id        TEXT PRIMARY KEY,
    contract_id     TEXT NOT NULL,
    side            TEXT NOT NULL CHECK (side IN ('yes','no','long','short')),
    qty             REAL NOT NULL CHECK (qty > 0),
    entry_price     REAL NOT NULL CHECK (entry_price >= 0),
    opened_ts       REAL NOT NULL,
    strategy        TEXT NOT NULL DEFAULT '',
    venue           TEXT NOT NULL DEFAULT 'sim',
    overrides       TEXT NOT NULL DEFAULT '{{}}',
    state           TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open','closing','closed')),
    paused          INTEGER NOT NULL DEFAULT 0,
    fees            REAL NOT NULL DEFAULT 0,
    peak_pnl        REAL NOT NULL DEFAULT 0,
    peak_pnl_pct    REAL NOT NULL DEFAULT 0,
    trough_pnl      REAL NOT NULL DEFAULT 0,
    trough_pnl_pct  REAL NOT NULL DEFAULT 0,
    closed_ts       REAL,
    exit_price      REAL,
    exit_reason     TEXT,
    realized_pnl    REAL,
    closed_qty      REAL NOT NULL DEFAULT 0,
    source          TEXT NOT NULL DEFAULT 'external',
    updated_ts      REAL
);
CREATE INDEX trades_state ON trades (state);
CREATE INDEX trades_opened ON trades (opened_ts);

CREATE TABLE marks (
    trade_id  TEXT NOT NULL REFERENCES trades (trade_id),
    ts        REAL NOT NULL,
    mark      REAL,
    pnl       REAL,
    pnl_pct   REAL
);
CREATE INDEX marks_trade_ts ON marks (trade_id, ts);

CREATE TABLE exit_intents (
    intent_id   TEXT PRIMARY KEY,
    trade_id    TEXT NOT NULL REFERENCES trades (trade_id),
    rule        TEXT NOT NULL,
    qty         REAL NOT NULL,
    created_ts  REAL NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending','sent','filled','failed','cancelled')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    context     TEXT NOT NULL DEFAULT '{{}}',
    updated_ts  REAL
);
CREATE INDEX exit_intents_status ON exit_intents (status);
CREATE INDEX exit_intents_trade ON exit_intents (trade_id);

CREATE TABLE orders (
    client_order_id  TEXT PRIMARY KEY,
    intent_id        TEXT REFERENCES exit_intents (intent_id),
    trade_id         TEXT NOT NULL REFERENCES trades (trade_id),
    contract_id      TEXT NOT NULL,
    side             TEXT NOT NULL,
    action           TEXT NOT NULL,
    qty              REAL NOT NULL,
    limit_price      REAL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN
                         ('pending','filled','partial','unfilled','rejected','unknown')),
    venue_order_id   TEXT,
    filled_qty       REAL NOT NULL DEFAULT 0,
    avg_price        REAL,
    fees             REAL NOT NULL DEFAULT 0,
    reason           TEXT,
    created_ts       REAL NOT NULL,
    updated_ts       REAL
);
CREATE INDEX orders_intent ON orders (intent_id);
CREATE INDEX orders_trade ON orders (trade_id);

CREATE TABLE fills (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id  TEXT,
    trade_id         TEXT NOT NULL REFERENCES trades (trade_id),
    qty              REAL NOT NULL,
    price            REAL NOT NULL,
    fees             REAL NOT NULL DEFAULT 0,
    ts               REAL NOT NULL
);
CREATE INDEX fills_trade ON fills (trade_id);
CREATE INDEX fills_order ON fills (client_order_id);

CREATE TABLE alerts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        REAL NOT NULL,
    kind      TEXT NOT NULL,
    severity  TEXT NOT NULL,
    trade_id  TEXT,
    message   TEXT NOT NULL,
    data      TEXT NOT NULL DEFAULT '{{}}'
);

CREATE TABLE audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        REAL NOT NULL,
    trade_id  TEXT,
    event     TEXT NOT NULL,
    data      TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX audit_trade ON audit (trade_id);

CREATE TABLE state (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_ts  REAL
);

CREATE TABLE commands (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL NOT NULL,
    action      TEXT NOT NULL,
    trade_id    TEXT,
    payload     TEXT NOT NULL DEFAULT '{{}}',
    taken_ts    REAL
);
"""

# v2: the contract's multiplier on each trade, so a fill booked while the contract is not known
# (after a restart, an exit that filled while the engine was down) has the right P&L.
_V2 = """
ALTER TABLE trades ADD COLUMN multiplier REAL NOT NULL DEFAULT 1.0;
"""

# v3: settlement values of contracts (YES terms for binaries), kept after the engine forgets a
# settled contract, so trade analytics can price a trade closed earlier "as if held".
_V3 = """
CREATE TABLE settlements (
    contract_id  TEXT PRIMARY KEY,
    value        REAL NOT NULL,
    ts           REAL NOT NULL
);
"""

# v4: the spot history (issue 19), so momentum, volatility and the regime come back at once after
# a restart: the recent ticks at full resolution and one close a minute before them, bounded by
# the engine (`Store.add_spot_samples`).
_V4 = """
CREATE TABLE spot_history (
    symbol  TEXT NOT NULL,
    ts      REAL NOT NULL,
    price   REAL NOT NULL CHECK (price > 0),
    PRIMARY KEY (symbol, ts)
) WITHOUT ROWID;
"""

MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4]
SCHEMA_VERSION = len(MIGRATIONS)

# The trades table with CHECK constraints for what SQLite can check of a good row (the rest is
# engine/trade_rows.py, docs/trades-schema.md). Same columns, order and defaults as v1 + v2, so
# it is no schema version of its own: `_ensure_trade_checks` swaps it in, rowids kept, when every
# row passes (always for a new journal); a journal with a row that fails keeps its table as it
# is (the row is left untouched and refused in code) and is tried again at the next start.
_NUM = "typeof({0}) IN ('real', 'integer')"
TRADES_CHECKED_DDL = f"""
CREATE TABLE {{name}} (
    trade_id        TEXT PRIMARY KEY NOT NULL
                    CHECK (typeof(trade_id) = 'text' AND length(trim(trade_id)) > 0),
    contract_id     TEXT NOT NULL
                    CHECK (typeof(contract_id) = 'text' AND length(trim(contract_id)) > 0),
    side            TEXT NOT NULL CHECK (side IN ('yes','no','long','short')),
    qty             REAL NOT NULL CHECK ({_NUM.format("qty")} AND qty > 0 AND qty <= 1e7),
    entry_price     REAL NOT NULL
                    CHECK ({_NUM.format("entry_price")} AND entry_price >= 0 AND entry_price <= 1e7),
    opened_ts       REAL NOT NULL
                    CHECK ({_NUM.format("opened_ts")} AND opened_ts > 0 AND opened_ts < 1e11),
    strategy        TEXT NOT NULL DEFAULT '' CHECK (typeof(strategy) = 'text'),
    venue           TEXT NOT NULL DEFAULT 'sim'
                    CHECK (typeof(venue) = 'text' AND length(trim(venue)) > 0),
    overrides       TEXT NOT NULL DEFAULT '{{{{}}}}'
                    CHECK (typeof(overrides) = 'text' AND substr(ltrim(overrides), 1, 1) = '{{{{'),
    state           TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open','closing','closed')),
    paused          INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    fees            REAL NOT NULL DEFAULT 0 CHECK ({_NUM.format("fees")}),
    peak_pnl        REAL NOT NULL DEFAULT 0 CHECK ({_NUM.format("peak_pnl")}),
    peak_pnl_pct    REAL NOT NULL DEFAULT 0 CHECK ({_NUM.format("peak_pnl_pct")}),
    trough_pnl      REAL NOT NULL DEFAULT 0 CHECK ({_NUM.format("trough_pnl")}),
    trough_pnl_pct  REAL NOT NULL DEFAULT 0 CHECK ({_NUM.format("trough_pnl_pct")}),
    closed_ts       REAL CHECK (closed_ts IS NULL OR {_NUM.format("closed_ts")}),
    exit_price      REAL CHECK (exit_price IS NULL OR {_NUM.format("exit_price")}),
    exit_reason     TEXT,
    realized_pnl    REAL CHECK (realized_pnl IS NULL OR {_NUM.format("realized_pnl")}),
    closed_qty      REAL NOT NULL DEFAULT 0 CHECK ({_NUM.format("closed_qty")} AND closed_qty >= 0),
    source          TEXT NOT NULL DEFAULT 'external',
    updated_ts      REAL,
    multiplier      REAL NOT NULL DEFAULT 1.0 CHECK ({_NUM.format("multiplier")} AND multiplier > 0),
    -- a binary (YES/NO) is priced 0..1 dollars
    CHECK (side IN ('long', 'short') OR entry_price <= 1),
    -- the opening fees another program writes are >= 0; once the supervisor has closed part of
    -- the trade they include the exit's, which a venue may report as a rebate
    CHECK (fees >= 0 OR closed_qty > 0)
)
"""
_TRADES_CHECKED_MARK = "length(trim(trade_id))"  # in the checked table's SQL, not in v1's
_TRADES_ALL_COLS = (
    "trade_id, contract_id, side, qty, entry_price, opened_ts, strategy, venue, overrides, state,"
    " paused, fees, peak_pnl, peak_pnl_pct, trough_pnl, trough_pnl_pct, closed_ts, exit_price,"
    " exit_reason, realized_pnl, closed_qty, source, updated_ts, multiplier"
)


# --- JSON helpers ----------------------------------------------------------------------------


def _clean(v: Any) -> Any:
    """`v` made JSON-safe: NaN/inf become None, mapping keys become strings, tuples/sets lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_clean(x) for x in v]
    return v


def _dumps(v: Any) -> str:
    """JSON for a data column. Never raises on a bad number or an odd type (falls back to str)."""
    return json.dumps(_clean(v), allow_nan=False, default=str, separators=(",", ":"))


def _loads(s: Any, default: Any = None) -> Any:
    """Parse a JSON column; a corrupt value reads as `default` rather than breaking a read."""
    if s is None:
        return default
    try:
        return json.loads(s)
    except (TypeError, ValueError):
        return default


@contextlib.asynccontextmanager
async def _transaction(db: aiosqlite.Connection, begin: str) -> AsyncIterator[None]:
    """BEGIN … COMMIT that rolls back on any exception, cancellation included: a transaction
    left open would make every later write on the shared connection fail."""
    try:
        # BEGIN inside the try: a cancellation while awaiting it must roll back too, since the
        # statement still runs on aiosqlite's thread.
        await db.execute(begin)
        yield
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # "no transaction is active" after a COMMIT
            await asyncio.shield(db.execute("ROLLBACK"))
        raise


def _commit_all(conn: sqlite3.Connection, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """BEGIN IMMEDIATE, the statements, COMMIT on a plain sqlite3 connection; rolled back on any
    error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (an engine that died but was not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): it exists
    return state != b"Z"


def _num_ok(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# --- trade rows ------------------------------------------------------------------------------

_TRADE_COLS = (
    "trade_id, contract_id, side, qty, entry_price, opened_ts, strategy, venue, overrides, state,"
    " paused, fees, peak_pnl, peak_pnl_pct, trough_pnl, trough_pnl_pct, closed_ts, exit_price,"
    " exit_reason, realized_pnl, closed_qty, multiplier"
)

_INSERT_TRADE = f"""
INSERT INTO trades ({_TRADE_COLS}, source, updated_ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (trade_id) DO NOTHING
"""

_UPDATE_TRADE = """
UPDATE trades SET contract_id = ?, side = ?, qty = ?, entry_price = ?, opened_ts = ?,
    strategy = ?, venue = ?, overrides = ?, state = ?, paused = ?, fees = ?, peak_pnl = ?,
    peak_pnl_pct = ?, trough_pnl = ?, trough_pnl_pct = ?, closed_ts = ?, exit_price = ?,
    exit_reason = ?, realized_pnl = ?, closed_qty = ?, multiplier = ?, updated_ts = ?
WHERE trade_id = ?
"""

# The rules for a good row live in engine/trade_rows.py (docs/trades-schema.md); the store uses
# the same ones before it writes a trade, so it never writes one it would refuse to load back.
_trade_problem = trade_rows.trade_problem
_overrides_problem = trade_rows.overrides_problem


def _trade_params(t: Trade) -> tuple[Any, ...]:
    return (
        t.contract_id,
        t.side,
        float(t.qty),
        float(t.entry_price),
        float(t.opened_ts),
        t.strategy or "",
        t.venue or "sim",
        json.dumps(t.overrides, allow_nan=False, sort_keys=True),
        str(t.state),
        1 if t.paused else 0,
        float(t.fees),
        float(t.peak_pnl),
        float(t.peak_pnl_pct),
        float(t.trough_pnl),
        float(t.trough_pnl_pct),
        t.closed_ts,
        t.exit_price,
        t.exit_reason,
        t.realized_pnl,
        float(t.closed_qty),
        float(t.multiplier),
    )


def _lock_holder(fd: int) -> str:
    """The pid a lock file's holder wrote into it, or "unknown"."""
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _disk_or(e: BaseException, path: Path, message: str) -> StoreError:
    """The error for a failure opening the journal: the disk's own message when the disk
    refused (full, read-only, I/O error; never "move it aside", which would make the next
    engine forget the open trades), else `message`."""
    what = disk_problem(e)
    return StoreError(message) if what is None else JournalUnwritable(disk_message(path, what, e))


# --- the store -------------------------------------------------------------------------------


class Store:
    """The journal. Call `await open()` first (or use `async with Store(path) as s`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.readonly = False
        self.tightened: list[Path] = []  # files of the journal made private at open (0600)
        self.last_load_problems: list[str] = []
        self.last_bad_rows: list[BadRow] = []  # rows the last load skipped (engine.trade_rows)
        # Called (once per failure) when the disk refuses a write; the engine stops on it.
        self.on_unwritable: Callable[[JournalUnwritable], None] | None = None
        self.unwritable: JournalUnwritable | None = None  # the first such failure
        self._db: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None
        self._fast: sqlite3.Connection | None = None  # the exit writer (_open_exit_writer)
        # Serialises writes so a multi-statement transaction never swallows another coroutine's
        # single write (one connection is shared by every coroutine).
        self._wlock = asyncio.Lock()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    # --- open / close ----------------------------------------------------------------------

    async def open(self, readonly: bool = False, lock: bool = True) -> None:
        """Open (and if writable, create and migrate) the journal.

        `lock=False` opens for writing without taking the one-engine lock: for the CLI's small
        writes (inserting a trade, queueing a command) next to a running engine, as any other
        program inserting trades would. Only the engine takes the lock.

        Raises StoreLocked if another engine holds the journal, and StoreError if the file is
        not a SQLite database, is another application's database, or has a newer schema.
        """
        if self._db is not None:
            raise StoreError(f"journal {self.path} is already open")
        self.readonly = readonly
        self.unwritable = None
        if not readonly:
            try:
                private_files.make_dir(self.path.parent)
            except OSError as e:
                msg = f"cannot create the journal directory {self.path.parent}: {e}"
                raise _disk_or(e, self.path, msg) from e
            if lock:
                self._acquire_lock()
        try:
            self._check_file()
            if not readonly:
                self._make_private()
            version = await self._connect()
            if lock and not readonly and version > 0:
                await self._refuse_live_engine()
            await self._migrate(version)
            if not readonly:
                self._fast = self._open_exit_writer()
        except BaseException:
            await self._close_quietly()
            raise

    def _open_exit_writer(self) -> sqlite3.Connection:
        """A second, plain sqlite3 connection for the exit path (`begin_exit`), used on the
        thread that opened the store (the engine's).

        Every write through aiosqlite is two hand-offs: to its thread and back. On a busy
        machine each can wait for a CPU for a few ms (measured: 2-4 ms with the screen
        rendering beside the engine). The exit's journal write, which must finish before the
        order is sent, is done here directly instead: ~0.2 ms, no other thread involved. It
        takes the store's write lock like every other write, so it never meets an open
        transaction of the main connection; other programs' writes (the CLI) make it wait at
        most EXIT_WRITER_BUSY_MS.
        """
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=EXIT_WRITER_BUSY_MS / 1000
            )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # per connection: see _connect
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the journal {self.path} for exits: {e}") from e
        return conn

    async def close(self) -> None:
        """Close the connection (committed data is already on disk) and release the lock."""
        db, self._db = self._db, None
        fast, self._fast = self._fast, None
        try:
            if fast is not None:
                fast.close()
            if db is not None:
                await db.close()
        finally:
            self._release_lock()

    def _acquire_lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, private_files.FILE_MODE)
        except OSError as e:
            msg = f"cannot create the lock file {self.lock_path}: {e}"
            raise _disk_or(e, self.path, msg) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise StoreLocked(
                f"another trade-supervisor (pid {holder}) is using {self.path}; "
                "stop it or use another data_dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is informational; the flock is what protects the journal
        self._lock_fd = fd

    async def _refuse_live_engine(self) -> None:
        """StoreLocked when the journal's own heartbeat says a live engine runs on it: its lock
        file was deleted (or replaced), so the lock alone cannot tell."""
        assert self._db is not None
        try:
            rows = list(
                await self._db.execute_fetchall("SELECT value FROM state WHERE key = 'heartbeat'")
            )
        except sqlite3.Error:
            return  # no state table: no engine ever ran on it
        hb = _loads(rows[0][0]) if rows else None
        if not isinstance(hb, dict):
            return
        pid, wall = hb.get("pid"), hb.get("wall_ts")
        if not isinstance(pid, int) or pid <= 0 or pid == os.getpid() or not _num_ok(wall):
            return
        age = time.time() - wall
        if abs(age) >= LIVE_HEARTBEAT_SECONDS or not _pid_alive(pid):
            return
        raise StoreLocked(
            f"another trade-supervisor (pid {pid}) is using {self.path}: its heartbeat in the "
            f"journal is {max(age, 0):.0f}s old, though the lock file {self.lock_path.name} was "
            f"deleted or replaced; stop it first (kill {pid}) or use another data_dir"
        )

    def check_lock(self) -> str | None:
        """Is the lock file at `lock_path` still the one this store holds? None if so (or no
        lock is held). If it was deleted or replaced, it is taken again at the path and
        'deleted' / 'replaced' is returned; StoreLocked if another process holds the new one
        (a second engine started meanwhile), StoreError if it cannot be re-created."""
        fd = self._lock_fd
        if fd is None:
            return None
        try:
            mine = os.fstat(fd)
            st = os.stat(self.lock_path)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return None
            what = "replaced"
        except FileNotFoundError:
            what = "deleted"
        except OSError:
            return None  # cannot look: the next check tries again
        try:
            new = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, private_files.FILE_MODE)
        except OSError as e:
            raise StoreError(
                f"the lock file {self.lock_path} was {what} and cannot be re-created: {e}"
            ) from e
        try:
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(new)
            os.close(new)
            raise StoreLocked(
                f"the lock file {self.lock_path} was {what}, and another process (pid {holder}) "
                f"holds the new one: two engines on {self.path}"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(new, 0)
            os.pwrite(new, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = new
        os.close(fd)  # the old, unlinked file's lock goes with it
        return what

    def engine_pid(self) -> int | None:
        """The pid of the engine holding this journal's lock, or None when no engine runs."""
        if not self.lock_path.exists():
            return None
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            # Keep the lock file: deleting it would let two processes lock different inodes.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _make_private(self) -> None:
        """The journal is created 0600 (SQLite gives its -wal and -shm files the same mode); an
        existing one, and its lock, readable by others are tightened (`tightened` lists them)."""
        if not self.path.exists():
            try:
                private_files.create(self.path)
            except OSError as e:
                raise _disk_or(e, self.path, f"cannot create the journal {self.path}: {e}") from e
        for p in (self.path, *(self.path.with_name(self.path.name + s) for s in SIDE_FILES)):
            if private_files.tighten(p):
                self.tightened.append(p)
                log.warning("%s was readable by other users: made private (0600)", p)

    def _check_file(self) -> None:
        p = self.path
        if not p.exists():
            if self.readonly:
                raise StoreError(
                    f"no journal at {p}; start the supervisor once to create it (or check data_dir)"
                )
            return
        if not p.is_file():
            raise StoreError(f"{p} is not a regular file; move it aside or use another data_dir")
        try:
            with p.open("rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise StoreError(f"cannot read the journal {p}: {e}") from e
        if head and head != SQLITE_MAGIC:
            raise StoreError(
                f"{p} is not a SQLite database (not a trade-supervisor journal); "
                "it was left untouched: move it aside or use another data_dir"
            )

    async def _connect(self) -> int:
        """Connect, check the file is our journal, set the pragmas; returns its user_version."""
        p = self.path
        try:
            if self.readonly:
                uri = f"{p.resolve().as_uri()}?mode=ro"
                db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            else:
                db = await aiosqlite.connect(str(p), isolation_level=None)
        except sqlite3.Error as e:
            raise _disk_or(e, p, f"cannot open the journal {p}: {e}") from e
        self._db = db
        db.row_factory = sqlite3.Row
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Identify the file before anything can write to it (even journal_mode changes the
            # header): a corrupt, foreign or newer database is refused untouched.
            version = await self._identify()
            if self.readonly:
                await db.execute("PRAGMA query_only = ON")
            else:
                mode = await self._pragma("journal_mode = WAL")
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot switch the journal {p} to WAL mode (got {mode!r})")
                await db.execute("PRAGMA synchronous = NORMAL")
                # Checkpoints sync to disk (4-6 ms); automatic ones land inside whichever commit
                # crosses the threshold — often an exit's. The engine checkpoints from its tick
                # instead (`checkpoint()`), off the exit path.
                await db.execute("PRAGMA wal_autocheckpoint = 0")
            await db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise _disk_or(
                e,
                p,
                f"{p} is not a usable SQLite database ({e}); it was left untouched. It may "
                "hold open trades: keep a copy, try `sqlite3 FILE .recover`, and only then "
                "move it aside or use another data_dir",
            ) from e
        return version

    async def _pragma(self, expr: str) -> Any:
        assert self._db is not None
        rows = list(await self._db.execute_fetchall(f"PRAGMA {expr}"))  # one hand-off
        return rows[0][0] if rows else None

    async def _identify(self) -> int:
        """The journal's schema version; StoreError if the file is not a journal we can use."""
        p = self.path
        db = self._db
        assert db is not None
        try:
            version = int(await self._pragma("user_version"))
            app_id = int(await self._pragma("application_id"))
            objects = [
                r[0]
                for r in await db.execute_fetchall(
                    "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
        except sqlite3.DatabaseError as e:
            raise _disk_or(
                e,
                p,
                f"{p} is not a usable SQLite database ({e}); it was left untouched. It may "
                "hold open trades: keep a copy, try `sqlite3 FILE .recover`, and only then "
                "move it aside or use another data_dir",
            ) from e
        if app_id not in (0, APPLICATION_ID) or (version == 0 and objects):
            shown = ", ".join(objects[:8]) + (", ..." if len(objects) > 8 else "")
            raise StoreError(
                f"{p} is a SQLite database of another application (tables: {shown or 'none'}); "
                "it was left untouched: move it aside or use another data_dir"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the journal {p} has schema version {version}, but this trade-supervisor only "
                f"knows versions up to {SCHEMA_VERSION}: upgrade the app (the journal was left "
                "untouched)"
            )
        return version

    async def _migrate(self, version: int) -> None:
        """Apply migrations version+1 .. SCHEMA_VERSION, each in its own transaction."""
        p = self.path
        db = self._db
        assert db is not None
        if version == SCHEMA_VERSION:
            if self._lock_fd is not None:
                await self._ensure_trade_checks()
            return
        if self.readonly:
            raise StoreError(
                f"the journal {p} has schema version {version}, this app needs "
                f"{SCHEMA_VERSION}: start the supervisor once (not read-only) to upgrade it"
            )
        for n in range(version + 1, SCHEMA_VERSION + 1):
            script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[n - 1]}\nPRAGMA user_version = {n};\nCOMMIT;"
            try:
                await db.executescript(script)
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise _disk_or(
                    e,
                    p,
                    f"migrating the journal {p} to schema version {n} failed ({e}); "
                    "nothing was changed by this step",
                ) from e
        if self._lock_fd is not None:  # the engine's own open (never the CLI's beside it)
            await self._ensure_trade_checks()

    async def _ensure_trade_checks(self) -> None:
        """Give the trades table its CHECK constraints (TRADES_CHECKED_DDL) if it lacks them and
        every row passes them: one transaction that copies every row (rowids kept) into the
        checked table and swaps it in, or changes nothing. A journal with a row that fails a
        check keeps its table (validation in code covers it: engine.trade_rows); tried again at
        the next start. Foreign keys are off meanwhile (they cannot change inside a
        transaction): no trade_id changes, so nothing that refers to a trade is affected."""
        db = self._db
        assert db is not None
        rows = await db.execute_fetchall(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'trades'"
        )
        if not rows or _TRADES_CHECKED_MARK in (rows[0][0] or ""):
            return
        await db.execute("PRAGMA foreign_keys = OFF")
        try:
            async with _transaction(db, "BEGIN IMMEDIATE"):
                before = (await db.execute_fetchall("SELECT count(*) FROM trades"))[0][0]
                await db.execute(TRADES_CHECKED_DDL.format(name="trades_checked"))
                await db.execute(
                    f"INSERT INTO trades_checked (rowid, {_TRADES_ALL_COLS})"
                    f" SELECT rowid, {_TRADES_ALL_COLS} FROM trades"
                )
                after = (await db.execute_fetchall("SELECT count(*) FROM trades_checked"))[0][0]
                if after != before:
                    raise sqlite3.IntegrityError(f"copied {after} of {before} rows")
                await db.execute("DROP TABLE trades")
                await db.execute("ALTER TABLE trades_checked RENAME TO trades")
                await db.execute("CREATE INDEX trades_state ON trades (state)")
                await db.execute("CREATE INDEX trades_opened ON trades (opened_ts)")
        except sqlite3.IntegrityError as e:
            # A row fails a check: the table stays as it was (rolled back), the row untouched.
            log.info(
                "journal %s keeps its trades table without CHECK constraints: %s", self.path, e
            )
        except sqlite3.Error as e:
            log.warning("journal %s: adding CHECK constraints to trades failed: %s", self.path, e)
        finally:
            await db.execute("PRAGMA foreign_keys = ON")

    async def _close_quietly(self) -> None:
        db, self._db = self._db, None
        fast, self._fast = self._fast, None
        if fast is not None:
            with contextlib.suppress(Exception):
                fast.close()
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()
        self._release_lock()

    # --- low-level helpers -----------------------------------------------------------------

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"the journal {self.path} is not open")
        return self._db

    def _wconn(self) -> aiosqlite.Connection:
        db = self._conn()
        if self.readonly:
            raise StoreError(f"the journal {self.path} was opened read-only")
        return db

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement (committed on return); returns the number of rows changed."""
        db = self._wconn()
        async with self._wlock:
            try:
                async with db.execute(sql, params) as cur:
                    return cur.rowcount
            except sqlite3.IntegrityError as e:
                raise StoreError(f"journal write refused: {e}") from e
            except sqlite3.Error as e:
                raise self._write_failed(e) from e

    def _write_failed(self, e: sqlite3.Error, message: str | None = None) -> StoreError:
        """The error to raise for a failed write. A disk that refuses (full, read-only, I/O)
        is a `JournalUnwritable`, reported once to `on_unwritable` (the engine stops on it)."""
        what = disk_problem(e)
        if what is None:
            return StoreError(message or f"journal write to {self.path} failed: {e}")
        err = JournalUnwritable(disk_message(self.path, what, e))
        if self.unwritable is None:
            self.unwritable = err
            if self.on_unwritable is not None:
                try:
                    self.on_unwritable(err)
                except Exception:  # the caller still gets the error
                    log.exception("on_unwritable failed")
        return err

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """All rows of one read, stepped to the end in ONE hand-off to aiosqlite's thread.

        `execute` then `fetchall` would be two: between them the SELECT stays open, holding a
        read snapshot on the shared connection, and a write queued meanwhile (book_result's
        BEGIN IMMEDIATE) after the exit writer's (or another program's) commit cannot upgrade
        that stale snapshot: SQLITE_BUSY_SNAPSHOT, "database is locked" at once, no busy wait.
        """
        db = self._conn()
        try:
            return list(await db.execute_fetchall(sql, params))
        except sqlite3.Error as e:
            raise StoreError(f"journal read from {self.path} failed: {e}") from e

    async def _require_trade(self, trade_id: str) -> None:
        rows = await self._fetchall("SELECT 1 FROM trades WHERE trade_id = ?", (trade_id,))
        if not rows:
            raise StoreError(f"trade {trade_id!r} is not in the journal (add_trade it first)")

    # --- trades ----------------------------------------------------------------------------

    async def add_trade(self, t: Trade, source: str = "external", ts: float | None = None) -> bool:
        """Insert a trade. Returns False (and changes nothing) if the trade_id already exists."""
        problem = _trade_problem(t)
        if problem:
            raise StoreError(f"trade {t.trade_id!r} cannot be journaled: {problem}")
        now = time.time() if ts is None else ts
        n = await self._write(_INSERT_TRADE, (t.trade_id, *_trade_params(t), source, now))
        return n == 1

    async def save_trade(self, t: Trade, ts: float | None = None) -> None:
        """Write every mutable field of an existing trade. Raises StoreError if it is unknown."""
        problem = _trade_problem(t)
        if problem:
            raise StoreError(f"trade {t.trade_id!r} cannot be journaled: {problem}")
        now = time.time() if ts is None else ts
        n = await self._write(_UPDATE_TRADE, (*_trade_params(t), now, t.trade_id))
        if n != 1:
            raise StoreError(f"trade {t.trade_id!r} is not in the journal (add_trade it first)")

    def _check_rows(
        self, rows: Sequence[sqlite3.Row], ctx: RowContext | None
    ) -> list[Trade | BadRow]:
        """Each row checked (engine.trade_rows); `last_bad_rows` / `last_load_problems` say
        which rows were bad."""
        out = [trade_rows.check_row(r, ctx) for r in rows]
        bad = [r for r in out if isinstance(r, BadRow)]
        self.last_bad_rows = bad
        self.last_load_problems = [f"{b.message()} ({self.path})" for b in bad]
        return out

    def _rows_to_trades(
        self, rows: Sequence[sqlite3.Row], ctx: RowContext | None = None
    ) -> list[Trade]:
        return [r for r in self._check_rows(rows, ctx) if isinstance(r, Trade)]

    async def load_trades(
        self, states: Sequence[str] = ("open", "closing"), ctx: RowContext | None = None
    ) -> list[Trade]:
        """Trades in `states`, oldest first. Bad rows are skipped (never changed): see
        `last_bad_rows`. `ctx` adds the engine's checks (its venue, clock, contracts)."""
        wanted = [str(s) for s in states]
        bad = [s for s in wanted if s not in TRADE_STATES]
        if bad:
            raise StoreError(f"unknown trade state(s) {bad}; use {', '.join(TRADE_STATES)}")
        if not wanted:
            self.last_load_problems = []
            self.last_bad_rows = []
            return []
        marks = ", ".join("?" * len(wanted))
        rows = await self._fetchall(
            f"SELECT rowid AS row_id, * FROM trades WHERE state IN ({marks})"
            " ORDER BY opened_ts, trade_id",
            wanted,
        )
        return self._rows_to_trades(rows, ctx)

    async def get_trade(self, trade_id: str, ctx: RowContext | None = None) -> Trade | None:
        """One trade, or None if absent or bad (then last_bad_rows says why)."""
        rows = await self._fetchall(
            "SELECT rowid AS row_id, * FROM trades WHERE trade_id = ?", (trade_id,)
        )
        trades = self._rows_to_trades(rows, ctx)
        return trades[0] if trades else None

    async def all_trades(self, limit: int = 1000, ctx: RowContext | None = None) -> list[Trade]:
        """Every trade (any state), newest first. Bad rows are skipped (last_bad_rows)."""
        return [t for t in await self.trade_rows(limit, ctx) if isinstance(t, Trade)]

    async def trade_rows(
        self, limit: int = 1000, ctx: RowContext | None = None, states: Sequence[str] = ()
    ) -> list[Trade | BadRow]:
        """Every row (of `states`, or any state), newest first: a Trade, or a BadRow saying what
        is wrong with it (for `trades list`)."""
        where = ""
        params: list[Any] = []
        if states:
            where = f" WHERE state IN ({', '.join('?' * len(states))})"
            params = [str(s) for s in states]
        rows = await self._fetchall(
            f"SELECT rowid AS row_id, * FROM trades{where}"
            " ORDER BY opened_ts DESC, rowid DESC LIMIT ?",
            (*params, int(limit)),
        )
        return self._check_rows(rows, ctx)

    async def new_open_rows(
        self, known: set[str], ctx: RowContext | None = None
    ) -> list[tuple[int, str, Trade | BadRow]]:
        """Open rows whose trade_id is not in `known` (rows other programs inserted since the
        last look), oldest first: (rowid, fingerprint, a Trade or a BadRow). Cheap when there
        are none: one read of ids; the rows themselves are read only for the unknown ones."""
        ids = await self._fetchall(
            "SELECT rowid AS row_id, trade_id FROM trades WHERE state = 'open'"
        )
        new = [int(r[0]) for r in ids if not (isinstance(r[1], str) and r[1] in known)]
        if not new:
            return []
        rows: list[sqlite3.Row] = []
        for i in range(0, len(new), 500):  # SQLite's bound-parameter limit
            chunk = new[i : i + 500]
            rows += await self._fetchall(
                "SELECT rowid AS row_id, * FROM trades WHERE rowid IN"
                f" ({', '.join('?' * len(chunk))}) AND state = 'open'",
                chunk,
            )
        rows.sort(
            key=lambda r: (r["opened_ts"] if trade_rows.num_ok(r["opened_ts"]) else 0.0, r[0])
        )
        out = self._check_rows(rows, ctx)
        return [(int(r[0]), trade_rows.fingerprint(r), t) for r, t in zip(rows, out, strict=True)]

    async def trade_source(self, trade_id: str) -> str | None:
        """Who created the trade row ('external', 'venue', 'sim', ...), or None if absent."""
        rows = await self._fetchall("SELECT source FROM trades WHERE trade_id = ?", (trade_id,))
        return rows[0]["source"] if rows else None

    # --- marks -----------------------------------------------------------------------------

    async def add_mark(
        self, trade_id: str, ts: float, mark: float, pnl: float, pnl_pct: float
    ) -> None:
        """Record a mark (non-finite numbers are stored as NULL)."""
        vals = [v if _num_ok(v) else None for v in (mark, pnl, pnl_pct)]
        try:
            await self._write(
                "INSERT INTO marks (trade_id, ts, mark, pnl, pnl_pct) VALUES (?, ?, ?, ?, ?)",
                (trade_id, float(ts), *vals),
            )
        except StoreError as e:
            await self._explain_fk(e, trade_id)

    async def add_marks(self, rows: Sequence[tuple[str, float, float, float, float]]) -> None:
        """Record many (trade_id, ts, mark, pnl, pnl_pct) samples in one transaction."""
        await self.flush_tick(rows, (), None, time.time())

    async def marks(self, trade_id: str) -> list[tuple[float, float, float, float]]:
        """(ts, mark, pnl, pnl_pct) for a trade, oldest first."""
        rows = await self._fetchall(
            "SELECT ts, mark, pnl, pnl_pct FROM marks WHERE trade_id = ? ORDER BY ts, rowid",
            (trade_id,),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def _explain_fk(self, e: StoreError, trade_id: str) -> None:
        """Re-raise a foreign-key failure as 'trade X is not in the journal'."""
        if "FOREIGN KEY" in str(e):
            await self._require_trade(trade_id)
        raise e

    # --- exit intents ----------------------------------------------------------------------

    async def add_intent(
        self, intent_id: str, trade_id: str, rule: str, qty: float, ts: float, context: dict
    ) -> None:
        """Journal an exit intent (status 'pending'). Raises StoreError if the id exists."""
        if not _num_ok(qty) or qty <= 0:
            raise StoreError(f"exit intent {intent_id!r}: qty must be a number > 0 (got {qty!r})")
        try:
            await self._write(
                "INSERT INTO exit_intents (intent_id, trade_id, rule, qty, created_ts, status,"
                " attempts, context, updated_ts) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                (intent_id, trade_id, str(rule), float(qty), ts, _dumps(context), ts),
            )
        except StoreError as e:
            if "UNIQUE" in str(e):
                raise StoreError(f"exit intent {intent_id!r} is already journaled") from e
            await self._explain_fk(e, trade_id)

    async def begin_exit(
        self,
        *,
        intent_id: str,
        trade_id: str,
        rule: str,
        qty: float,
        ts: float,
        context: dict,
        order: dict[str, Any],
        audit_event: str | None = "exit_intent",
    ) -> None:
        """Journal an exit intent, its first order and an audit record in one transaction (one
        commit, ~0.2 ms), on the exit writer: see `_open_exit_writer`.

        `order` holds add_order's fields but the intent id. Both rows are committed before this
        returns, so the order can be sent with the guarantee that a crash leaves a trace of it.
        """
        if not _num_ok(qty) or qty <= 0:
            raise StoreError(f"exit intent {intent_id!r}: qty must be a number > 0 (got {qty!r})")
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT INTO exit_intents (intent_id, trade_id, rule, qty, created_ts, status,"
                " attempts, context, updated_ts) VALUES (?, ?, ?, ?, ?, 'sent', 1, ?, ?)",
                (intent_id, trade_id, str(rule), float(qty), ts, _dumps(context), ts),
            ),
            (
                "INSERT INTO orders (client_order_id, intent_id, trade_id, contract_id, side,"
                " action, qty, limit_price, status, created_ts, updated_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (
                    order["client_order_id"],
                    intent_id,
                    trade_id,
                    order["contract_id"],
                    order["side"],
                    order["action"],
                    float(order["qty"]),
                    order.get("limit_price"),
                    ts,
                    ts,
                ),
            ),
        ]
        if audit_event:
            statements.append(
                (
                    "INSERT INTO audit (ts, trade_id, event, data) VALUES (?, ?, ?, ?)",
                    (ts, trade_id, audit_event, _dumps({"intent_id": intent_id, **context})),
                )
            )
        self._wconn()
        fast = self._fast
        if fast is None:
            raise StoreError(f"the journal {self.path} has no exit writer (opened read-only?)")
        async with self._wlock:  # no other write is under way on the main connection
            try:
                _commit_all(fast, statements)
            except sqlite3.Error as e:
                raise self._write_failed(
                    e, f"could not journal exit {intent_id!r} for {trade_id!r}: {e}"
                ) from e

    async def checkpoint(self) -> None:
        """Move the WAL into the database file, on a connection and thread of its own.

        PASSIVE checkpoints never block the engine's writers or readers, so the fsync they cost
        (several ms) delays no journal write on the exit path.
        """
        if self.readonly or self._db is None:
            return

        def run() -> None:
            con = sqlite3.connect(self.path, timeout=0.1, isolation_level=None)
            try:
                con.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                con.close()

        with contextlib.suppress(sqlite3.Error):  # a busy checkpoint is retried on a later tick
            await asyncio.to_thread(run)

    async def open_trade_ids(self) -> set[str]:
        """Ids of open trades: a cheap poll for trades other programs inserted."""
        rows = await self._fetchall("SELECT trade_id FROM trades WHERE state = 'open'")
        return {r[0] for r in rows}

    async def update_intent(
        self,
        intent_id: str,
        *,
        status: str | None = None,
        attempts: int | None = None,
        ts: float | None = None,
    ) -> None:
        if status is not None and status not in INTENT_STATUSES:
            raise StoreError(
                f"exit intent status {status!r} is not one of {', '.join(INTENT_STATUSES)}"
            )
        n = await self._write(
            "UPDATE exit_intents SET status = COALESCE(?, status),"
            " attempts = COALESCE(?, attempts), updated_ts = COALESCE(?, updated_ts)"
            " WHERE intent_id = ?",
            (status, attempts, ts, intent_id),
        )
        if n != 1:
            raise StoreError(f"exit intent {intent_id!r} is not in the journal")

    def _intent_dict(self, r: sqlite3.Row) -> dict:
        d = dict(r)
        d["context"] = _loads(d.get("context"), {})
        return d

    async def open_intents(self) -> list[dict]:
        """Intents still pending or sent, oldest first, each a dict with `context` parsed."""
        rows = await self._fetchall(
            "SELECT * FROM exit_intents WHERE status IN ('pending', 'sent')"
            " ORDER BY created_ts, rowid"
        )
        return [self._intent_dict(r) for r in rows]

    async def get_intent(self, intent_id: str) -> dict | None:
        rows = await self._fetchall("SELECT * FROM exit_intents WHERE intent_id = ?", (intent_id,))
        return self._intent_dict(rows[0]) if rows else None

    async def intents_for_trade(self, trade_id: str) -> list[dict]:
        rows = await self._fetchall(
            "SELECT * FROM exit_intents WHERE trade_id = ? ORDER BY created_ts, rowid", (trade_id,)
        )
        return [self._intent_dict(r) for r in rows]

    # --- orders ----------------------------------------------------------------------------

    async def add_order(
        self,
        *,
        client_order_id: str,
        intent_id: str | None,
        trade_id: str,
        contract_id: str,
        side: str,
        action: str,
        qty: float,
        limit_price: float | None,
        ts: float,
    ) -> None:
        """Journal an order (status 'pending') before it is sent. Raises if the id exists."""
        if not _num_ok(qty) or qty <= 0:
            raise StoreError(f"order {client_order_id!r}: qty must be a number > 0 (got {qty!r})")
        if limit_price is not None and not _num_ok(limit_price):
            raise StoreError(f"order {client_order_id!r}: limit_price {limit_price!r} is invalid")
        try:
            await self._write(
                "INSERT INTO orders (client_order_id, intent_id, trade_id, contract_id, side,"
                " action, qty, limit_price, status, created_ts, updated_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (
                    client_order_id,
                    intent_id,
                    trade_id,
                    contract_id,
                    side,
                    action,
                    float(qty),
                    limit_price,
                    ts,
                    ts,
                ),
            )
        except StoreError as e:
            if "UNIQUE" in str(e):
                raise StoreError(f"order {client_order_id!r} is already journaled") from e
            if "FOREIGN KEY" in str(e):
                await self._require_trade(trade_id)
                if intent_id is not None and await self.get_intent(intent_id) is None:
                    raise StoreError(f"exit intent {intent_id!r} is not in the journal") from e
            raise

    async def update_order(
        self,
        client_order_id: str,
        *,
        status: str,
        filled_qty: float | None = None,
        avg_price: float | None = None,
        fees: float | None = None,
        venue_order_id: str | None = None,
        reason: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Update an order; arguments left as None keep their stored value."""
        if status not in ORDER_STATUSES:
            raise StoreError(f"order status {status!r} is not one of {', '.join(ORDER_STATUSES)}")
        for name, v in (("filled_qty", filled_qty), ("avg_price", avg_price), ("fees", fees)):
            if v is not None and not _num_ok(v):
                raise StoreError(f"order {client_order_id!r}: {name} {v!r} is not a number")
        n = await self._write(
            "UPDATE orders SET status = ?, filled_qty = COALESCE(?, filled_qty),"
            " avg_price = COALESCE(?, avg_price), fees = COALESCE(?, fees),"
            " venue_order_id = COALESCE(?, venue_order_id), reason = COALESCE(?, reason),"
            " updated_ts = COALESCE(?, updated_ts) WHERE client_order_id = ?",
            (status, filled_qty, avg_price, fees, venue_order_id, reason, ts, client_order_id),
        )
        if n != 1:
            raise StoreError(f"order {client_order_id!r} is not in the journal")

    async def get_order(self, client_order_id: str) -> dict | None:
        rows = await self._fetchall(
            "SELECT * FROM orders WHERE client_order_id = ?", (client_order_id,)
        )
        return dict(rows[0]) if rows else None

    async def orders_for_intent(self, intent_id: str) -> list[dict]:
        """Orders sent for an intent, oldest first."""
        rows = await self._fetchall(
            "SELECT * FROM orders WHERE intent_id = ? ORDER BY created_ts, rowid", (intent_id,)
        )
        return [dict(r) for r in rows]

    # --- fills -----------------------------------------------------------------------------

    async def add_fill(
        self,
        *,
        client_order_id: str | None,
        trade_id: str,
        qty: float,
        price: float,
        fees: float,
        ts: float,
    ) -> None:
        for name, v in (("qty", qty), ("price", price), ("fees", fees), ("ts", ts)):
            if not _num_ok(v):
                raise StoreError(f"fill for trade {trade_id!r}: {name} {v!r} is not a number")
        try:
            await self._write(
                "INSERT INTO fills (client_order_id, trade_id, qty, price, fees, ts)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (client_order_id, trade_id, float(qty), float(price), float(fees), float(ts)),
            )
        except StoreError as e:
            await self._explain_fk(e, trade_id)

    async def fills_for_trade(self, trade_id: str) -> list[dict]:
        """Fills of a trade, oldest first."""
        rows = await self._fetchall(
            "SELECT * FROM fills WHERE trade_id = ? ORDER BY ts, id", (trade_id,)
        )
        return [dict(r) for r in rows]

    # --- settlements -----------------------------------------------------------------------

    async def record_settlement(self, contract_id: str, value: float, ts: float) -> None:
        """Remember a contract's settlement value (YES terms for a binary: 0..1). A repeated
        settlement of the same contract replaces the earlier one."""
        for name, v in (("value", value), ("ts", ts)):
            if not _num_ok(v):
                raise StoreError(f"settlement of {contract_id!r}: {name} {v!r} is not a number")
        await self._write(
            "INSERT INTO settlements (contract_id, value, ts) VALUES (?, ?, ?)"
            " ON CONFLICT (contract_id) DO UPDATE SET value = excluded.value, ts = excluded.ts",
            (str(contract_id), float(value), float(ts)),
        )

    async def settlements(self) -> dict[str, tuple[float, float]]:
        """Every recorded settlement: contract_id -> (value, ts)."""
        rows = await self._fetchall("SELECT contract_id, value, ts FROM settlements")
        return {r[0]: (float(r[1]), float(r[2])) for r in rows}

    # --- spot history ----------------------------------------------------------------------

    async def add_spot_samples(
        self,
        symbol: str,
        samples: Sequence[tuple[float, float]],
        ticks_after: float,
        keep_after: float,
    ) -> None:
        """Journal spot samples `(ts, price)` of `symbol` and bound the table, in one commit.

        Samples at or after `ticks_after` (Unix s) are kept as they are; older ones are thinned
        to the last of each clock minute (a minute close), and ones before `keep_after` dropped.
        A sample that is not a positive finite number is skipped; a repeated ts replaces.
        """
        rows = [
            (str(symbol), float(ts), float(p))
            for ts, p in samples
            if _num_ok(ts) and _num_ok(p) and float(p) > 0
        ]
        db = self._wconn()
        async with self._wlock:
            try:
                async with _transaction(db, "BEGIN IMMEDIATE"):
                    if rows:
                        await db.executemany(
                            "INSERT INTO spot_history (symbol, ts, price) VALUES (?, ?, ?)"
                            " ON CONFLICT (symbol, ts) DO UPDATE SET price = excluded.price",
                            rows,
                        )
                    await db.execute(
                        "DELETE FROM spot_history WHERE symbol = ? AND ts < ?",
                        (str(symbol), float(keep_after)),
                    )
                    await db.execute(
                        "DELETE FROM spot_history WHERE symbol = ? AND ts < ? AND ts NOT IN"
                        " (SELECT MAX(ts) FROM spot_history WHERE symbol = ? AND ts < ?"
                        " GROUP BY CAST(ts / 60 AS INTEGER))",
                        (str(symbol), float(ticks_after), str(symbol), float(ticks_after)),
                    )
            except sqlite3.Error as e:
                raise self._write_failed(e) from e

    async def spot_samples(
        self, symbol: str, since: float = -math.inf
    ) -> list[tuple[float, float]]:
        """The journaled spot history of `symbol` from `since` (Unix s) on, oldest first."""
        rows = await self._fetchall(
            "SELECT ts, price FROM spot_history WHERE symbol = ? AND ts >= ? ORDER BY ts",
            (str(symbol), float(since) if math.isfinite(since) else -1e300),
        )
        return [(float(r[0]), float(r[1])) for r in rows]

    # --- alerts and audit ------------------------------------------------------------------

    async def add_alert(
        self,
        *,
        ts: float,
        kind: str,
        severity: str,
        trade_id: str | None,
        message: str,
        data: dict | None = None,
    ) -> None:
        await self._write(
            "INSERT INTO alerts (ts, kind, severity, trade_id, message, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (ts, str(kind), str(severity), trade_id, str(message), _dumps(data or {})),
        )

    async def recent_alerts(self, limit: int = 200) -> list[dict]:
        """The latest alerts, newest first, each with `data` parsed."""
        return await self._alert_rows("", (int(limit),))

    async def alerts_for_trade(self, trade_id: str, limit: int = 200) -> list[dict]:
        """A trade's latest alerts, newest first, each with `data` parsed."""
        return await self._alert_rows("WHERE trade_id = ?", (trade_id, int(limit)))

    async def _alert_rows(self, where: str, params: Sequence[Any]) -> list[dict]:
        rows = await self._fetchall(
            f"SELECT * FROM alerts {where} ORDER BY id DESC LIMIT ?", params
        )
        out = []
        for r in rows:
            d = dict(r)
            d["data"] = _loads(d.get("data"), {})
            out.append(d)
        return out

    async def add_audit(self, ts: float, trade_id: str | None, event: str, data: dict) -> None:
        await self._write(
            "INSERT INTO audit (ts, trade_id, event, data) VALUES (?, ?, ?, ?)",
            (ts, trade_id, str(event), _dumps(data)),
        )

    async def audit_for_trade(self, trade_id: str) -> list[dict]:
        """Audit records of a trade, oldest first, each with `data` parsed."""
        rows = await self._fetchall(
            "SELECT * FROM audit WHERE trade_id = ? ORDER BY id", (trade_id,)
        )
        out = []
        for r in rows:
            d = dict(r)
            d["data"] = _loads(d.get("data"), {})
            out.append(d)
        return out

    # --- key/value state (arm, pause, kill switch, ...) ------------------------------------

    async def add_command(
        self, action: str, trade_id: str | None, payload: dict, ts: float
    ) -> None:
        """Queue a command for the running engine (it takes them on its next poll)."""
        await self._write(
            "INSERT INTO commands (ts, action, trade_id, payload) VALUES (?, ?, ?, ?)",
            (float(ts), action, trade_id, _dumps(payload)),
        )

    async def take_commands(self) -> list[dict]:
        """Queued commands not yet taken, oldest first; marks them taken."""
        rows = await self._fetchall(
            "SELECT id, ts, action, trade_id, payload FROM commands WHERE taken_ts IS NULL ORDER BY id"
        )
        out = []
        for r in rows:
            await self._write("UPDATE commands SET taken_ts = ? WHERE id = ?", (time.time(), r[0]))
            # A row another program wrote badly is handed on with `problem` (field, what is
            # wrong) set, for the engine to alert on, and never acted on (engine.trade_rows).
            problem = trade_rows.command_problem(r[2], r[3], r[4])
            payload = _loads(r[4], {}) if problem is None else {}
            out.append(
                {
                    "id": r[0],
                    "ts": r[1],
                    "action": r[2],
                    "trade_id": r[3],
                    "payload": payload or {},
                    "problem": problem,
                }
            )
        return out

    async def get_state(self, key: str, default: Any = None) -> Any:
        rows = await self._fetchall("SELECT value FROM state WHERE key = ?", (key,))
        if not rows:
            return default
        return _loads(rows[0]["value"], default)

    async def set_state(self, key: str, value: Any, ts: float | None = None) -> None:
        await self._write(
            "INSERT INTO state (key, value, updated_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_ts = excluded.updated_ts",
            (key, _dumps(value), time.time() if ts is None else ts),
        )

    # --- atomic multi-statement write ------------------------------------------------------

    async def book_result(
        self,
        *,
        trade: Trade,
        ts: float,
        order: dict[str, Any] | None = None,
        fill: dict[str, Any] | None = None,
        intent: tuple[str, str | None, int | None] | None = None,
        audit: tuple[str, dict] | None = None,
    ) -> None:
        """Book a venue answer in ONE transaction: the order's new status (`order`: the
        update_order fields with `client_order_id`), the fill, the trade, the intent's
        `(intent_id, status or None, attempts or None)` and an audit record.

        A crash leaves either all of it or none of it: never an order marked filled whose fill
        and closed trade are missing (reconciliation would then send the exit again).
        """
        problem = _trade_problem(trade)
        if problem:
            raise StoreError(f"trade {trade.trade_id!r} cannot be journaled: {problem}")
        if order is not None and order["status"] not in ORDER_STATUSES:
            raise StoreError(
                f"order status {order['status']!r} is not one of {', '.join(ORDER_STATUSES)}"
            )
        if intent is not None and intent[1] is not None and intent[1] not in INTENT_STATUSES:
            raise StoreError(
                f"exit intent status {intent[1]!r} is not one of {', '.join(INTENT_STATUSES)}"
            )
        if fill is not None:
            for name in ("qty", "price", "fees"):
                if not _num_ok(fill[name]):
                    raise StoreError(
                        f"fill for trade {trade.trade_id!r}: {name} {fill[name]!r} is not a number"
                    )
        db = self._wconn()
        async with self._wlock:
            try:
                async with _transaction(db, "BEGIN IMMEDIATE"):
                    if order is not None:
                        await db.execute(
                            "UPDATE orders SET status = ?, filled_qty = COALESCE(?, filled_qty),"
                            " avg_price = COALESCE(?, avg_price), fees = COALESCE(?, fees),"
                            " venue_order_id = COALESCE(?, venue_order_id),"
                            " reason = COALESCE(?, reason), updated_ts = ? WHERE client_order_id = ?",
                            (
                                order["status"],
                                order.get("filled_qty"),
                                order.get("avg_price"),
                                order.get("fees"),
                                order.get("venue_order_id") or None,
                                order.get("reason") or None,
                                ts,
                                order["client_order_id"],
                            ),
                        )
                    if fill is not None:
                        await db.execute(
                            "INSERT INTO fills (client_order_id, trade_id, qty, price, fees, ts)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            (
                                fill.get("client_order_id"),
                                trade.trade_id,
                                float(fill["qty"]),
                                float(fill["price"]),
                                float(fill["fees"]),
                                ts,
                            ),
                        )
                    async with db.execute(
                        _UPDATE_TRADE, (*_trade_params(trade), ts, trade.trade_id)
                    ) as cur:
                        if cur.rowcount != 1:
                            raise StoreError(f"trade {trade.trade_id!r} is not in the journal")
                    if intent is not None:
                        await db.execute(
                            "UPDATE exit_intents SET status = COALESCE(?, status),"
                            " attempts = COALESCE(?, attempts), updated_ts = ? WHERE intent_id = ?",
                            (intent[1], intent[2], ts, intent[0]),
                        )
                    if audit is not None:
                        await db.execute(
                            "INSERT INTO audit (ts, trade_id, event, data) VALUES (?, ?, ?, ?)",
                            (ts, trade.trade_id, str(audit[0]), _dumps(audit[1])),
                        )
            except sqlite3.Error as e:
                raise self._write_failed(e) from e

    async def flush_tick(
        self,
        marks: Sequence[tuple[str, float, float, float, float]],
        peaks: Sequence[tuple[str, float, float, float, float]],
        state: dict[str, Any] | None,
        ts: float,
    ) -> None:
        """The tick's bookkeeping in one commit: mark samples, moved peaks, state values."""
        if not marks and not peaks and not state:
            return
        db = self._wconn()
        async with self._wlock:
            try:
                async with _transaction(db, "BEGIN IMMEDIATE"):
                    if marks:
                        await db.executemany(
                            "INSERT INTO marks (trade_id, ts, mark, pnl, pnl_pct) VALUES (?, ?, ?, ?, ?)",
                            [
                                (tid, float(t), *[v if _num_ok(v) else None for v in (m, p, pp)])
                                for tid, t, m, p, pp in marks
                            ],
                        )
                    if peaks:
                        await db.executemany(
                            "UPDATE trades SET peak_pnl = ?, peak_pnl_pct = ?, trough_pnl = ?,"
                            " trough_pnl_pct = ? WHERE trade_id = ?",
                            [(*[v if _num_ok(v) else 0.0 for v in r[1:]], r[0]) for r in peaks],
                        )
                    for key, value in (state or {}).items():
                        await db.execute(
                            "INSERT INTO state (key, value, updated_ts) VALUES (?, ?, ?)"
                            " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                            " updated_ts = excluded.updated_ts",
                            (key, _dumps(value), ts),
                        )
            except sqlite3.Error as e:
                raise self._write_failed(e) from e
