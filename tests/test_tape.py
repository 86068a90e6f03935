"""The tape (engine/tape.py): what a live or simulated engine saw, written off the reaction path,
one gzip file per venue and UTC day, bounded on disk, read back by `replay`.

The writer is a thread; tests never sleep for it: `Tape.close()` drains the queue and joins it.
A stalled writer is a threading.Event the writer waits on.
"""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.clock import ManualClock
from engine.config import TapeConfig
from engine.models import Contract, ContractEvent, Quote, QuoteEvent, SpotEvent
from engine.replay_format import TAPE_VERSION, InfoRecord, parse_record
from engine.tape import Tape, TapeError, prune, select_tapes, tape_lines, tape_name
from tests.engine_harness import CID, T0, standard

# 2026-12-07 23:59:58 UTC: two seconds before a day change.
DAY1_END = 1_796_687_998.0
DAY1, DAY2 = "2026-12-07", "2026-12-08"


def read(path: Path) -> tuple[list[Any], list[str]]:
    warnings: list[str] = []
    recs = [parse_record(line) for line in tape_lines(path, warnings.append)]
    return [r for r in recs if r is not None], warnings


def quote(ts: float, bid: float, ask: float, cid: str = CID) -> QuoteEvent:
    return QuoteEvent(ts, Quote(cid, bid, ask, ts))


# --- round trip and rotation --------------------------------------------------------------------


def test_round_trip_rotates_at_utc_midnight(tmp_path: Path) -> None:
    clock = ManualClock(DAY1_END)
    tape = Tape(tmp_path / "tapes", "sim", clock)
    tape.start()
    c = Contract(CID, "BTC-USD", "binary_above", 97000.0, DAY1_END + 3600)
    day1 = [ContractEvent(clock.now(), c), SpotEvent(clock.now(), "BTC-USD", 97001.5)]
    for ev in day1:
        tape.record(ev)
    tape.on_exit({"ts": clock.now(), "trade_id": "t1", "rule": "max_loss", "mark": 0.3, "pnl": -2})
    clock.set(DAY1_END + 2.5)  # 00:00:00.5 the next day
    day2 = [quote(clock.now(), 0.41, 0.43)]
    for ev in day2:
        tape.record(ev)
    tape.on_journal("closed", {"ts": clock.now(), "trade_id": "t2", "reason": "external"})
    tape.close()

    first = tmp_path / "tapes" / tape_name("sim", DAY1)
    second = tmp_path / "tapes" / tape_name("sim", DAY2)
    assert sorted(p.name for p in (tmp_path / "tapes").iterdir()) == [first.name, second.name]
    recs1, w1 = read(first)
    recs2, w2 = read(second)
    assert w1 == w2 == []
    for recs, day in ((recs1, DAY1), (recs2, DAY2)):
        head = recs[0]
        assert isinstance(head, InfoRecord) and head.kind == "header"
        assert head.data["version"] == TAPE_VERSION and head.data["venue"] == "sim"
        assert head.data["day"] == day
    assert [r for r in recs1 if not isinstance(r, InfoRecord)] == day1
    assert [r.kind for r in recs1 if isinstance(r, InfoRecord)] == ["header", "exit"]
    assert [r for r in recs2 if not isinstance(r, InfoRecord)] == day2
    closed = [r for r in recs2 if isinstance(r, InfoRecord) and r.kind == "closed"]
    assert closed[0].data["trade_id"] == "t2" and closed[0].data["reason"] == "external"
    assert tape.dropped == 0


def test_a_restart_the_same_day_appends_a_session(tmp_path: Path) -> None:
    clock = ManualClock(DAY1_END - 100)
    for price in (1.0, 2.0):
        tape = Tape(tmp_path, "kalshi", clock)
        tape.start()
        tape.record(SpotEvent(clock.now(), "BTC-USD", price))
        tape.close()
    recs, warnings = read(tmp_path / tape_name("kalshi", DAY1))
    assert warnings == []
    assert [r.kind for r in recs] == ["header", "spot", "header", "spot"]
    assert [r.price for r in recs if r.kind == "spot"] == [1.0, 2.0]


# --- a torn tape (kill -9) ----------------------------------------------------------------------


def _cut_gzip(path: Path, lines: list[str], tail: str) -> None:
    """Complete lines, then half a line, sync-flushed and never finished: what a kill -9 between
    two flushes leaves."""
    with open(path, "wb") as raw:
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        gz.write("".join(lines).encode() + tail.encode())
        gz.flush()  # Z_SYNC_FLUSH: all of it is decodable, the member has no trailer


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    head = json.dumps({"ts": 1.0, "kind": "header", "version": TAPE_VERSION, "venue": "sim"})
    spot = json.dumps({"ts": 2.0, "kind": "spot", "symbol": "BTC-USD", "price": 97000.0})
    path = tmp_path / tape_name("sim", DAY1)
    _cut_gzip(path, [head + "\n", spot + "\n"], '{"ts":3.0,"kind":"sp')
    recs, warnings = read(path)
    assert [r.kind for r in recs] == ["header", "spot"]
    assert len(warnings) == 1 and "torn" in warnings[0] and str(path) in warnings[0]


def test_a_tape_cut_anywhere_reads_a_prefix_and_never_crashes(tmp_path: Path) -> None:
    clock = ManualClock(DAY1_END - 1000)
    src = tmp_path / "src"
    tape = Tape(src, "sim", clock)
    tape.start()
    events = [quote(clock.now() + i, 0.40 + i / 1000, 0.45 + i / 1000) for i in range(300)]
    for ev in events:
        tape.record(ev)
    tape.close()
    data = (src / tape_name("sim", DAY1)).read_bytes()
    cut = tmp_path / tape_name("sim", DAY1)
    for n in range(11, len(data), max(1, len(data) // 40)):
        cut.write_bytes(data[:n])  # mid deflate block, mid line, mid trailer
        recs, warnings = read(cut)
        got = [r for r in recs if not isinstance(r, InfoRecord)]
        assert got == events[: len(got)]
        assert len(warnings) == 1, (n, warnings)


def test_replay_of_a_torn_tape_warns_and_runs(tmp_path: Path, capsys: Any) -> None:
    head = json.dumps({"ts": 1.0, "kind": "header", "version": TAPE_VERSION, "venue": "sim"})
    spot = json.dumps({"ts": 2.0, "kind": "spot", "symbol": "BTC-USD", "price": 97000.0})
    path = tmp_path / tape_name("sim", DAY1)
    _cut_gzip(path, [head + "\n", spot + "\n"], '{"ts":3.0,"kind":"qu')
    assert main(["replay", str(path), "--json"]) == 0
    out = capsys.readouterr()
    assert "torn" in out.err and str(path) in out.err
    assert json.loads(out.out.splitlines()[-1])["invalid_lines"] == 0


# --- bad input: clear errors, exit 2 ------------------------------------------------------------


def test_a_tape_of_another_version_is_refused(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / tape_name("sim", DAY1)
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"ts": 1.0, "kind": "header", "version": 99, "venue": "sim"}) + "\n")
        fh.write(json.dumps({"ts": 2.0, "kind": "spot", "price": 1.0}) + "\n")
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert "version 99" in err and f"version {TAPE_VERSION}" in err and f"{path}:1" in err
    b = tmp_path / "b.toml"
    b.write_text("[auto_stop.criteria]\nmax_loss_percent = 40\n", encoding="utf-8")
    assert main(["replay", str(path), "--compare", str(b)]) == 2  # the same in a what-if
    err = capsys.readouterr().err
    assert "version 99" in err and f"{path}:1" in err


def test_a_corrupt_tape_is_refused(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / tape_name("sim", DAY1)
    path.write_bytes(b"this is not gzip at all\n")
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not a gzip tape" in err

    good = tmp_path / "good" / tape_name("sim", DAY1)
    good.parent.mkdir()
    with gzip.open(good, "wt") as fh:
        for i in range(2000):
            fh.write(json.dumps({"ts": float(i), "kind": "spot", "price": 1.0 + i}) + "\n")
    data = bytearray(good.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A  # bytes flipped mid-stream
    good.write_bytes(bytes(data))
    assert main(["replay", str(good)]) == 2
    assert "is corrupt" in capsys.readouterr().err


def test_an_empty_range_is_refused(tmp_path: Path, capsys: Any) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    rc = main(["--config", str(cfg), "replay", "--from", "2026-01-01", "--to", "2026-01-31"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no tapes in" in err and "2026-01-01" in err and "[tape] enabled" in err
    with pytest.raises(SystemExit) as exc:  # not a day: argparse's usage error
        main(["--config", str(cfg), "replay", "--from", "2026-13-01"])
    assert exc.value.code == 2
    assert "is not a day; give YYYY-MM-DD" in capsys.readouterr().err


def test_a_range_picks_the_days_in_order(tmp_path: Path) -> None:
    for day in ("2026-12-01", "2026-12-02", "2026-12-03", "2026-12-05"):
        (tmp_path / tape_name("sim", day)).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    got = select_tapes(None, tmp_path, date_from="2026-12-02", date_to="2026-12-05")
    assert [p.name for p in got] == [
        tape_name("sim", d) for d in ("2026-12-02", "2026-12-03", "2026-12-05")
    ]
    (tmp_path / tape_name("kalshi", "2026-12-03")).write_bytes(b"")
    with pytest.raises(TapeError, match="several venues"):
        select_tapes(tmp_path, tmp_path)
    assert len(select_tapes(tmp_path, tmp_path, venue="kalshi")) == 1


# --- retention ----------------------------------------------------------------------------------


def test_retention_by_keep_days_and_max_mb(tmp_path: Path) -> None:
    days = ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04", "2026-12-05"]
    for d in days:
        (tmp_path / tape_name("sim", d)).write_bytes(b"x" * 400_000)
    now = DAY1_END - 2 * 86400  # 2026-12-05 23:59:58
    gone = prune(tmp_path, keep_days=3, max_mb=100, now=now)
    assert sorted(p.name for p in gone) == [tape_name("sim", d) for d in days[:2]]
    current = tmp_path / tape_name("sim", days[-1])
    gone = prune(tmp_path, keep_days=30, max_mb=0.5, now=now, current=current)
    # 1.2 MB left, 0.5 allowed: the oldest go first, and the file being written never does.
    assert sorted(p.name for p in gone) == [tape_name("sim", d) for d in days[2:4]]
    assert [p.name for p in tmp_path.iterdir()] == [current.name]


def test_the_writer_prunes_old_days_when_it_rotates(tmp_path: Path) -> None:
    (tmp_path / tape_name("sim", "2026-11-01")).write_bytes(b"old")
    clock = ManualClock(DAY1_END)
    tape = Tape(tmp_path, "sim", clock, TapeConfig(keep_days=1))
    tape.start()
    tape.record(SpotEvent(clock.now(), "BTC-USD", 1.0))
    clock.set(DAY1_END + 5)
    tape.record(SpotEvent(clock.now(), "BTC-USD", 2.0))
    tape.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [tape_name("sim", DAY2)]


# --- never delays an exit -----------------------------------------------------------------------


async def test_a_stalled_writer_never_delays_an_exit(tmp_path: Path) -> None:
    h = await standard(tmp_path)
    tape = Tape(tmp_path / "tapes", "sim", h.clock, TapeConfig(queue_events=16))
    release = threading.Event()
    stalled = threading.Event()
    real_write = tape._write_bytes

    def stuck(data: bytes) -> None:
        stalled.set()
        release.wait(5)  # a blocking put would wait here, then find nothing dropped
        real_write(data)

    tape._write_bytes = stuck  # type: ignore[method-assign]
    tape.attach(h.engine)
    tape.start()
    try:
        for i in range(40):  # fills the queue behind the stuck writer
            h.at(i * 0.01)
            await h.quote(0.50, 0.52)
        assert stalled.wait(10)
        assert h.venue.submitted == []
        await h.quote(0.35, 0.37)  # -30 %: max_loss fires, the exit goes out at once
        assert len(h.venue.submitted) == 1
        assert [e["rule"] for e in h.exits] == ["max_loss"]
        assert tape.dropped > 0
        assert h.engine._heartbeat(h.clock.now())["tape"]["dropped"] == tape.dropped
    finally:
        release.set()
        tape.close()
        await h.close()
    dropped = tape.dropped
    recs, _ = read(tmp_path / "tapes" / tape_name("sim", _day(T0)))
    marks = [r for r in recs if isinstance(r, InfoRecord) and r.kind == "dropped"]
    assert sum(m.data["count"] for m in marks) == dropped and marks[-1].data["total"] == dropped


def _day(ts: float) -> str:
    from engine.tape import utc_day

    return utc_day(ts)


async def _heartbeat_with_drops(data: Path, dropped: int) -> None:
    from engine.store import JOURNAL_FILENAME, Store

    data.mkdir(parents=True, exist_ok=True)
    store = Store(data / JOURNAL_FILENAME)
    await store.open()
    try:
        hb = {"ts": 1.0, "wall_ts": 1.0, "venue": "sim", "mode": "dry_run", "armed": True}
        hb["tape"] = {"dropped": dropped, "file": str(data / "tapes" / "x.jsonl.gz"), "error": None}
        await store.set_state("heartbeat", hb, 1.0)
    finally:
        await store.close()


def test_status_says_the_tape_dropped_lines(tmp_path: Path, capsys: Any) -> None:
    import asyncio

    data = tmp_path / "data"
    asyncio.run(_heartbeat_with_drops(data, 7))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{data}"\n', encoding="utf-8")
    assert main(["--config", str(cfg), "status"]) == 0
    assert "tape " in (out := capsys.readouterr().out) and "7 line(s) DROPPED" in out
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tape"]["dropped"] == 7


def test_a_long_replay_shows_progress_on_a_terminal_only(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    import sys

    path = tmp_path / tape_name("sim", DAY1)
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"ts": 1.0, "kind": "header", "version": TAPE_VERSION}) + "\n")
        for i in range(2500):
            fh.write(json.dumps({"ts": 2.0 + i, "kind": "spot", "price": 97000.0}) + "\n")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["replay", str(path)]) == 0
    err = capsys.readouterr().err
    assert "replay [" in err and "file 1/1" in err and "lines" in err
    assert main(["replay", str(path), "--json"]) == 0  # quiet under --json
    assert capsys.readouterr().err == ""


async def test_a_tape_that_cannot_be_written_is_alerted_once_and_the_engine_goes_on(
    tmp_path: Path,
) -> None:
    import asyncio

    h = await standard(tmp_path)
    blocked = tmp_path / "tapes"
    blocked.write_text("a file where the tapes folder should be")
    tape = Tape(blocked, "sim", h.clock)
    tape.attach(h.engine)
    tape.start()
    try:
        for i in range(3):
            h.at(i)
            await h.quote(0.50, 0.52)
        await h.quote(0.35, 0.37)  # the exit still goes out
        assert len(h.venue.submitted) == 1
    finally:
        tape.close()
    for _ in range(20):  # the alert is raised on the engine's loop, from the writer thread
        await asyncio.sleep(0)
    await h.close()
    alerts = [a for a in h.alerts if "tape" in a.message]
    assert len(alerts) == 1
    assert str(blocked) in alerts[0].message and "[tape] enabled = false" in alerts[0].message
    assert tape.state()["error"] is not None


def test_a_combo_contract_keeps_its_legs_on_the_tape(tmp_path: Path) -> None:
    from engine.models import Leg

    clock = ManualClock(DAY1_END - 100)
    combo = Contract(
        "SPY-VERTICAL",
        "SPY",
        "combo",
        None,
        DAY1_END + 86400,
        multiplier=100.0,
        legs=(Leg("SPY-C600", 1), Leg("SPY-C610", -1)),
    )
    tape = Tape(tmp_path, "ibkr", clock)
    tape.start()
    tape.record(ContractEvent(clock.now(), combo))
    tape.close()
    recs, _ = read(tmp_path / tape_name("ibkr", DAY1))
    assert [r for r in recs if not isinstance(r, InfoRecord)] == [ContractEvent(clock.now(), combo)]


def test_what_the_tape_cannot_take_is_counted_never_raised(tmp_path: Path) -> None:
    clock = ManualClock(DAY1_END - 100)
    tape = Tape(tmp_path, "sim", clock)
    tape.start()
    tape.record(object())  # type: ignore[arg-type]  # not an event: dropped on the writer
    tape.on_exit(None)  # type: ignore[arg-type]  # not a dict: dropped at once
    tape.on_journal("fill", {"ts": clock.now(), "trade_id": "t1", "price": object()})
    tape.record(SpotEvent(clock.now(), "BTC-USD", 1.0))
    tape.close()
    assert tape.dropped == 3 and tape.error is None
    recs, _ = read(tmp_path / tape_name("sim", DAY1))
    assert [r.kind for r in recs] == ["header", "spot", "dropped"]


_WRITER = """
import sys, time
from pathlib import Path
from engine.clock import RealClock
from engine.config import TapeConfig
from engine.models import SpotEvent
from engine.tape import Tape

tape = Tape(Path(sys.argv[1]), "sim", RealClock(), TapeConfig(flush_seconds=0.05))
tape.start()
i = 0
while True:
    tape.record(SpotEvent(time.time(), "BTC-USD", 97000.0 + i))
    i += 1
    if i % 200 == 0:
        time.sleep(0.001)
"""


def test_kill_9_mid_write_loses_only_the_tail(tmp_path: Path) -> None:
    """A real process taping without pause, killed with SIGKILL once its tape holds data: every
    line read back is whole and in order; at most one warning; never an error."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until a few flushes are on disk
            files = list(tmp_path.iterdir())
            if files and files[0].stat().st_size > 20_000:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the writer process wrote nothing")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    [path] = list(tmp_path.iterdir())
    recs, warnings = read(path)
    spots = [r for r in recs if not isinstance(r, InfoRecord)]
    assert len(spots) > 100 and recs[0].kind == "header"
    prices = [s.price for s in spots]
    assert prices == [97000.0 + i for i in range(len(prices))]  # whole lines, in order, no gap
    assert len(warnings) <= 1
