"""Scenario tests through replay: hand-written sessions in tests/scenarios/*.jsonl, run on the real
engine with the injected clock, asserting on the JSON Lines a trader sees (exit and alert lines,
rules, marks, P&L worked out by hand) and on the summary.

Every scenario uses one binary contract, KXBTCD-25NOV2114-T97000 ("BTC above $97,000"), closing far
away unless said otherwise; prices are YES-side dollars. Timestamps start at 1000.0, so "tick N"
is the periodic tick the replay runs at whole second N. Each config is inline TOML and holds only
the rules the scenario is about (a rule whose key is absent is off).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from engine.config import Config, load_config
from engine.replay import ReplayResult, print_jsonl, replay
from engine.store import Store

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
CID = "KXBTCD-25NOV2114-T97000"

MAX_LOSS_40 = """
    [auto_stop.criteria]
    max_loss_percent = 40
"""


@dataclass
class Run:
    out: list[dict[str, Any]]  # the emitted lines, in order (exit and alert)
    errors: list[tuple[int, str]]  # (line number, message) of skipped lines
    result: ReplayResult

    @property
    def exits(self) -> list[dict[str, Any]]:
        return [o for o in self.out if o["event"] == "exit"]

    def alerts(self, kind: str | None = None, trade_id: Any = ...) -> list[dict[str, Any]]:
        return [
            o
            for o in self.out
            if o["event"] == "alert"
            and (kind is None or o["kind"] == kind)
            and (trade_id is ... or o["trade_id"] == trade_id)
        ]

    @property
    def summary(self) -> dict[str, Any]:
        return self.result.summary()


def write_config(tmp_path: Path, toml: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(dedent(toml), encoding="utf-8")
    return path


def config_from(tmp_path: Path, toml: str) -> Config:
    return load_config(write_config(tmp_path, toml))


def scenario_lines(name: str) -> list[str]:
    return (SCENARIOS / name).read_text(encoding="utf-8").splitlines(keepends=True)


async def run_scenario(
    name: str, toml: str, tmp_path: Path, *, trades: int = 1, db_path: Path | None = None
) -> Run:
    """Replay a scenario file; `trades` is how many valid open lines it has (checked in the summary)."""
    out: list[dict[str, Any]] = []
    errors: list[tuple[int, str]] = []
    result = await replay(
        scenario_lines(name),
        config_from(tmp_path, toml),
        db_path=db_path,
        emit=out.append,
        on_error=lambda n, msg: errors.append((n, msg)),
    )
    run = Run(out, errors, result)
    check_summary(run, trades)
    # Every emitted line is JSON-serialisable as the CLI prints it.
    for o in out:
        json.dumps(o, allow_nan=False)
    return run


def check_summary(run: Run, trades: int) -> None:
    """The summary counts what was seen: trades opened, exit lines, alert lines, skipped lines."""
    assert run.summary == {
        "event": "summary",
        "trades": trades,
        "exits": len(run.exits),
        "alerts": len(run.alerts()),
        "invalid_lines": len(run.errors),
    }


def exit_row(run: Run, trade_id: str) -> dict[str, Any]:
    rows = [e for e in run.exits if e["trade_id"] == trade_id]
    assert len(rows) == 1, f"expected exactly one exit for {trade_id}: {run.exits}"
    return rows[0]


def assert_exit(
    row: dict[str, Any], *, ts: float, rule: str, mark: float, qty: float, entry: float
) -> None:
    """An exit line, its P&L worked out by hand: qty × (mark − entry), % of qty × entry."""
    pnl = qty * (mark - entry)
    assert row["ts"] == pytest.approx(ts)
    assert row["rule"] == rule
    assert row["mark"] == pytest.approx(mark)
    assert row["pnl"] == pytest.approx(pnl, abs=1e-6)
    assert row["pnl_pct"] == pytest.approx(100.0 * pnl / (qty * entry), abs=1e-4)


# --- the basic rules --------------------------------------------------------------------------


async def test_max_loss_fires_exactly_at_the_threshold_and_not_before(tmp_path: Path) -> None:
    # max_loss.jsonl: YES 10 @ 0.50 (cost $5). Bid 0.31 is -38 %: nothing. Bid 0.30 is exactly
    # -40 %: the exit fires on that quote (1002.7), at the bid. The later 0.20 quote finds no trade.
    run = await run_scenario("max_loss.jsonl", MAX_LOSS_40, tmp_path)
    assert len(run.exits) == 1
    assert_exit(exit_row(run, "t1"), ts=1002.7, rule="max_loss", mark=0.30, qty=10, entry=0.50)
    assert run.exits[0]["pnl"] == pytest.approx(-2.0)
    assert run.exits[0]["pnl_pct"] == pytest.approx(-40.0)
    # One auto_stop alert for the close, right after the exit line.
    (auto,) = run.alerts("auto_stop")
    assert (auto["ts"], auto["trade_id"], auto["severity"]) == (1002.7, "t1", "warning")
    assert run.out.index(auto) == run.out.index(run.exits[0]) + 1
    assert run.alerts("data_quality") == []


async def test_profit_target(tmp_path: Path) -> None:
    # profit_target.jsonl: YES 5 @ 0.40 (cost $2). Bid 0.59 = +47.5 %: nothing; bid 0.60 = +50 %.
    run = await run_scenario(
        "profit_target.jsonl", "[auto_stop.criteria]\nprofit_target_percent = 50\n", tmp_path
    )
    (row,) = run.exits
    assert_exit(row, ts=1002.0, rule="profit_target", mark=0.60, qty=5, entry=0.40)
    assert (row["pnl"], row["pnl_pct"]) == (pytest.approx(1.0), pytest.approx(50.0))


async def test_trailing_drawdown_only_after_activation(tmp_path: Path) -> None:
    # trailing.jsonl, YES 10 @ 0.50, trail 20 points once the peak reached +30 %:
    #   0.64 → +28 % (peak 28, not active)   0.52 → +4 %: 24 points down, but not active: no exit
    #   0.70 → +40 % (peak 40, active)       0.62 → +24 %: 16 down: no exit
    #   0.60 → +20 %: 20 points below the peak → exit at 1005.0
    toml = """
        [auto_stop.criteria]
        trailing_drawdown_percent = 20
        trailing_activation_percent = 30
    """
    run = await run_scenario("trailing.jsonl", toml, tmp_path)
    (row,) = run.exits
    assert_exit(row, ts=1005.0, rule="trailing_drawdown", mark=0.60, qty=10, entry=0.50)
    assert row["pnl_pct"] == pytest.approx(20.0)  # a winner, closed by the trail


async def test_max_holding_time_fires_on_a_tick_without_new_quotes(tmp_path: Path) -> None:
    # max_holding_time.jsonl: YES 10 @ 0.50 opened at 1000.5, limit 1 minute → due at 1060.5. The
    # last quote of the contract is at 1030 (bid 0.56); the next event is a quote of another
    # contract at 1075. Only the ticks in between can close it: the first at or after the deadline
    # is 1061.0. Quotes may be 120 s old here, so the 31 s old quote still counts as fresh.
    toml = """
        [engine]
        max_quote_age_seconds = 120
        [auto_stop.criteria]
        max_holding_time_minutes = 1
    """
    run = await run_scenario("max_holding_time.jsonl", toml, tmp_path)
    (row,) = run.exits
    assert_exit(row, ts=1061.0, rule="max_holding_time", mark=0.56, qty=10, entry=0.50)
    assert run.alerts("data_quality") == []


async def test_ttc_cutoff_closes_out_of_the_money_positions_only(tmp_path: Path) -> None:
    # ttc_cutoff.jsonl: both contracts close at 1120, cut-off 60 s → due at 1060. Spot stays at
    # ~$96,500, so YES "above 97,000" is out of the money, YES "above 96,000" and NO "above 97,000"
    # are in it. Only otm-yes closes, on the tick at 1060.0, at its bid 0.20 (bought at 0.25).
    toml = """
        [engine]
        max_quote_age_seconds = 120
        max_spot_age_seconds = 120
        [signals]
        edge_threshold = 0
        [auto_stop.criteria]
        ttc_cutoff_seconds = 60
    """
    run = await run_scenario("ttc_cutoff.jsonl", toml, tmp_path, trades=3)
    (row,) = run.exits
    assert row["trade_id"] == "otm-yes"
    assert_exit(row, ts=1060.0, rule="ttc_cutoff", mark=0.20, qty=10, entry=0.25)


async def test_no_side_is_marked_at_one_minus_the_yes_ask(tmp_path: Path) -> None:
    # no_side.jsonl: NO 10 @ 0.40, max loss 25 %. YES 0.62/0.66 → NO bid 0.34 (-15 %): nothing.
    # YES 0.60/0.70 → NO bid 1 - 0.70 = 0.30 (-25 %): exit. Marking at 1 - YES bid (0.40, 0 %) or
    # at the NO mid (0.35, -12.5 %) would not have fired.
    run = await run_scenario(
        "no_side.jsonl", "[auto_stop.criteria]\nmax_loss_percent = 25\n", tmp_path
    )
    (row,) = run.exits
    assert_exit(row, ts=1002.0, rule="max_loss", mark=1 - 0.70, qty=10, entry=0.40)
    assert (row["pnl"], row["pnl_pct"]) == (pytest.approx(-1.0), pytest.approx(-25.0))


# --- bad data ---------------------------------------------------------------------------------


async def test_stale_quote_blocks_the_exit_until_a_fresh_quote(tmp_path: Path) -> None:
    # stale_quote.jsonl: YES 10 @ 0.50 opened at 1000.0, max holding 30 s (due at 1030). The last
    # quote is at 1005; with the default 10 s limit it is stale from tick 1016 on. The ticks at
    # 1030..1040 would close it but must not (stale price): one data_quality warning, no exit. The
    # fresh quote at 1040.5 brings a recovery alert, then the exit at its bid 0.45.
    run = await run_scenario(
        "stale_quote.jsonl", "[auto_stop.criteria]\nmax_holding_time_minutes = 0.5\n", tmp_path
    )
    # The watchdog: last evaluated on fresh data at 1005, unprotected once that is more than
    # 13 s ago (the default: the 10 s quote age limit + 3 ticks). The fresh quote at 1040.5
    # closes it (the scenario ends there, so no later tick reports its episode's end).
    stale, unprotected, recovered = run.alerts("data_quality")
    assert (stale["ts"], stale["severity"], stale["trade_id"]) == (1016.0, "warning", "t1")
    assert "quote 11s old" in stale["message"]
    assert (unprotected["ts"], unprotected["severity"]) == (1019.0, "critical")
    assert unprotected["message"].startswith("1 trade UNPROTECTED")
    assert (recovered["ts"], recovered["severity"]) == (1040.5, "info")
    assert "recovered" in recovered["message"]
    (row,) = run.exits
    assert_exit(row, ts=1040.5, rule="max_holding_time", mark=0.45, qty=10, entry=0.50)
    assert run.out.index(recovered) < run.out.index(row)


async def test_invalid_quotes_never_close_a_trade(tmp_path: Path) -> None:
    # invalid_quotes.jsonl: YES 10 @ 0.50, max loss 40 %. Each bad quote would fire max_loss if
    # it were believed: crossed (bid 0.30 > ask 0.10), ask 1.5 (> 1 on a binary), bid -0.05,
    # bid "0.10" (a string: the line is skipped, reported as line 7), bid null (one-sided),
    # bid NaN and ask Infinity (Python's JSON reader accepts these: the data guard must catch them).
    # One data_quality warning for the whole episode, a recovery on the valid quote at 1007, and
    # the engine still acts on good data: bid 0.30 at 1008 closes the trade.
    run = await run_scenario("invalid_quotes.jsonl", MAX_LOSS_40, tmp_path)
    assert [n for n, _ in run.errors] == [7]
    assert "'bid' must be a number" in run.errors[0][1]
    bad, recovered = run.alerts("data_quality")
    assert (bad["ts"], bad["severity"], bad["trade_id"]) == (1001.0, "warning", "t1")
    assert "crossed" in bad["message"]
    assert (recovered["ts"], recovered["severity"]) == (1007.0, "info")
    (row,) = run.exits
    assert_exit(row, ts=1008.0, rule="max_loss", mark=0.30, qty=10, entry=0.50)


async def test_out_of_order_quote_is_ignored(tmp_path: Path) -> None:
    # out_of_order.jsonl: YES 10 @ 0.50 at 1000.0, max loss 40 %, max holding 6 s. The quote at
    # 1002 (bid 0.45) is followed by one stamped 1001.5 (bid 0.20, older): if it replaced the
    # newer quote, max_loss would fire (-60 %). It is ignored: the trade closes on the 1006 tick by
    # max_holding_time at the newer bid 0.45.
    toml = """
        [auto_stop.criteria]
        max_loss_percent = 40
        max_holding_time_minutes = 0.1
    """
    run = await run_scenario("out_of_order.jsonl", toml, tmp_path)
    (row,) = run.exits
    assert_exit(row, ts=1006.0, rule="max_holding_time", mark=0.45, qty=10, entry=0.50)
    assert run.errors == []


# --- commands, modes --------------------------------------------------------------------------


async def test_pause_holds_the_exit_and_resume_lets_it_fire(tmp_path: Path) -> None:
    # pause.jsonl: t1 (YES 10) and t2 (YES 4), both @ 0.50, max loss 40 %. t1 is paused at 1001.
    # Bid 0.20 at 1002 (-60 %): t2 closes, t1 only gets an exit_signal. "resume t1" at 1003 closes
    # it at once, still at 0.20.
    run = await run_scenario("pause.jsonl", MAX_LOSS_40, tmp_path, trades=2)
    assert_exit(exit_row(run, "t2"), ts=1002.0, rule="max_loss", mark=0.20, qty=4, entry=0.50)
    assert_exit(exit_row(run, "t1"), ts=1003.0, rule="max_loss", mark=0.20, qty=10, entry=0.50)
    (signal,) = run.alerts("exit_signal", "t1")
    assert signal["ts"] == 1002.0
    assert "paused" in signal["message"]


async def test_pause_all_holds_every_exit_until_resume_all(tmp_path: Path) -> None:
    # pause_all.jsonl: t1 (YES 10), t2 (YES 4) @ 0.50; kill switch on at 1001. Bid 0.20 at 1002
    # and 0.19 at 1010: one exit_signal per trade, no exit. resume_all at 1011 closes both at 0.19.
    run = await run_scenario("pause_all.jsonl", MAX_LOSS_40, tmp_path, trades=2)
    assert [e["ts"] for e in run.exits] == [1011.0, 1011.0]
    assert_exit(exit_row(run, "t1"), ts=1011.0, rule="max_loss", mark=0.19, qty=10, entry=0.50)
    assert_exit(exit_row(run, "t2"), ts=1011.0, rule="max_loss", mark=0.19, qty=4, entry=0.50)
    for tid in ("t1", "t2"):
        (signal,) = run.alerts("exit_signal", tid)
        assert signal["ts"] == 1002.0
        assert "paused" in signal["message"]


async def test_disarmed_engine_signals_but_does_not_close(tmp_path: Path) -> None:
    # disarm.jsonl: YES 10 @ 0.50, disarmed at 1001. Bid 0.20 at 1002 → one exit_signal for t1,
    # no exit; bid 0.18 at 1003 → no repeat. Arming again at 1004 acts at once (bid 0.18).
    run = await run_scenario("disarm.jsonl", MAX_LOSS_40, tmp_path)
    (signal,) = run.alerts("exit_signal", "t1")
    assert signal["ts"] == 1002.0
    assert "disarmed" in signal["message"]
    assert [e for e in run.exits if e["ts"] < 1004.0] == []
    assert_exit(exit_row(run, "t1"), ts=1004.0, rule="max_loss", mark=0.18, qty=10, entry=0.50)


async def test_alert_only_mode_only_signals(tmp_path: Path) -> None:
    # alert_only.jsonl: YES 10 @ 0.50, bid falls to 0.20 then 0.18, then a manual close command.
    # alert_only never sends an order: one exit_signal (a warning, the trader must act), no exit,
    # and the close command is refused.
    toml = """
        [auto_stop]
        mode = "alert_only"
        [auto_stop.criteria]
        max_loss_percent = 40
    """
    run = await run_scenario("alert_only.jsonl", toml, tmp_path)
    assert run.exits == []
    (signal,) = run.alerts("exit_signal")
    assert (signal["ts"], signal["trade_id"], signal["severity"]) == (1002.0, "t1", "warning")
    assert run.alerts("auto_stop") == [] and run.alerts("trade_closed") == []


async def test_settlement_closes_trades_without_an_exit(tmp_path: Path) -> None:
    # settle.jsonl: t1 YES 10 @ 0.50 and t2 NO 5 @ 0.48; the contract settles YES (value 1) at
    # 1030. Settlement is not an exit: two trade_closed alerts, no exit line. The journal (db_path)
    # books YES at 1.00 (+$5.00) and NO at 0.00 (-$2.40). A quote after settlement finds no trade.
    db = tmp_path / "journal.db"
    toml = """
        [engine]
        max_quote_age_seconds = 120
        [auto_stop.criteria]
        max_loss_percent = 40
    """
    run = await run_scenario("settle.jsonl", toml, tmp_path, trades=2, db_path=db)
    assert run.exits == []
    closed = {a["trade_id"]: a for a in run.alerts("trade_closed")}
    assert set(closed) == {"t1", "t2"}
    assert all(a["ts"] == 1030.0 for a in closed.values())
    assert "+5.00" in closed["t1"]["message"] and "-2.40" in closed["t2"]["message"]
    async with Store(db) as store:
        t1, t2 = await store.get_trade("t1"), await store.get_trade("t2")
    assert t1 is not None and t2 is not None
    assert (str(t1.state), t1.exit_reason, t1.exit_price) == ("closed", "settled", 1.0)
    assert t1.realized_pnl == pytest.approx(5.0)
    assert (str(t2.state), t2.exit_reason, t2.exit_price) == ("closed", "settled", 0.0)
    assert t2.realized_pnl == pytest.approx(-2.4)


async def test_manual_close_command_exits_with_rule_manual(tmp_path: Path) -> None:
    # manual_close.jsonl: YES 10 @ 0.50, bid 0.55 at 1001, "close t1" at 1002: an exit with rule
    # "manual" at the bid (+$0.50, +10 %), announced as trade_closed (not auto_stop).
    run = await run_scenario("manual_close.jsonl", MAX_LOSS_40, tmp_path)
    (row,) = run.exits
    assert_exit(row, ts=1002.0, rule="manual", mark=0.55, qty=10, entry=0.50)
    (closed,) = run.alerts("trade_closed")
    assert closed["trade_id"] == "t1"
    assert run.alerts("auto_stop") == []


# --- the file itself ----------------------------------------------------------------------------


async def test_invalid_lines_are_reported_with_their_numbers_and_skipped(tmp_path: Path) -> None:
    # invalid_lines.jsonl, line by line: 1 contract, 2 broken JSON, 3 quote, 4 unknown kind
    # "trade", 5 quote without id, 6 spot without ts, 7 blank (ignored, not an error), 8 a JSON
    # array, 9 open without qty, 10 open with side "maybe", 11 open t3, 12 unknown action,
    # 13 pause without trade_id, 14 bid 0.30. The rest still runs: t3 closes by max_loss.
    run = await run_scenario("invalid_lines.jsonl", MAX_LOSS_40, tmp_path)
    assert [n for n, _ in run.errors] == [2, 4, 5, 6, 8, 9, 10, 12, 13]
    messages = dict(run.errors)
    assert "not valid JSON" in messages[2]
    assert "unknown kind 'trade'" in messages[4]
    assert "missing 'id'" in messages[5]
    assert "missing 'ts'" in messages[6]
    assert "JSON object" in messages[8]
    assert "missing 'qty'" in messages[9]
    assert "'side'" in messages[10]
    assert "'action'" in messages[12]
    assert "trade_id" in messages[13]
    (row,) = run.exits
    assert row["trade_id"] == "t3"
    assert_exit(row, ts=1002.0, rule="max_loss", mark=0.30, qty=10, entry=0.50)
    assert run.summary["trades"] == 1 and run.summary["invalid_lines"] == 9


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"ts":1001,"kind":"settle","id":"CID","value":NaN}', "value"),
        ('{"ts":1001,"kind":"settle","id":"CID","value":7}', "value"),
        ('{"ts":NaN,"kind":"quote","id":"CID","bid":0.1,"ask":0.2}', "ts"),
        ('{"ts":"1001","kind":"quote","id":"CID","bid":0.1,"ask":0.2}', "ts"),
        (
            '{"ts":1001,"kind":"open","trade_id":"t9","contract":"CID","side":"yes","qty":true}',
            "qty",
        ),
    ],
)
async def test_a_bad_value_skips_the_line_and_never_stops_the_replay(
    tmp_path: Path, line: str, why: str
) -> None:
    # A NaN or impossible settlement value would be booked straight into the journal (a NaN one
    # used to abort the whole replay); bad timestamps and a boolean quantity are refused too.
    lines = [*scenario_lines("manual_close.jsonl")]
    lines.insert(3, line.replace("CID", CID) + "\n")
    out: list[dict[str, Any]] = []
    errors: list[tuple[int, str]] = []
    result = await replay(
        lines,
        config_from(tmp_path, MAX_LOSS_40),
        emit=out.append,
        on_error=lambda n, m: errors.append((n, m)),
    )
    assert len(errors) == 1 and errors[0][0] == 4 and why in errors[0][1]
    assert [(o["trade_id"], o["rule"]) for o in out if o["event"] == "exit"] == [("t1", "manual")]
    assert result.summary()["invalid_lines"] == 1


async def test_replay_is_deterministic(tmp_path: Path) -> None:
    # Every scenario, replayed twice with one config that switches on all the rules used above,
    # prints the same lines byte for byte (no wall clock, no randomness, no leftover state).
    toml = """
        [engine]
        max_spot_age_seconds = 120
        [auto_stop.criteria]
        max_loss_percent = 40
        profit_target_percent = 50
        trailing_drawdown_percent = 20
        trailing_activation_percent = 30
        max_holding_time_minutes = 0.5
        ttc_cutoff_seconds = 60
    """
    config = config_from(tmp_path, toml)
    exits = 0
    for path in sorted(SCENARIOS.glob("*.jsonl")):
        printed = []
        for _ in range(2):
            buf = io.StringIO()
            emit = print_jsonl(buf)
            result = await replay(scenario_lines(path.name), config, emit=emit)
            emit(result.summary())
            printed.append(buf.getvalue())
        assert printed[0] == printed[1], path.name
        exits += result.summary()["exits"]
    assert exits > 0


# --- through the real command line -----------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    env.update(
        HOME=str(cwd / "home"),
        XDG_CONFIG_HOME=str(cwd / "xdg-config"),
        XDG_DATA_HOME=str(cwd / "xdg-data"),
    )
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_replay_json_output_and_bad_lines_on_stderr(tmp_path: Path) -> None:
    # `trade-supervisor replay FILE --config CFG --json` (--config after the command, as the
    # issue writes it): JSON Lines on stdout ending with the summary; skipped lines on stderr
    # as FILE:N; exit 0. Deterministic: a second run prints the same bytes.
    cfg = write_config(tmp_path, MAX_LOSS_40)
    scenario = str(SCENARIOS / "invalid_lines.jsonl")
    proc = cli("replay", scenario, "--config", str(cfg), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows[-1] == {
        "event": "summary",
        "trades": 1,
        "exits": 1,
        "alerts": 2,
        "invalid_lines": 9,
    }
    (ex,) = [r for r in rows if r["event"] == "exit"]
    assert {k: ex[k] for k in ("ts", "trade_id", "rule", "mark")} == {
        "ts": 1002.0,
        "trade_id": "t3",
        "rule": "max_loss",
        "mark": 0.30,
    }
    assert (ex["pnl"], ex["pnl_pct"]) == (pytest.approx(-2.0), pytest.approx(-40.0))
    for r in rows[:-1]:
        assert r["event"] in ("exit", "alert")
        if r["event"] == "alert":
            assert {"ts", "kind", "severity", "trade_id"} <= set(r)
    for n in (2, 4, 5, 6, 8, 9, 10, 12, 13):
        assert f"invalid_lines.jsonl:{n}: skipped:" in proc.stderr
    assert proc.stderr.count("skipped:") == 9
    assert not (tmp_path / "data").exists()  # a temporary journal, nothing left behind
    again = cli("--config", str(cfg), "replay", scenario, "--json", cwd=tmp_path)
    assert again.stdout == proc.stdout


async def test_cli_replay_db_keeps_an_inspectable_journal(tmp_path: Path) -> None:
    # With --db the journal stays: the trade is closed, with its exit reason, price and P&L.
    cfg = write_config(tmp_path, MAX_LOSS_40)
    db = tmp_path / "replay.db"
    scenario = str(SCENARIOS / "max_loss.jsonl")
    proc = cli("replay", scenario, "--config", str(cfg), "--json", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["exits"] == 1
    async with Store(db) as store:
        trade = await store.get_trade("t1")
        intents = await store.open_intents()
    assert trade is not None
    assert str(trade.state) == "closed"
    assert trade.exit_reason == "max_loss"
    assert trade.exit_price == pytest.approx(0.30)
    assert trade.realized_pnl == pytest.approx(-2.0)
    assert trade.closed_ts == pytest.approx(1002.7)
    assert intents == []  # the exit intent was completed, nothing left to reconcile


def test_cli_replay_missing_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, MAX_LOSS_40)
    proc = cli("replay", "nope.jsonl", "--config", str(cfg), "--json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr
    assert proc.stdout == ""
