"""The what-if comparison: `replay FILE --config A.toml --compare B.toml`.

The comparison must say exactly what running each config alone with the plain `replay` says, so
every expectation here is worked out from single runs (their journals, kept with `db_path`, and
their exit lines), never from hard-coded totals.

tests/scenarios/what_if.jsonl: three contracts, six trades. With max loss 30 % (A) against 60 %
(B): t1 is stopped out under A but rides to a YES settlement under B; t2 is stopped out under
both, later and lower under B; t3 takes its profit, t5 is closed by hand, t4 settles and t6 is
still open at the end under both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from engine.config import Config, load_config
from engine.replay import OPEN, Comparison, compare_replays, format_comparison, replay
from engine.store import Store

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

ENGINE = "max_quote_age_seconds = 120\n"
CRITERIA_30 = "[auto_stop.criteria]\nmax_loss_percent = 30\nprofit_target_percent = 50\n"
CRITERIA_60 = "[auto_stop.criteria]\nmax_loss_percent = 60\nprofit_target_percent = 50\n"
LOSS_30 = "[engine]\n" + ENGINE + CRITERIA_30
LOSS_60 = "[engine]\n" + ENGINE + CRITERIA_60
NO_TRAIL = "[auto_stop.criteria]\nmax_loss_percent = 90\n"
TRAIL = NO_TRAIL + "trailing_drawdown_percent = 20\ntrailing_activation_percent = 30\n"

PAIRS = [
    pytest.param("what_if.jsonl", LOSS_30, LOSS_60, id="max_loss-30-vs-60"),
    pytest.param("trailing.jsonl", NO_TRAIL, TRAIL, id="trailing-off-vs-on"),
    pytest.param("what_if.jsonl", LOSS_60, LOSS_30, id="max_loss-60-vs-30"),
]


def write_config(tmp_path: Path, name: str, toml: str) -> Path:
    path = tmp_path / name
    path.write_text(dedent(toml), encoding="utf-8")
    return path


def lines_of(name: str) -> list[str]:
    return (SCENARIOS / name).read_text(encoding="utf-8").splitlines(keepends=True)


async def single_run(name: str, config: Config, db: Path) -> dict[str, dict[str, Any]]:
    """Plain `replay` of one config, kept in a journal: trade id → rule, P&L, close time.
    The journal's outcome of every trade closed by an exit agrees with its exit line."""
    out: list[dict[str, Any]] = []
    await replay(lines_of(name), config, db_path=db, emit=out.append)
    async with Store(db) as store:
        trades = await store.all_trades()
    got: dict[str, dict[str, Any]] = {}
    for t in trades:
        closed = str(t.state) == "closed"
        got[t.trade_id] = {
            "rule": t.exit_reason if closed else OPEN,
            "pnl": t.realized_pnl or 0.0,
            "closed_ts": t.closed_ts if closed else None,
        }
    exits = [o for o in out if o["event"] == "exit"]
    assert len({e["trade_id"] for e in exits}) == len(exits)
    for e in exits:
        assert got[e["trade_id"]]["rule"] == e["rule"]
        assert got[e["trade_id"]]["pnl"] == pytest.approx(e["pnl"], abs=1e-6)
        assert got[e["trade_id"]]["closed_ts"] == pytest.approx(e["ts"])
    return got


def per_rule(outcomes: dict[str, dict[str, Any]]) -> dict[str, tuple[int, float]]:
    acc: dict[str, list[float]] = defaultdict(list)
    for o in outcomes.values():
        acc[o["rule"]].append(o["pnl"])
    return {rule: (len(p), sum(p)) for rule, p in acc.items()}


def differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["rule"] != b["rule"] or a["pnl"] != pytest.approx(b["pnl"], abs=1e-9):
        return True
    return a["closed_ts"] != b["closed_ts"]


def check_against(cmp_json: dict[str, Any], a: dict, b: dict) -> None:
    """The comparison (as its JSON) says what the single runs `a` and `b` say."""
    ra, rb = per_rule(a), per_rule(b)
    rows = {r["rule"]: r for r in cmp_json["rules"]}
    assert set(rows) == set(ra) | set(rb)
    for rule, row in rows.items():
        na, pa = ra.get(rule, (0, 0.0))
        nb, pb = rb.get(rule, (0, 0.0))
        assert (row["a"]["trades"], row["b"]["trades"]) == (na, nb), rule
        assert row["a"]["pnl"] == pytest.approx(pa, abs=1e-6), rule
        assert row["b"]["pnl"] == pytest.approx(pb, abs=1e-6), rule
        assert row["diff"]["trades"] == row["b"]["trades"] - row["a"]["trades"]
        assert row["diff"]["pnl"] == pytest.approx(row["b"]["pnl"] - row["a"]["pnl"], abs=1e-6)

    totals = cmp_json["totals"]
    for key, run in (("a", a), ("b", b)):
        assert totals[key]["pnl"] == pytest.approx(sum(o["pnl"] for o in run.values()), abs=1e-6)
        assert totals[key]["open"] == sum(o["rule"] == OPEN for o in run.values())
        assert totals[key]["closed"] == sum(o["rule"] != OPEN for o in run.values())
    assert totals["diff"]["pnl"] == pytest.approx(totals["b"]["pnl"] - totals["a"]["pnl"], abs=1e-6)
    assert totals["diff"]["closed"] == totals["b"]["closed"] - totals["a"]["closed"]
    assert totals["diff"]["open"] == totals["b"]["open"] - totals["a"]["open"]

    # The trade table: exactly the trades whose exit differs, each side as in its single run.
    assert set(a) == set(b)
    expected = [tid for tid in a if differs(a[tid], b[tid])]
    assert sorted(r["trade_id"] for r in cmp_json["trades"]) == sorted(expected)
    for r in cmp_json["trades"]:
        tid = r["trade_id"]
        for key, run in (("a", a), ("b", b)):
            assert r[key]["rule"] == run[tid]["rule"]
            assert r[key]["pnl"] == pytest.approx(run[tid]["pnl"], abs=1e-6)
            assert r[key]["closed_ts"] == run[tid]["closed_ts"]
        assert r["diff_pnl"] == pytest.approx(b[tid]["pnl"] - a[tid]["pnl"], abs=1e-6)


async def compare(name: str, config_a: Config, config_b: Config) -> Comparison:
    return await compare_replays(lines_of(name), config_a, config_b)


# --- in process -------------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "toml_a", "toml_b"), PAIRS)
async def test_comparison_matches_single_runs(
    tmp_path: Path, scenario: str, toml_a: str, toml_b: str
) -> None:
    config_a = load_config(write_config(tmp_path, "a.toml", toml_a))
    config_b = load_config(write_config(tmp_path, "b.toml", toml_b))
    a = await single_run(scenario, config_a, tmp_path / "a.db")
    b = await single_run(scenario, config_b, tmp_path / "b.db")
    assert any(differs(a[t], b[t]) for t in a)  # the threshold matters in this session
    cmp = await compare(scenario, config_a, config_b)
    check_against(cmp.to_json("a.toml", "b.toml"), a, b)
    # The run summaries are the plain replay's.
    out = cmp.to_json("a.toml", "b.toml")
    assert (out["a"]["config"], out["b"]["config"]) == ("a.toml", "b.toml")
    assert out["a"]["trades"] == out["b"]["trades"] == len(a)


async def test_the_what_if_session_exercises_every_kind_of_row(tmp_path: Path) -> None:
    # Not numbers but shape: the session has a rule-closed trade that changes rule (t1), one
    # that keeps its rule at another price (t2), manual, settled and still-open trades, and the
    # text lists the same trades as the JSON.
    config_a = load_config(write_config(tmp_path, "a.toml", LOSS_30))
    config_b = load_config(write_config(tmp_path, "b.toml", LOSS_60))
    cmp = await compare("what_if.jsonl", config_a, config_b)
    rules = [r["rule"] for r in cmp.rules()]
    assert rules == ["max_loss", "profit_target", "manual", "settled", OPEN]
    changed = {r["trade_id"]: r for r in cmp.trades()}
    assert set(changed) == {"t1", "t2"}
    assert (changed["t1"]["a"]["rule"], changed["t1"]["b"]["rule"]) == ("max_loss", "settled")
    assert changed["t2"]["a"]["rule"] == changed["t2"]["b"]["rule"] == "max_loss"
    text = format_comparison(cmp, "a.toml", "b.toml")
    assert "still open at the end" in text
    assert "trades whose exit differs (2):" in text
    table = text.split("trades whose exit differs")[1].splitlines()[2:]
    assert [line.split()[0] for line in table] == ["t1", "t2"]


async def test_same_config_twice_shows_no_difference(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "a.toml", LOSS_30))
    cmp = await compare("what_if.jsonl", config, config)
    assert cmp.trades() == []
    assert all(r["diff"] == {"trades": 0, "pnl": 0.0} for r in cmp.rules())
    assert cmp.totals()["diff"] == {"pnl": 0.0, "closed": 0, "open": 0}
    assert "every trade ended the same way" in format_comparison(cmp, "a", "a")


async def test_runs_are_deterministic_and_the_paper_broker_seeded_alike(tmp_path: Path) -> None:
    # Partial fills are random draws of the paper broker. B differs from A only in its [paper]
    # seed: the comparison seeds B's broker as A's, so nothing differs, and repeating the whole
    # comparison prints the same object.
    paper = "[paper]\npartial_fill_probability = 0.6\n"
    config_a = load_config(write_config(tmp_path, "a.toml", LOSS_30 + paper))
    config_b = load_config(write_config(tmp_path, "b.toml", LOSS_30 + paper + "seed = 99\n"))
    # Run alone, each with its own seed, the two brokers fill differently: the seed matters.
    a = await single_run("what_if.jsonl", config_a, tmp_path / "a.db")
    b = await single_run("what_if.jsonl", config_b, tmp_path / "b.db")
    assert any(differs(a[t], b[t]) for t in a)
    first = await compare("what_if.jsonl", config_a, config_b)
    assert first.trades() == []
    again = await compare("what_if.jsonl", config_a, config_b)
    assert again.to_json("a", "b") == first.to_json("a", "b")
    # The configs given are not changed by the comparison.
    assert config_b.paper.seed == 99 and config_a.alerts.log_file == "alerts.jsonl"


# --- through the command line -----------------------------------------------------------------


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


def user_configs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A and B with a data_dir of their own (which the comparison must never create)."""
    data = tmp_path / "data"
    head = f'[engine]\ndata_dir = "{data}"\n' + ENGINE
    a = write_config(tmp_path, "a.toml", head + CRITERIA_30)
    b = write_config(tmp_path, "b.toml", head + CRITERIA_60)
    return a, b, data


async def test_cli_json_has_the_numbers_of_single_runs_and_leaves_data_dir_alone(
    tmp_path: Path,
) -> None:
    a_toml, b_toml, data = user_configs(tmp_path)
    scenario = str(SCENARIOS / "what_if.jsonl")
    proc = cli("replay", scenario, "--config", str(a_toml), "--compare", str(b_toml), "--json",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()  # one JSON object
    got = json.loads(line)
    assert got["event"] == "compare"
    assert (got["a"]["config"], got["b"]["config"]) == (str(a_toml), str(b_toml))
    a = await single_run("what_if.jsonl", load_config(a_toml), tmp_path / "single-a.db")
    b = await single_run("what_if.jsonl", load_config(b_toml), tmp_path / "single-b.db")
    check_against(got, a, b)
    # The same numbers as the comparison made in process.
    cmp = await compare("what_if.jsonl", load_config(a_toml), load_config(b_toml))
    assert got == cmp.to_json(str(a_toml), str(b_toml))
    # Deterministic across processes; the text form lists the same trades.
    again = cli("--config", str(a_toml), "replay", scenario, "--compare", str(b_toml), "--json",
                cwd=tmp_path)  # fmt: skip
    assert again.stdout == proc.stdout
    text = cli("replay", scenario, "--config", str(a_toml), "--compare", str(b_toml), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == format_comparison(cmp, str(a_toml), str(b_toml))
    # Nothing was created in the user's data_dir: no journal, no alerts log, no paper account.
    assert not data.exists()
    left = {p.name for p in tmp_path.iterdir() if not p.name.startswith("single-")}
    assert left == {"a.toml", "b.toml"}


def test_cli_default_config_is_side_a(tmp_path: Path) -> None:
    # Without --config (and no config.toml in the working directory or the user's config dir)
    # A is the built-in defaults.
    _, b_toml, data = user_configs(tmp_path)
    scenario = str(SCENARIOS / "what_if.jsonl")
    proc = cli("replay", scenario, "--compare", str(b_toml), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["a"]["config"] == "built-in defaults"
    assert got["a"]["trades"] == got["b"]["trades"] == 6
    assert not data.exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('[auto_stop.criteria]\nmax_loss_percent = "x"\n', "max_loss_percent"),
        ("[auto_stop.criteria\n", "line"),
        (None, "not found"),
    ],
)
def test_cli_bad_compare_config_exits_2_naming_it(
    tmp_path: Path, content: str | None, why: str
) -> None:
    a_toml, _, data = user_configs(tmp_path)
    bad = tmp_path / "what-if-b.toml"
    if content is not None:
        bad.write_text(content, encoding="utf-8")
    scenario = str(SCENARIOS / "what_if.jsonl")
    proc = cli("replay", scenario, "--config", str(a_toml), "--compare", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "what-if-b.toml" in proc.stderr and why in proc.stderr
    assert not data.exists()


def test_cli_compare_refuses_db(tmp_path: Path) -> None:
    a_toml, b_toml, _ = user_configs(tmp_path)
    db = tmp_path / "x.db"
    scenario = str(SCENARIOS / "what_if.jsonl")
    proc = cli("replay", scenario, "--config", str(a_toml), "--compare", str(b_toml),
               "--db", str(db), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "--db" in proc.stderr
    assert not db.exists()
