"""`replay --compare` against holding to the end: each config's rule exits, as `metrics` counts
them (engine/analytics.py), on the trades whose contract settled.

tests/scenarios/what_if.jsonl with max loss 30 % (A) and 60 % (B): t1 is stopped out under A and
held to its YES settlement under B, so what A's max_loss gave up on t1 is B's P&L on it minus A's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from engine.replay import ALL_RULES, compare_replays, format_comparison

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
HEAD = "[engine]\nmax_quote_age_seconds = 120\n[auto_stop.criteria]\nprofit_target_percent = 50\n"


async def test_compare_prints_saved_and_given_up_against_holding(tmp_path: Path) -> None:
    a_toml, b_toml = tmp_path / "a.toml", tmp_path / "b.toml"
    a_toml.write_text(HEAD + "max_loss_percent = 30\n", encoding="utf-8")
    b_toml.write_text(HEAD + "max_loss_percent = 60\n", encoding="utf-8")
    lines = (SCENARIOS / "what_if.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    cmp = await compare_replays(lines, load_config(a_toml), load_config(b_toml))
    oa, ob = cmp.outcomes_a, cmp.outcomes_b
    assert (oa["t1"].rule, ob["t1"].rule) == ("max_loss", "settled")
    rows = {r["rule"]: r for r in cmp.against_holding()}
    assert rows["max_loss"]["a"]["given_up"] == pytest.approx(ob["t1"].pnl - oa["t1"].pnl)
    assert rows[ALL_RULES]["a"]["net"] == pytest.approx(
        sum(r["a"]["net"] for k, r in rows.items() if k != ALL_RULES)
    )
    assert rows[ALL_RULES]["diff_net"] == pytest.approx(
        rows[ALL_RULES]["b"]["net"] - rows[ALL_RULES]["a"]["net"]
    )
    text = format_comparison(cmp, "a.toml", "b.toml")
    assert "against holding to the end" in text
    (line,) = [x for x in text.splitlines() if x.startswith("max_loss ") and "saved" not in x][1:]
    assert f"{-rows['max_loss']['a']['given_up']:+.2f}" in line
    assert cmp.to_json("a", "b")["against_holding"] == cmp.against_holding()
