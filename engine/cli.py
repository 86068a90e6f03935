"""The `trade-supervisor` command line.

    trade-supervisor [--config PATH] [--headless]        run (the UI, or the engine alone)
    trade-supervisor status                              is an engine running, mode, data ages, trades
    trade-supervisor trades add|list|close               the manual journal
    trade-supervisor record OUT.jsonl                    record a simulated session
    trade-supervisor replay FILE.jsonl [--json]          replay a session through the engine
    trade-supervisor metrics [--since D] [--json|--csv]  trade analytics from the journal
    trade-supervisor check-config                        print the effective config or its errors
    trade-supervisor start | stop [--yes]                the engine as a background service
    trade-supervisor attach [--socket PATH] [--read-only]  the screen on a running engine
    trade-supervisor arm|disarm|pause [ID]|resume [ID]|kill-switch on|off|close ID|close-all|reload
                                                         commands to the running engine

Exit codes: 0 ok, 1 a runtime failure (journal locked, bad journal), 2 a bad config or bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.config import (
    Config,
    ConfigError,
    config_warnings,
    load_config,
    resolve_config_path,
)
from engine.store import JOURNAL_FILENAME, Store, StoreError
from engine.text import shown
from engine.trade_rows import BadRow, RowContext, trade_problem

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trade-supervisor",
        description="Watch open positions and close them by auto-stop rules.",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: ./config.toml, then the user's config dir)",
    )
    p.add_argument("--headless", action="store_true", help="run the engine without the screen")
    p.add_argument(
        "--read-only",
        action="store_true",
        help="attach the screen to the running engine read-only (it refuses every command)",
    )
    # `--config` is also accepted after the command (`replay FILE --config CFG`); SUPPRESS keeps a
    # value given before the command when none is given after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_parser_with(common))

    sub.add_parser("check-config", help="print the effective config, or the errors in it")
    st = sub.add_parser("status", help="running state, mode, armed, data ages, open trades")
    st.add_argument("--json", action="store_true", help="print JSON")

    tr = sub.add_parser("trades", help="the manual journal for trades opened elsewhere")
    tsub = tr.add_subparsers(
        dest="trades_cmd", metavar="ACTION", required=True, parser_class=_parser_with(common)
    )
    add = tsub.add_parser("add", help="journal an open trade for the supervisor to watch")
    add.add_argument("--id", required=True, dest="trade_id")
    add.add_argument("--contract", required=True)
    add.add_argument("--side", required=True, choices=["yes", "no", "long", "short"])
    add.add_argument("--qty", required=True, type=float)
    add.add_argument("--price", required=True, type=float, help="entry price, dollars per contract")
    add.add_argument("--strategy", default="")
    add.add_argument(
        "--opened", type=float, default=None, help="open time, Unix seconds (default: now)"
    )
    lst = tsub.add_parser("list", help="list open trades (--all: closed ones too)")
    lst.add_argument("--all", action="store_true")
    lst.add_argument("--json", action="store_true")
    cl = tsub.add_parser("close", help="record that a trade was closed elsewhere (sends no order)")
    cl.add_argument("trade_id")
    cl.add_argument(
        "--price", type=float, default=None, help="the exit price, dollars per contract"
    )

    rec = sub.add_parser("record", help="record a simulated session in the replay format")
    rec.add_argument("out", metavar="OUT.jsonl")
    rec.add_argument(
        "--duration",
        type=float,
        default=600.0,
        help="seconds of market time to record (default 600)",
    )
    rec.add_argument(
        "--speed", type=float, default=None, help="market-time speed factor (default: [sim] speed)"
    )
    rec.add_argument("--db", default=None, help="journal to use (default: a temporary one)")

    me = sub.add_parser("metrics", help="trade analytics from the journal (closed trades)")
    me.add_argument(
        "--since", type=_since, default=None, metavar="YYYY-MM-DD", help="closed on or after (UTC)"
    )
    me.add_argument("--strategy", default=None, help="only trades of this strategy tag")
    fmt = me.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print every number as JSON")
    fmt.add_argument("--csv", action="store_true", help="print one CSV row per trade")

    rp = sub.add_parser("replay", help="run a recorded session or taped days through the engine")
    rp.add_argument(
        "file",
        metavar="FILE.jsonl",
        nargs="?",
        default=None,
        help="a recording, a tape (.jsonl.gz) or a folder of tapes (default: data_dir/tapes/)",
    )
    rp.add_argument(
        "--from",
        dest="date_from",
        type=_day,
        default=None,
        metavar="YYYY-MM-DD",
        help="the tapes of data_dir/tapes/ (or of the folder given) from this UTC day on",
    )
    rp.add_argument(
        "--to",
        dest="date_to",
        type=_day,
        default=None,
        metavar="YYYY-MM-DD",
        help="... up to this UTC day, included",
    )
    rp.add_argument(
        "--venue", default=None, help="the tapes of this venue only (sim, kalshi, ibkr)"
    )
    rp.add_argument("--json", action="store_true", help="print JSON Lines (exits, alerts, summary)")
    rp.add_argument("--db", default=None, help="journal to write (default: a temporary one)")
    rp.add_argument(
        "--compare",
        metavar="B.toml",
        default=None,
        help="what-if: run the session under the config and under B.toml, print the difference",
    )
    _add_service_commands(sub)
    return p


# The engine as a service and the verbs against a running one (engine/service.py).
SERVICE_COMMANDS = (
    "start",
    "stop",
    "arm",
    "disarm",
    "pause",
    "resume",
    "kill-switch",
    "close",
    "close-all",
    "reload",
    "attach",
)


def _add_service_commands(sub: Any) -> None:
    sub.add_parser("start", help="start the engine in the background (its own session)")
    sp = sub.add_parser("stop", help="stop the running engine (asks first)")
    sp.add_argument("--yes", action="store_true", help="do not ask")
    sub.add_parser("arm", help="running engine: send automatic exits")
    sub.add_parser("disarm", help="running engine: signal exits, do not send them")
    pa = sub.add_parser("pause", help="running engine: pause one trade's auto-stop, or all")
    pa.add_argument("trade_id", nargs="?", default=None, metavar="ID")
    re_ = sub.add_parser("resume", help="running engine: resume one trade's auto-stop, or all")
    re_.add_argument("trade_id", nargs="?", default=None, metavar="ID")
    ks = sub.add_parser("kill-switch", help="running engine: pause (on) or resume (off) all exits")
    ks.add_argument("state", choices=["on", "off"])
    cl = sub.add_parser("close", help="running engine: send an exit for one trade now")
    cl.add_argument("trade_id", metavar="ID")
    ca = sub.add_parser("close-all", help="running engine: send an exit for every open trade")
    ca.add_argument("--yes", action="store_true", help="do not ask for the typed word")
    sub.add_parser("reload", help="running engine: re-read the config file")
    at = sub.add_parser("attach", help="the screen, attached to a running engine")
    at.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help="the engine's control socket (default: the one of this config's data_dir; "
        "e.g. a socket forwarded with ssh -L)",
    )
    at.add_argument("--read-only", action="store_true", help="show everything, refuse commands")


def _service(config: Config, path: Path | None, args: argparse.Namespace) -> int:
    from engine import service

    if args.cmd == "start":
        return service.start(config, path)
    if args.cmd == "stop":
        return service.stop(config, args.yes)
    if args.cmd == "attach":
        from tui.app import run_attached

        sock = Path(args.socket).expanduser() if args.socket else None
        return run_attached(config, path, socket_path=sock, read_only=args.read_only)
    arg = getattr(args, "trade_id", None) or getattr(args, "state", None)
    return service.verb(config, args.cmd, arg, yes=getattr(args, "yes", False))


def _parser_with(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """A parser class whose instances also take the options of `common` (e.g. `--config`)."""

    class _Sub(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["parents"] = [*kwargs.get("parents", []), common]
            super().__init__(*args, **kwargs)

    return _Sub


def main(argv: list[str] | None = None) -> int:
    """The command line; a reader that goes away (`... | head`) ends a command quietly, exit 0.
    Not the engine itself: its stdout alerts switch themselves off (engine.alerts.PrintChannel),
    and a broken pipe anywhere else (a venue's socket) is a fault, never a quiet exit."""
    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:  # --help | head
        _stdout_to_devnull()
        return EXIT_OK
    if args.cmd is None:
        return _main(args)
    try:
        return _main(args)
    except BrokenPipeError:
        _stdout_to_devnull()  # what is still buffered would fail again at exit
        return EXIT_OK


def _stdout_to_devnull() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _main(args: argparse.Namespace) -> int:
    try:
        config, path = _load(args.config, secretless=args.cmd in SECRETLESS_COMMANDS)
    except ConfigError as e:
        print("\n".join(e.lines), file=sys.stderr)
        print(
            "trade-supervisor: not started; fix the config (nothing was written)", file=sys.stderr
        )
        return EXIT_CONFIG
    writes = args.cmd in (None, "check-config", "start") or (
        args.cmd == "trades" and args.trades_cmd in ("add", "close")
    )
    reads = args.cmd in ("status", "metrics", "trades")  # record/replay: a journal of their own
    problem = config.data_dir_problem(writable=writes) if writes or reads else None
    if problem is not None:  # before anything else: a file in the way, an unwritable parent
        print(f"trade-supervisor: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.cmd is None:  # the engine starts: say what in the config probably does nothing
        for w in config_warnings(config):
            print(f"trade-supervisor: warning: {w}", file=sys.stderr)
    try:
        if args.cmd == "check-config":
            return _check_config(config, path)
        if args.cmd in SERVICE_COMMANDS:
            return _service(config, path, args)
        if args.cmd == "status":
            return asyncio.run(_status(config, args.json))
        if args.cmd == "trades":
            return asyncio.run(_trades(config, args))
        if args.cmd == "metrics":
            return asyncio.run(_metrics(config, args))
        if args.cmd == "replay":
            return asyncio.run(_replay(config, args))
        if args.cmd == "record":
            return asyncio.run(_record(config, path, args))
        if args.read_only and not args.headless:
            from tui.app import run_attached

            return run_attached(config, path, read_only=True)
        return _run(config, path, args.headless)
    except StoreError as e:
        print(f"trade-supervisor: {e}", file=sys.stderr)
        return EXIT_FAIL
    except ConfigError as e:  # the screen's own settings (attach, --read-only)
        print("\n".join(e.lines), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


# Commands that never use the venue's secrets: a config without the Kalshi key still serves
# them (the key is checked, as always, by the engine that needs it).
SECRETLESS_COMMANDS = frozenset(SERVICE_COMMANDS) - {"start", "attach"} | {"status"}
_KEY_PLACEHOLDERS = {"KALSHI_API_KEY_ID": "unused", "KALSHI_PRIVATE_KEY_PATH": "unused"}


def _load(explicit: str | None, secretless: bool = False) -> tuple[Config, Path | None]:
    path = resolve_config_path(explicit)
    try:
        return load_config(path), path
    except ConfigError as e:
        if not secretless or not all("needs your Kalshi API key" in line for line in e.lines):
            raise
    # Only the missing key was wrong: read the rest with placeholders that nothing uses.
    saved = {k: os.environ.get(k) for k in _KEY_PLACEHOLDERS}
    try:
        os.environ.update({k: v for k, v in _KEY_PLACEHOLDERS.items() if not os.environ.get(k)})
        return load_config(path), path
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_config(config: Config, path: Path | None) -> int:
    # The screen's settings (theme, colours) are checked by the screen's own code, imported
    # here only, so that the engine itself never loads the UI toolkit.
    from tui.app import ui_config_problems

    problems = ui_config_problems(config, str(path or "config"))
    problems += _start_problems(config)
    for w in config_warnings(config):
        print(f"warning: {w}", file=sys.stderr)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_CONFIG
    src = str(path) if path else "built-in defaults (no config file found)"
    print(f"# effective config, from {src}; secrets are hidden")
    print(config.redacted_toml(), end="")
    return EXIT_OK


def _start_problems(config: Config) -> list[str]:
    """What would stop the engine from starting that can be known without the network: the
    Kalshi key file (its permissions, that it parses), the journal (a file that is not one, a
    newer schema), the alert log, and an engine already running on this data_dir. The
    data_dir itself is checked before (`Config.data_dir_problem`). Warnings are printed here."""
    from engine import private_files

    out: list[str] = []
    if config.engine.venue == "kalshi":
        from engine.runtime import _kalshi_signer

        try:
            _kalshi_signer(config)
        except ConfigError as e:
            out += e.lines
    journal = _journal(config)
    pid = Store(journal).engine_pid()
    if pid is not None:
        out.append(
            f"engine.data_dir = {str(config.data_path())!r}: another trade-supervisor (pid {pid}) "
            "is running on this journal, so the engine would refuse to start; stop it first, "
            f"or use another data_dir (to apply this config to the running one: kill -HUP {pid})"
        )
    elif journal.exists():
        problem = asyncio.run(_journal_problem(journal))
        if problem is not None:
            out.append(f"engine.data_dir: {problem}")
    for loose in private_files.loose(config.data_path()):
        print(
            f"warning: {loose}: readable by other users; the engine makes it private (0600) "
            "at its next start",
            file=sys.stderr,
        )
    log = config.alert_log_path()
    if config.alerts.log_file and log.exists():
        if not log.is_file():
            out.append(
                f"alerts.log_file = {config.alerts.log_file!r}: {log} is not a regular file; "
                "move it aside or set another log_file"
            )
        elif not os.access(log, os.W_OK):
            out.append(
                f"alerts.log_file = {config.alerts.log_file!r}: {log} is not writable; "
                "fix its permissions or set another log_file"
            )
    return out


async def _journal_problem(path: Path) -> str | None:
    """Why the engine could not open the journal at `path` (not ours, newer, or a live engine
    on it whose lock file was deleted: its fresh heartbeat says so), or None."""
    from engine.store import LIVE_HEARTBEAT_SECONDS, _pid_alive

    store = Store(path)
    try:
        await store.open(readonly=True)
    except StoreError as e:
        return str(e)
    try:
        hb = await store.get_state("heartbeat") or {}
    finally:
        await store.close()
    pid, wall = hb.get("pid"), hb.get("wall_ts")
    if (
        isinstance(pid, int)
        and pid > 0
        and pid != os.getpid()
        and isinstance(wall, int | float)
        and abs(time.time() - wall) < LIVE_HEARTBEAT_SECONDS
        and _pid_alive(pid)
    ):
        return (
            f"another trade-supervisor (pid {pid}) is using {path}: its heartbeat is "
            f"{max(time.time() - wall, 0):.0f}s old, though its lock file was deleted; the engine "
            f"would refuse to start: stop it first (kill {pid}) or use another data_dir"
        )
    return None


def _run(config: Config, path: Path | None, headless: bool) -> int:
    from engine.runtime import run_headless

    if not headless:
        from tui.app import run_app

        try:
            return int(run_app(config, path) or 0)
        except ConfigError as e:
            print("\n".join(e.lines), file=sys.stderr)
            print(
                "trade-supervisor: not started; fix the config (nothing was written)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    return asyncio.run(run_headless(config, path))


def _journal(config: Config) -> Path:
    return config.data_path() / JOURNAL_FILENAME


HEARTBEAT_AGE_GRACE_SECONDS = 5.0  # 2.5 x engine.supervisor.HEARTBEAT_SECONDS (not imported: start-up cost)


def _fmt_age(age: Any) -> str:
    return "never" if age is None else f"{age:.0f}s"


def _fmt_secs(seconds: float) -> str:
    """An age: "0.4s", "12s", "3m05s", "2h10m" (a sub-second age keeps its tenth)."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _live_picture(config: Config) -> dict[str, Any] | None:
    """Open P&L, risk and source health from the running engine's control socket (None when
    it does not answer within a few seconds: `status` then shows what the journal says)."""
    from engine import control

    try:
        with control.ControlClient(control.socket_path(config), timeout=3.0) as c:
            c.request(control.SnapshotRequest)  # the snapshot comes just before its result
    except control.ControlError:
        return None
    snap = c.last_snapshot
    if snap is None:
        return None
    risk = snap["risk"]
    return {
        "open_pnl": sum(t["pnl"] or 0.0 for t in snap["trades"]),
        "day_pnl": risk["daily_pnl"],
        "at_risk": risk["total_at_risk"],
        "open_positions": risk["open_positions"],
        "breaches": list(risk["breaches"]),
        "sources": {h["name"]: (h["age_seconds"], h["stale"]) for h in snap["health"]},
        "trades": {t["trade_id"]: {"mark": t["mark"], "pnl": t["pnl"]} for t in snap["trades"]},
    }


def _live_pnl(live: dict[str, Any] | None, trade_id: str) -> str:
    t = (live or {}).get("trades", {}).get(trade_id)
    if not t or t["pnl"] is None:
        return ""
    return f"  mark {t['mark']:.4f}  P&L {t['pnl']:+.2f}"


def _fmt_since(age: float) -> str:
    """A time since, rounded up: a dead engine is never "0s ago"."""
    s = max(1, int(-(-age // 1)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _unprotected_now(
    info: dict[str, Any], hb: dict[str, Any], trades: list[Any], limit_default: float
) -> dict[str, str]:
    """The open trades nobody is protecting right now, by trade id, with the reason: the
    engine's own watchdog while it runs and answers; every open trade when it is not running
    or its heartbeat is older than the watchdog's limit (a hung or dead engine says nothing)."""
    limit = hb.get("unprotected_after_seconds") or limit_default
    age = info["heartbeat_age_seconds"]
    if not info["running"]:
        why = "the engine is not running"
        return {t.trade_id: why for t in trades}
    if age is None or age > max(limit, 2 * HEARTBEAT_AGE_GRACE_SECONDS):
        why = f"the engine has not written its heartbeat for {_fmt_age(age)}"
        return {t.trade_id: why for t in trades}
    open_ids = {t.trade_id for t in trades}
    return {k: v for k, v in (hb.get("unprotected") or {}).items() if k in open_ids}


def _protection_lines(info: dict[str, Any], hb: dict[str, Any], n_open: int) -> list[str]:
    bad = info["unprotected"]
    closed = info.get("market_closed") or []
    if not n_open:
        return []
    lines = []
    if closed:
        lines.append(
            f"market closed: {len(closed)} trade{'s' if len(closed) != 1 else ''} "
            f"({', '.join(shown(t) for t in closed[:8])}); watched again from the open"
        )
    if not bad:
        return [f"protection: all {n_open - len(closed)} open trades protected", *lines]
    lines.insert(0, f"UNPROTECTED: {len(bad)} of {n_open} open trades")
    lines[1:1] = [f"  {shown(tid):<24} {shown(why)}" for tid, why in sorted(bad.items())]
    return lines


async def _status(config: Config, as_json: bool) -> int:
    path = _journal(config)
    store = Store(path)
    pid = store.engine_pid()
    if not path.exists():
        print(f"no journal at {path}: the supervisor has not run with this data_dir yet")
        return EXIT_OK
    await store.open(readonly=True)
    try:
        hb = await store.get_state("heartbeat") or {}
        trades = await store.load_trades(ctx=_row_context(config))
        bad = [b for b in store.last_bad_rows if b.watched]
    finally:
        await store.close()
    age = time.time() - hb["wall_ts"] if hb.get("wall_ts") else None
    info = {
        "running": pid is not None,
        "pid": pid,
        "journal": str(path),
        "heartbeat_age_seconds": age,
        "venue": hb.get("venue"),
        "mode": hb.get("mode"),
        "armed": hb.get("armed"),
        "paused_all": hb.get("paused_all"),
        "sources": hb.get("sources", {}),
        "bad_data": hb.get("bad_data", {}),
        "tape": hb.get("tape"),  # {"dropped": N, "file": ..., "error": ...} when taping
        "open_trades": [
            {
                "trade_id": t.trade_id,
                "contract": t.contract_id,
                "side": t.side,
                "qty": t.qty,
                "entry": t.entry_price,
                "paused": t.paused,
                "state": str(t.state),
            }
            for t in trades
        ],
        "bad_rows": [b.data() for b in bad],
    }
    info["unprotected"] = _unprotected_now(
        info, hb, trades, config.engine.unprotected_limit()
    )
    # trades whose market is closed (IBKR's nights): not counted unprotected, watched from the open
    info["market_closed"] = (
        [t for t in hb.get("market_closed") or [] if t not in info["unprotected"]]
        if info["running"]
        else []
    )
    # exits waiting (IB's market closed: "exit due at the open"; other clients' orders)
    info["exits_held"] = hb.get("exits_held") or {} if info["running"] else {}
    live = _live_picture(config) if pid is not None else None
    if live is not None:
        info["live"] = live
    if as_json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    running = f"running (pid {pid})" if pid is not None else "not running"
    print(f"engine:  {running}; journal {path}")
    if live is not None:
        print(
            f"live: open P&L {live['open_pnl']:+.2f}, day P&L {live['day_pnl']:+.2f}, at risk "
            f"{live['at_risk']:.2f} over {live['open_positions']} position(s)"
            + (f"; RISK: {'; '.join(live['breaches'])}" if live["breaches"] else "")
        )
        for name, (age_s, stale) in live["sources"].items():
            fresh = f"{age_s:.1f}s old" if age_s is not None else "no data yet"
            print(f"  {shown(name):<20} {fresh}{'  STALE' if stale else ''}")
    if hb and pid is None and age is not None:
        # A stopped or dead engine: how long ago it was last heard from, and what that means.
        n = len(trades)
        print(
            f"last seen {_fmt_since(age)} ago (its last heartbeat, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(hb['wall_ts']))}): "
            + (
                f"its {n} open trade(s) are UNPROTECTED until an engine runs again "
                "(`trade-supervisor start`)"
                if n
                else "no open trades"
            )
        )
    if hb:
        print(
            f"last heartbeat {_fmt_age(age) if pid is not None or age is None else _fmt_since(age)} ago: venue {hb.get('venue')}, mode {hb.get('mode')}, "
            f"{'ARMED' if hb.get('armed') else 'disarmed'}{', ALL PAUSED' if hb.get('paused_all') else ''}"
        )
        for name, a in (hb.get("sources") or {} if live is None else {}).items():
            # The age as the heartbeat saw it, plus the heartbeat's own age: its age now.
            now_age = a + age if isinstance(a, int | float) and age is not None else a
            print(
                f"  {shown(name):<20} "
                + (
                    f"last update {_fmt_secs(now_age)} ago"
                    if isinstance(now_age, int | float)
                    else "no update yet"
                )
            )
        for k, v in (hb.get("bad_data") or {}).items():
            print(f"  BAD DATA {shown(str(k))}: {shown(str(v))}")
        tape = hb.get("tape")
        if isinstance(tape, dict):
            print(
                f"  tape {tape.get('file') or '(not written yet)'}"
                + (
                    f": {tape['dropped']} line(s) DROPPED (the writer fell behind)"
                    if tape.get("dropped")
                    else ""
                )
                + (f"; WRITE FAILED: {tape['error']}" if tape.get("error") else "")
            )
    for line in _protection_lines(info, hb, len(trades)):
        print(line)
    for tid, why in sorted(info["exits_held"].items()):
        words = "exit due at the open" if why.startswith("MARKET_CLOSED") else "exit held"
        print(f"  {tid:<24} {words}: {why}")
    print(f"open trades: {len(trades)}")
    if bad:
        print(f"bad rows (not supervised): {len(bad)}")
        for b in bad:
            print(f"  {shown(b.message())}")
    for t in trades:
        print(
            f"  {shown(t.trade_id):<24} {t.side:<5} {t.qty:>8g} {shown(t.contract_id):<28} "
            f"@ {t.entry_price:.4f}"
            f"{'  paused' if t.paused else ''}{'  closing' if str(t.state) == 'closing' else ''}"
            + _live_pnl(live, t.trade_id)
        )
    return EXIT_OK


async def _trades(config: Config, args: argparse.Namespace) -> int:
    from engine.models import Trade

    path = _journal(config)
    store = Store(path)
    if args.trades_cmd == "list":
        if not path.exists():
            print(f"no journal at {path}")
            return EXIT_OK
        await store.open(readonly=True)
        try:
            # Every row, a bad one shown as bad (engine.trade_rows), never a crash.
            rows = await store.trade_rows(
                100000, _row_context(config), () if args.all else ("open", "closing")
            )
        finally:
            await store.close()
        if not args.all:
            rows.reverse()  # open trades oldest first, as the engine lists them
        trades = [t for t in rows if isinstance(t, Trade)]
        bad = [b for b in rows if isinstance(b, BadRow)]
        if args.json:
            print(json.dumps([_row_json(t) for t in rows], indent=2))
        else:
            for t in rows:
                if isinstance(t, BadRow):
                    print(
                        f"{shown(t.shown_id):<24} BAD: {shown(t.problem)} (row {t.rowid}; "
                        f"fix: {t.fix})"
                    )
                    continue
                exit_part = (
                    f" -> {t.exit_price:.4f} {shown(t.exit_reason)} P&L {t.realized_pnl:+.2f}"
                    if t.exit_price is not None and t.realized_pnl is not None
                    else (f" -> {shown(t.exit_reason)}" if t.exit_reason else "")
                )
                print(
                    f"{shown(t.trade_id):<24} {t.state!s:<7} {t.side:<5} {t.qty:>8g} "
                    f"{shown(t.contract_id):<28} "
                    f"@ {t.entry_price:.4f}{exit_part}"
                )
            print(
                f"{len(trades)} trade(s)"
                + (f", {len(bad)} bad row(s) the supervisor does not watch" if bad else "")
            )
        return EXIT_OK
    pid = store.engine_pid()
    await store.open(lock=False)
    try:
        if args.trades_cmd == "add":
            t = Trade(
                trade_id=args.trade_id,
                contract_id=args.contract,
                side=args.side,
                qty=args.qty,
                entry_price=args.price,
                opened_ts=args.opened or time.time(),
                strategy=args.strategy,
                venue=config.engine.venue,
            )
            problem = trade_problem(t, _row_context(config), source="manual")
            if problem:
                print(
                    f"trade-supervisor: trades add: {problem}; nothing was written",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
            if not await store.add_trade(t, source="manual"):
                print(f"trade {args.trade_id!r} already exists in {path}", file=sys.stderr)
                return EXIT_FAIL
            note = (
                "the running engine picks it up within seconds"
                if pid
                else "watched from the next start"
            )
            print(
                f"journaled {t.trade_id}: {t.side} {t.qty:g} {t.contract_id} @ {t.entry_price}; {note}"
            )
            return EXIT_OK
        # close
        t = await store.get_trade(args.trade_id)
        if t is None and store.last_bad_rows:
            b = store.last_bad_rows[0]
            print(
                f"{b.message()}: `trades close` cannot close a row the supervisor cannot read",
                file=sys.stderr,
            )
            return EXIT_FAIL
        if t is None or str(t.state) == "closed":
            print(f"no open trade {args.trade_id!r} in {path}", file=sys.stderr)
            return EXIT_FAIL
        if pid is not None:
            await store.add_command("journal_close", t.trade_id, {"price": args.price}, time.time())
            print(f"queued for the running engine (pid {pid}): {t.trade_id} closed elsewhere")
            return EXIT_OK
        from engine.pricing import close_record

        qty_open = t.qty
        close_record(t, args.price, "manual", time.time())
        await store.save_trade(t)
        # A simulated account lets go of the position when the engine next starts.
        await store.add_command(
            "release_position",
            t.trade_id,
            {"contract_id": t.contract_id, "side": t.side, "qty": qty_open, "venue": t.venue},
            time.time(),
        )
        await store.add_audit(
            time.time(), t.trade_id, "closed", {"reason": "manual", "price": args.price}
        )
        print(
            f"{t.trade_id} marked closed" + (f" at {args.price}" if args.price is not None else "")
        )
        return EXIT_OK
    finally:
        await store.close()


def _row_context(config: Config) -> RowContext:
    """Rows are judged as the configured engine would judge them (its venue, the time now)."""
    return RowContext(venue=config.engine.venue, now=time.time())


def _row_json(r: Any) -> dict[str, Any]:
    if isinstance(r, BadRow):
        return {
            "rowid": r.rowid,
            "trade_id": r.data()["trade_id"],
            "state": r.state if isinstance(r.state, str) else repr(r.state),
            "bad": {"field": r.field, "problem": r.problem, "fix": r.fix},
        }
    return _trade_json(r)


def _trade_json(t: Any) -> dict[str, Any]:
    return {
        k: getattr(t, k) if not hasattr(getattr(t, k), "value") else getattr(t, k).value
        for k in (
            "trade_id",
            "contract_id",
            "side",
            "qty",
            "entry_price",
            "opened_ts",
            "strategy",
            "venue",
            "state",
            "paused",
            "fees",
            "peak_pnl",
            "peak_pnl_pct",
            "closed_ts",
            "exit_price",
            "exit_reason",
            "realized_pnl",
        )
    }


def _since(text: str) -> float:
    """`--since YYYY-MM-DD` (or an ISO date-time; UTC unless it says otherwise) -> Unix seconds."""
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


async def _metrics(config: Config, args: argparse.Namespace) -> int:
    """`metrics`: per-trade numbers, aggregates and auto-stop effectiveness (engine/analytics.py)."""
    from engine import analytics

    def thresholds(t: Any) -> tuple[float | None, float | None]:
        try:
            c = config.auto_stop.criteria_for(t.strategy, t.overrides)
        except ValueError:  # overrides the config no longer accepts: use the strategy's
            c = config.auto_stop.criteria_for(t.strategy)
        return c.profit_target_percent, c.max_loss_percent

    path = _journal(config)
    if not path.exists():
        if not (args.json or args.csv):
            print(f"no journal at {path}")
            return EXIT_OK
        report = analytics.build_report([])
    else:
        store = Store(path)
        await store.open(readonly=True)  # reads only: works beside a running engine
        try:
            report = await analytics.load_report(
                store, since=args.since, strategy=args.strategy, thresholds=thresholds
            )
        finally:
            await store.close()
    since_text = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(args.since)).replace(" 00:00:00", "")
        if args.since is not None
        else None
    )
    report.filters.update(since=args.since, since_text=since_text, strategy=args.strategy)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif args.csv:
        sys.stdout.write(analytics.format_csv(report))
    else:
        sys.stdout.write(analytics.format_text(report))
    return EXIT_OK


async def _replay(config: Config, args: argparse.Namespace) -> int:
    from engine.replay import print_jsonl, replay
    from engine.replay_format import TapeVersionError
    from engine.tape import TapeError

    try:
        fh = _replay_source(config, args)
    except (OSError, TapeError) as e:
        print(f"trade-supervisor: {e}", file=sys.stderr)
        return EXIT_CONFIG
    config = config.model_copy(deep=True)
    config.alerts.log_file = ""
    config.tape.enabled = False  # a replay never tapes

    def on_error(n: int, msg: str) -> None:
        print(f"{fh.where(n)}: skipped: {msg}", file=sys.stderr)

    try:
        return await _replay_run(config, args, fh, on_error, print_jsonl, replay)
    except (TapeError, TapeVersionError) as e:
        where = fh.where(None) if isinstance(e, TapeVersionError) else ""  # TapeError names it
        print(
            f"trade-supervisor: {where}: {e}" if where else f"trade-supervisor: {e}",
            file=sys.stderr,
        )
        return EXIT_CONFIG


async def _replay_run(
    config: Config,
    args: argparse.Namespace,
    fh: Any,
    on_error: Any,
    print_jsonl: Any,
    replay: Any,
) -> int:
    if args.compare:
        with fh:
            fh.materialize()  # both runs read the same lines; errors still name file:line
            return await _replay_compare(config, args, fh, on_error)
    if args.json:
        emit = print_jsonl(sys.stdout)
    else:

        def emit(obj: dict[str, Any]) -> None:
            if obj["event"] == "exit":
                print(
                    f"{_hms(obj['ts'])} EXIT  {obj['trade_id']:<16} {obj['rule']:<18} "
                    f"mark {obj['mark']:.4f}  P&L {obj['pnl']:+.2f} ({obj['pnl_pct']:+.1f}%)"
                )
            else:
                print(
                    f"{_hms(obj['ts'])} {obj['severity']:<8} {obj['kind']:<17} {obj.get('message', '')}"
                )

    with fh:
        result = await replay(
            fh, config, db_path=Path(args.db) if args.db else None, emit=emit, on_error=on_error
        )
    summary = result.summary()
    from engine.replay import live_differences

    taped = any(r.kind == "header" for r in result.taped)
    diffs = live_differences(result)
    dropped = sum(int(r.data.get("count", 0)) for r in result.taped if r.kind == "dropped")
    if args.json:
        if taped:  # a tape: what ended differently from the live session
            emit({"event": "live_vs_replay", "trades": diffs, "dropped_lines": dropped})
        emit(summary)
    else:
        print(
            f"summary: {summary['trades']} trades, {summary['exits']} exits, {summary['alerts']} alerts"
            f", {summary['invalid_lines']} invalid lines skipped"
        )
        if taped:
            for line in _live_lines(diffs, dropped):
                print(line)
    return EXIT_OK


def _live_lines(diffs: list[dict[str, Any]], dropped: int) -> list[str]:
    """The tape's live session against the replay, as text."""

    def end(x: dict[str, Any]) -> str:
        if x["rule"] == "open":
            return "still open"
        price = f" at {x['price']:.4f}" if x.get("price") is not None else ""
        return f"{x['rule']} {_hms(x['ts']) if x.get('ts') else ''}{price}"

    out = []
    if not diffs:
        out.append("live vs replay: every trade ended as it did live")
    else:
        out.append(f"live vs replay: {len(diffs)} trade(s) ended differently")
        for d in diffs:
            out.append(f"  {d['trade_id']:<24} live {end(d['live'])}; replay {end(d['replay'])}")
        out.append(
            "  (a replay fills at the mark on a paper venue: live fills at the book, after ladder "
            "steps, and external closes are not reproduced; see docs/tape-format.md)"
        )
    if dropped:
        out.append(f"  the tape lacks {dropped} line(s) dropped while it was written")
    return out


async def _replay_compare(config: Config, args: argparse.Namespace, fh: Any, on_error: Any) -> int:
    """`replay FILE --compare B.toml`: the session under A (this config) and under B."""
    from engine.replay import compare_replays, format_comparison

    if args.db:
        print("trade-supervisor: --db cannot be used with --compare", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config_b = load_config(Path(args.compare))
    except ConfigError as e:
        print("\n".join(e.lines), file=sys.stderr)
        print(f"trade-supervisor: --compare {args.compare}: fix the config", file=sys.stderr)
        return EXIT_CONFIG
    path_a = resolve_config_path(args.config)
    label_a = str(path_a) if path_a else "built-in defaults"
    cmp = await compare_replays(fh, config, config_b, on_error=on_error)
    if args.json:
        print(json.dumps(cmp.to_json(label_a, args.compare), separators=(",", ":")))
    else:
        print(format_comparison(cmp, label_a, args.compare))
    return EXIT_OK


def _day(text: str) -> str:
    """A `--from/--to` value: a UTC day, YYYY-MM-DD."""
    try:
        return time.strftime("%Y-%m-%d", time.strptime(text, "%Y-%m-%d"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day; give YYYY-MM-DD") from None


class _ReplayLines:
    """The lines of the files to replay, in order, knowing which file and line each came from
    (for `FILE:LINE: skipped` messages); a cut tape's warning goes to stderr."""

    def __init__(self, paths: list[Path], progress: bool = False) -> None:
        self.paths = paths
        self._name: str | None = None
        self._lineno = 0
        self._index: list[tuple[str, int]] | None = None
        self._lines: list[str] | None = None
        # On a terminal (and not --json): one progress line on stderr, rewritten as it goes.
        self.progress = progress
        self._shown = 0.0
        self._total = 0

    def _warn(self, msg: str) -> None:
        print(f"trade-supervisor: warning: {msg}", file=sys.stderr)

    def _iter(self) -> Any:
        from engine.replay_format import ReplayLineError, parse_record
        from engine.tape import tape_lines

        for i, p in enumerate(self.paths, start=1):
            self._name, self._lineno = str(p), 0
            for line in tape_lines(p, self._warn):
                self._lineno += 1
                self._total += 1
                if '"header"' in line:  # another version: refused here, naming this file:line
                    with contextlib.suppress(ReplayLineError):
                        parse_record(line)
                if self.progress and not self._total % 1000:
                    self._show(i, p)
                yield line
        if self.progress and self._shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)

    def _show(self, i: int, p: Path) -> None:
        now = time.monotonic()
        if now - self._shown < 0.2:
            return
        self._shown = now
        done = (i - 1) / len(self.paths)
        bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
        print(
            f"\r\033[Kreplay [{bar}] file {i}/{len(self.paths)} {p.name}: {self._total:,} lines",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def __iter__(self) -> Any:
        return iter(self._lines) if self._lines is not None else self._iter()

    def materialize(self) -> None:
        self._index, self._lines = [], []
        for line in self._iter():
            self._lines.append(line)
            self._index.append((self._name or "", self._lineno))

    def where(self, n: int | None) -> str:
        if n is not None and self._index is not None and 0 < n <= len(self._index):
            name, line = self._index[n - 1]
            return f"{name}:{line}"
        if self._name is None:
            return ""
        return f"{self._name}:{self._lineno}"

    def __enter__(self) -> _ReplayLines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _replay_source(config: Config, args: argparse.Namespace) -> _ReplayLines:
    """A file, a folder of tapes, or --from/--to over data_dir/tapes/ → the lines to replay.
    Raises TapeError (an empty range, several venues) or OSError (an unreadable file)."""
    from engine.tape import TAPES_DIRNAME, select_tapes

    target = Path(args.file) if args.file else None
    ranged = args.date_from is not None or args.date_to is not None
    if target is not None and not target.exists():
        raise OSError(f"cannot read {args.file}: no such file or folder")
    if target is None and not ranged:
        raise OSError(
            "replay needs a FILE (a recording or a tape), a folder of tapes, or --from/--to "
            "over data_dir/tapes/"
        )
    if target is not None and target.is_file():
        if ranged:
            raise OSError("--from/--to select tapes of a folder; they cannot be used with a file")
        try:
            with open(target, "rb"):
                pass  # unreadable: said now, before anything runs
        except OSError as e:
            raise OSError(f"cannot read {args.file}: {e}") from None
        return _ReplayLines([target], progress=_progress_wanted(args))
    paths = select_tapes(
        target,
        config.data_path() / TAPES_DIRNAME,
        date_from=args.date_from,
        date_to=args.date_to,
        venue=args.venue,
    )
    return _ReplayLines(paths, progress=_progress_wanted(args))


def _progress_wanted(args: argparse.Namespace) -> bool:
    """A progress line for a long replay on a terminal; never under --json."""
    return not args.json and sys.stderr.isatty()


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


async def _record(config: Config, path: Path | None, args: argparse.Namespace) -> int:
    from engine.replay_format import dumps
    from engine.runtime import build_runtime

    config = config.model_copy(deep=True)
    if args.speed is not None:
        config.sim.speed = args.speed
    with tempfile.TemporaryDirectory(prefix="ts-record-") as tmp:
        if not args.db:
            config.engine.data_dir = tmp
        out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        count = 0
        end: float | None = None  # market time: the first event's + the duration

        def write(ev: Any) -> None:
            nonlocal count, end
            if end is None:
                end = ev.ts + args.duration
            if ev.ts > end:
                return  # a fast clock overshoots the stopper: keep to the requested duration
            out.write(dumps(ev) + "\n")
            count += 1

        try:
            rt = await build_runtime(
                config, path, db_path=Path(args.db) if args.db else None, recorders=[write]
            )
            if end is None:
                end = rt.clock.now() + args.duration

            async def stopper() -> None:
                assert end is not None
                while rt.clock.now() < end:
                    await rt.clock.sleep(min(1.0, end - rt.clock.now()))
                rt.engine.stop()

            task = asyncio.create_task(stopper())
            try:
                await rt.engine.run(rt.feeds)
            finally:
                task.cancel()
                await rt.close()
        finally:
            out.close()
    print(f"recorded {count} events ({args.duration:g} s of market time) to {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
