"""The tape: what an engine on a live or simulated venue saw, kept for `replay`.

This module owns the tape's writer, its files and their retention, and reading them back:

- `Tape` is attached to an engine (`attach`): it is one of the engine's recorders (quotes and spot
  prints as they reached the engine, before the data guard; contracts; settlements; the openings
  of trades as they appeared; commands) and listens to its exits, fills and closes without an
  order (settled, external). Each of these is put on a bounded queue and returns at once: a
  writer thread turns them into lines, compresses and writes them. A full queue drops the line
  and counts it; the count is in the engine's heartbeat (`status`) and, as a `dropped` line, on
  the tape itself. Writing the tape never delays an exit.
- Files: `data_dir/tapes/VENUE-YYYY-MM-DD.jsonl.gz`, one per venue and UTC day of the engine's
  (injected) clock, rotated when the day changes. Each session appends a gzip member that starts
  with a `header` line (format version, venue). The writer sync-flushes every `flush_seconds`, so
  a kill -9 loses at most that much, and a torn last line is skipped on read with a warning.
- Retention: tapes of days older than `keep_days`, then the oldest while all tapes exceed
  `max_mb`, are deleted (never the file being written).
- Reading: `tape_lines` yields the text lines of a tape (or a plain .jsonl recording);
  `select_tapes` turns a file, a folder or a date range into the files to replay, in order.

The line format is the replay format (engine/replay_format.py), documented in docs/tape-format.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import gzip
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine import private_files
from engine.clock import Clock
from engine.config import TapeConfig
from engine.models import MarketEvent
from engine.replay_format import TAPE_VERSION, event_to_json

log = logging.getLogger(__name__)

TAPES_DIRNAME = "tapes"
SUFFIX = ".jsonl.gz"
_NAME = re.compile(r"^(?P<venue>.+)-(?P<day>\d{4}-\d{2}-\d{2})\.jsonl(?:\.gz)?$")
_CHUNK = 1 << 16
_RETENTION_EVERY_SECONDS = 60.0
_STOP = object()
_POLL_SECONDS = 0.05  # the writer takes the queued lines this often
_YIELD_EVERY = 8  # lines serialised between two GIL hand-overs
_BATCH_MAX = 20_000  # lines taken per wake at most, then compressed, written, maybe flushed


class TapeError(ValueError):
    """A tape that cannot be read (not a tape, corrupt, another version), or an empty range."""


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def tape_name(venue: str, day: str) -> str:
    return f"{venue}-{day}{SUFFIX}"


def parse_tape_name(path: Path) -> tuple[str, str] | None:
    """(venue, day) of a tape's file name, or None for a name that is not a tape's."""
    m = _NAME.match(path.name)
    return (m["venue"], m["day"]) if m else None


# --- writing ------------------------------------------------------------------------------------


class Tape:
    """A venue's tape, written by a thread of its own; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        venue: str,
        clock: Clock,
        config: TapeConfig | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or TapeConfig()
        self.folder = folder
        self.venue = venue
        self.clock = clock
        self._monotonic = monotonic
        # The bounded queue: a deque (appends and pops are atomic, and cheaper on the reaction
        # path than queue.Queue's lock and condition); only the engine's thread appends lines.
        self._queue: collections.deque[Any] = collections.deque()
        self._max = self.config.queue_events
        self._pending: list[bytes] = []  # lines serialised, compressed together (GIL released)
        self._lock = threading.Lock()
        self.dropped = 0  # lines dropped because the queue was full, since this tape started
        self._dropped_taped = 0  # of those, already announced by a `dropped` line
        self.written = 0  # lines written (header and `dropped` lines included)
        self.error: str | None = None  # the writer's last I/O failure, shown in `status`
        self.path: Path | None = None  # the file being written
        self._day: str | None = None
        self._gz: Any = None
        self._raw: Any = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # set by close(): drain now, then stop
        # A write failure is alerted once per episode, on the engine's loop (attach()).
        self._engine: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._alerted = False
        self._alert_tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- the engine's side (never blocks) --

    def attach(self, engine: Any) -> None:
        """Record everything the engine sees and books; show the drop count in its heartbeat."""
        for hooks, fn in (
            (engine.recorders, self.record),
            (engine.exit_listeners, self.on_exit),
            (engine.tape_listeners, self.on_journal),
        ):
            if fn not in hooks:
                hooks.append(fn)
        engine.heartbeat_extras["tape"] = self.state
        self._engine = engine
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"tape-{self.venue}", daemon=True
            )
            self._thread.start()

    # These three are called on the engine's reaction path (an exit among them): they never
    # raise, whatever they are given; a line they cannot take is counted as dropped.

    def record(self, ev: MarketEvent) -> None:
        """An engine recorder: the event as it reached the engine."""
        try:
            self._put(("ev", self.clock.now(), ev))
        except Exception:
            self._drop()

    def on_exit(self, info: dict[str, Any]) -> None:
        """An exit listener: the engine closed a trade by a rule or by hand."""
        try:
            keys = ("trade_id", "rule", "mark", "pnl", "pnl_pct", "manual")
            data = {k: info.get(k) for k in keys}
            self._put(("info", self.clock.now(), "exit", info.get("ts"), data))
        except Exception:
            self._drop()

    def on_journal(self, kind: str, data: dict[str, Any]) -> None:
        """A journal listener: ("fill", ...) of an exit order, ("closed", ...) without an order."""
        try:
            data = dict(data)
            self._put(("info", self.clock.now(), kind, data.pop("ts", None), data))
        except Exception:
            self._drop()

    def _drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def _put(self, item: Any) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._max:
            self._drop()
            return
        self._queue.append(item)

    def state(self) -> dict[str, Any]:
        """For the heartbeat: how many lines were dropped, and the file being written."""
        return {
            "dropped": self.dropped,
            "file": str(self.path) if self.path else None,
            "error": self.error,
        }

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._queue.append(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():  # a stuck writer: give up rather than hang the shutdown
            log.error("the tape writer did not drain its queue in %gs; the tape ends here", timeout)

    # -- the writer thread --

    def _run(self) -> None:
        # The writer does not wake on each line (a wake-up per put would contend for the GIL on
        # the reaction path): it sleeps `_POLL_SECONDS`, then takes what is queued, giving the
        # GIL back every few lines so the engine's thread never waits long for it.
        last_flush = self._monotonic()
        last_retention = -1e18
        try:
            while True:
                self._wake.wait(min(_POLL_SECONDS, self.config.flush_seconds))
                stopping = False
                # At most what is queued now: under a steady stream the drain must end, so that
                # the lines are compressed, written and flushed (a kill -9 loses only the tail).
                for n in range(1, min(len(self._queue), _BATCH_MAX) + 1):
                    try:
                        item = self._queue.popleft()
                    except IndexError:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    self._safely(self._write_item, item)
                    if n % _YIELD_EVERY == 0:
                        time.sleep(0)
                self._safely(self._announce_drops)
                self._safely(self._spill)
                now = self._monotonic()
                if stopping:
                    break
                if now - last_flush >= self.config.flush_seconds:
                    self._safely(self._flush)
                    last_flush = now
                if now - last_retention >= _RETENTION_EVERY_SECONDS:
                    self._safely(self._retention)
                    last_retention = now
        finally:
            self._finish()

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # a full disk, a removed folder: the engine goes on
            if self.error is None:
                log.exception("tape %s: write failed", self.venue)
            self.error = f"{type(e).__name__}: {e}"
            self._abandon_file()  # the next line starts a fresh gzip member
            if not self._alerted:
                self._alerted = True
                self._alert_failure(self.error)

    def _abandon_file(self) -> None:
        raw, self._raw, self._gz, self._day = self._raw, None, None, None
        self._pending.clear()
        if raw is not None:
            try:
                raw.close()
            except Exception:
                log.debug("tape: closing a failed file", exc_info=True)

    def _alert_failure(self, why: str) -> None:
        """From the writer thread: one warning on the engine's alert bus, naming the folder."""
        engine, loop = self._engine, self._loop
        if engine is None or loop is None:
            return
        msg = (
            f"tape {self.folder}: writing failed ({why}); this session is not being taped "
            "(the engine goes on). Free disk space or fix the folder's permissions, or set "
            "[tape] enabled = false"
        )

        def raise_alert() -> None:
            from engine.models import AlertKind, Severity

            task = asyncio.ensure_future(
                engine.alerts.raise_(
                    engine.clock.now(),
                    AlertKind.DATA_QUALITY,
                    Severity.WARNING,
                    msg,
                    subject=f"tape:{self.venue}",
                )
            )
            self._alert_tasks.add(task)
            task.add_done_callback(self._alert_tasks.discard)

        with contextlib.suppress(RuntimeError):  # the loop has closed: the log has it
            loop.call_soon_threadsafe(raise_alert)

    def _finish(self) -> None:
        self._safely(self._announce_drops)
        self._safely(self._close_file)

    def _write_item(self, item: Any) -> None:
        try:
            if item[0] == "ev":
                _, now, ev = item
                obj = event_to_json(ev)
                if ev.kind == "open":
                    obj["seen_ts"] = now  # when the engine learnt of it (ts: when it was opened)
            else:
                _, now, kind, ts, data = item
                obj = {"ts": ts if ts is not None else now, "kind": kind, **data}
            line = json.dumps(obj, separators=(",", ":"))
        except Exception:  # not an event the format knows: that line is dropped, not the file
            log.exception("tape %s: a line could not be written; dropped", self.venue)
            self._drop()
            return
        self._write_line(line, now)

    def _announce_drops(self) -> None:
        with self._lock:
            new = self.dropped - self._dropped_taped
            self._dropped_taped = self.dropped
        if new > 0:
            now = self.clock.now()
            self._write_obj(
                {"ts": now, "kind": "dropped", "count": new, "total": self._dropped_taped}, now
            )

    def _write_obj(self, obj: dict[str, Any], now: float) -> None:
        self._write_line(json.dumps(obj, separators=(",", ":")), now)

    def _write_line(self, line: str, now: float) -> None:
        day = utc_day(now)
        if day != self._day:
            self._rotate(day, now)
        self._pending.append((line + "\n").encode())
        self.written += 1

    def _spill(self) -> None:
        """The lines serialised so far, compressed and written in one go."""
        if self._pending and self._gz is not None:
            data = b"".join(self._pending)
            self._pending.clear()
            self._write_bytes(data)

    def _write_bytes(self, data: bytes) -> None:
        """Compress and write lines (a seam for tests that stall the writer)."""
        self._gz.write(data)

    def _rotate(self, day: str, now: float) -> None:
        self._close_file()
        private_files.make_dir(self.folder)  # a trade history: 0700, its files 0600
        self.path = self.folder / tape_name(self.venue, day)
        self._raw = private_files.open_append(self.path, binary=True)
        # One gzip member per session and day (a restart the same day appends one): readers
        # take concatenated members as one stream.
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        self._day = day
        header = {
            "ts": now,
            "kind": "header",
            "format": "trade-supervisor-tape",
            "version": TAPE_VERSION,
            "venue": self.venue,
            "day": day,
        }
        self._write_obj(header, now)
        self._safely(self._retention)

    def _flush(self) -> None:
        self._spill()
        if self._gz is not None:
            self._gz.flush()  # Z_SYNC_FLUSH, then the file's buffer to the OS
            if self.error is not None:  # writing again after a failure
                log.warning("tape %s: writing again after %s", self.venue, self.error)
                self.error, self._alerted = None, False

    def _close_file(self) -> None:
        if self._raw is None:
            return
        try:
            self._spill()
        except Exception:
            self._pending.clear()
            raise
        raw, gz, self._raw, self._gz = self._raw, self._gz, None, None
        try:
            if gz is not None:
                gz.close()  # the member's trailer; the file itself stays open until below
        finally:
            raw.close()

    def _retention(self) -> None:
        prune(self.folder, self.config.keep_days, self.config.max_mb, self.clock.now(), self.path)


def prune(
    folder: Path, keep_days: int, max_mb: float, now: float, current: Path | None = None
) -> list[Path]:
    """Delete tapes of days older than `keep_days` (today is one), then the oldest while all tapes
    together exceed `max_mb`; never `current`. Returns what was deleted."""
    if not folder.is_dir():
        return []
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    first_kept = (today - dt.timedelta(days=keep_days - 1)).isoformat()
    tapes = sorted(
        (p for p in folder.iterdir() if p.is_file() and parse_tape_name(p)),
        key=lambda p: (parse_tape_name(p)[1], p.name),  # type: ignore[index]
    )
    gone: list[Path] = []
    kept: list[Path] = []
    for p in tapes:
        name = parse_tape_name(p)
        assert name is not None
        if name[1] < first_kept and p != current:
            p.unlink(missing_ok=True)
            gone.append(p)
        else:
            kept.append(p)
    sizes = {p: p.stat().st_size for p in kept}
    total = sum(sizes.values())
    limit = max_mb * 1024 * 1024
    for p in kept:
        if total <= limit:
            break
        if p == current:
            continue
        p.unlink(missing_ok=True)
        gone.append(p)
        total -= sizes[p]
    for p in gone:
        log.info("tape %s deleted (retention)", p)
    return gone


# --- reading ------------------------------------------------------------------------------------


def tape_lines(path: Path, warn: Callable[[str], None]) -> Iterator[str]:
    """The text lines of a tape (`.gz`) or of a plain recording. A gzip stream cut short (a kill
    -9) ends with a warning, its torn last line skipped; bytes that are not gzip, or corrupt,
    raise TapeError."""
    if not path.name.endswith(".gz"):
        with open(path, encoding="utf-8", errors="replace") as fh:
            yield from fh
        return
    d = zlib.decompressobj(wbits=31)
    buf = b""
    offset = 0  # compressed bytes consumed so far, for the message
    members = 0
    in_member = False
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            data = chunk
            while data:
                in_member = True
                try:
                    out = d.decompress(data)
                except zlib.error as e:
                    gz = members > 0 or offset > 0 or data[:2] == b"\x1f\x8b"
                    what = "is corrupt" if gz else "is not a gzip tape"
                    raise TapeError(
                        f"{path} {what} (at byte {offset}: {e}); a tape is written by the engine "
                        "as VENUE-YYYY-MM-DD.jsonl.gz, a plain recording ends in .jsonl"
                    ) from None
                buf += out
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace") + "\n"
                if d.eof:
                    in_member = False
                    members += 1
                    consumed = len(data) - len(d.unused_data)
                    offset += consumed
                    data = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    if not data.strip(b"\x00"):
                        data = b""
                else:
                    offset += len(data)
                    data = b""
    cut = in_member  # the last gzip member was begun and never finished
    if buf.strip():
        try:
            json.loads(buf)
        except ValueError:
            warn(
                f"{path}: the last line is torn ({len(buf)} bytes, the writer was stopped "
                "mid-line, e.g. by kill -9); skipped"
            )
        else:
            yield buf.decode("utf-8", errors="replace") + "\n"
    elif cut:
        warn(f"{path}: the tape ends mid-block (the writer was stopped, e.g. by kill -9)")


def select_tapes(
    target: Path | None,
    folder: Path,
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    venue: str | None = None,
) -> list[Path]:
    """The files to replay, in time order: `target` (a file, or a folder of tapes), else the tapes
    in `folder` from `date_from` to `date_to` (YYYY-MM-DD, both included). One venue at a time:
    a selection of several venues needs `venue`. Raises TapeError for an empty selection."""
    if target is not None and target.is_file():
        return [target]
    where = target if target is not None else folder
    if target is not None and not where.is_dir():
        raise TapeError(
            f"{where}: no such file or folder; give a tape file, a folder of tapes, or "
            "--from/--to over data_dir/tapes/"
        )
    found: list[tuple[str, str, Path]] = []
    for p in where.iterdir() if where.is_dir() else ():
        name = parse_tape_name(p)
        if name is None or not p.is_file():
            continue
        v, day = name
        if venue is not None and v != venue:
            continue
        if (date_from and day < date_from) or (date_to and day > date_to):
            continue
        found.append((day, v, p))
    span = f" from {date_from or 'the first'} to {date_to or 'the last'} day"
    if not found:
        raise TapeError(
            f"no tapes in {where}{span if (date_from or date_to) else ''}"
            f"{f' for venue {venue}' if venue else ''}; tapes are written there by every engine "
            "with [tape] enabled = true (files VENUE-YYYY-MM-DD.jsonl.gz)"
        )
    venues = sorted({v for _, v, _ in found})
    if len(venues) > 1:
        raise TapeError(
            f"{where} holds tapes of several venues ({', '.join(venues)}); pick one with --venue"
        )
    return [p for _, _, p in sorted(found)]
