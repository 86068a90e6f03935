"""The config: the shipped file, error messages a trader can act on, layering, secrets, TOML out."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from engine.config import (
    SECRET_MASK,
    AutoStopConfig,
    Config,
    ConfigError,
    Criteria,
    StrategyConfig,
    _find_line,
    load_config,
    parse_config,
    resolve_config_path,
)
from engine.models import Mode

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config.toml"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"
KEY_ID = "key-id-6d1f0c9e-SECRET"
KEY_PATH = "/home/trader/.kalshi/secret-key.pem"


@pytest.fixture(autouse=True)
def _no_kalshi_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KALSHI_API_KEY_ID", raising=False)
    monkeypatch.delenv("KALSHI_PRIVATE_KEY_PATH", raising=False)


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.lines)
    return info.value.lines


def errors_in(text: str, where: str = "c.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), text, where)
    return info.value.lines


# --- the shipped config.toml ---------------------------------------------------------------------


def test_shipped_config_loads_with_the_documented_defaults() -> None:
    cfg = load_config(SHIPPED)
    assert cfg.engine.venue == "sim"
    assert cfg.engine.data_dir == "./data"
    assert cfg.data_path() == Path("data")
    assert cfg.auto_stop.mode is Mode.DRY_RUN
    assert cfg.auto_stop.armed is True
    c = cfg.auto_stop.criteria
    assert (c.max_loss_percent, c.profit_target_percent) == (40, 80)
    assert (c.trailing_drawdown_percent, c.trailing_activation_percent) == (25, 30)
    assert (c.ttc_cutoff_seconds, c.momentum_threshold_bps) == (120, 60)
    off = ["max_holding_time_minutes", "momentum_reversal_threshold_bps", "volatility_threshold"]
    off += ["volatility_spike_threshold", "price_gap_threshold_percent", "min_time_value"]
    assert all(getattr(c, k) is None for k in off)
    assert cfg.auto_stop.criteria_for("scalp").max_loss_percent == 25
    assert cfg.auto_stop.criteria_for("scalp").profit_target_percent == 80
    assert (cfg.risk.max_open_positions, cfg.risk.max_total_risk, cfg.risk.max_daily_loss) == (
        20,
        500,
        200,
    )
    assert cfg.venues.kalshi.api_key_id is None


def _tables(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _tables(ann, f"{prefix}.{name}" if prefix else name)
    return out


def _sections(text: str) -> dict[str, str]:
    """Text of each [table] of a TOML file, comments included."""
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        m = re.match(r"^\[([^\]]+)\]", line)
        if m:
            name = m.group(1)
            continue
        out[name] = out.get(name, "") + line + "\n"
    return out


def test_shipped_config_shows_and_explains_every_key() -> None:
    sections = _sections(SHIPPED.read_text(encoding="utf-8"))
    tables = [*_tables(Config, ""), ("auto_stop.strategies.scalp.criteria", Criteria)]
    for table, model in tables:
        for key, field in model.model_fields.items():
            ann = field.annotation
            if (isinstance(ann, type) and issubclass(ann, BaseModel)) or key == "strategies":
                continue  # a sub-table, checked on its own
            if key == "keys":
                assert "ui.keys" in sections, "[ui.keys] is missing from config.toml"
                continue
            body = sections.get(table, "")
            if table.startswith("auto_stop.strategies"):
                assert re.search(r"^max_loss_percent = 25$", body, re.M)
                break
            m = re.search(rf"^(#\s*)?{key}\s*=", body, re.M)
            assert m, f"[{table}] {key} is missing from config.toml"
            above = body[: m.start()].rstrip("\n").splitlines()
            assert above and above[-1].startswith("#"), f"[{table}] {key} has no comment"


def test_shipped_config_mentions_the_kalshi_env_vars() -> None:
    kalshi = _sections(SHIPPED.read_text(encoding="utf-8"))["venues.kalshi"]
    assert "KALSHI_API_KEY_ID" in kalshi and "KALSHI_PRIVATE_KEY_PATH" in kalshi


def test_shipped_config_round_trips_through_redacted_toml() -> None:
    cfg = load_config(SHIPPED)
    text = cfg.redacted_toml()
    assert parse_config(tomllib.loads(text)) == cfg
    assert "[auto_stop.strategies.scalp.criteria]\nmax_loss_percent = 25\n" in text
    assert "# max_holding_time_minutes = (not set)" in text


def test_no_file_means_defaults() -> None:
    assert load_config(None) == Config()


# --- error messages ------------------------------------------------------------------------------


def test_unknown_key_suggests_the_right_one() -> None:
    path = FIXTURES / "unknown_key.toml"
    assert errors_of(path) == [
        f"{path}, line 6: auto_stop.criteria.max_loss_pct: unknown key; "
        "did you mean 'max_loss_percent'?"
    ]


def test_wrong_types_say_what_is_expected() -> None:
    path = FIXTURES / "wrong_type.toml"
    assert errors_of(path) == [
        f'{path}, line 3: auto_stop.armed: expected true or false (without quotes), got "yes"',
        f'{path}, line 6: risk.max_total_risk: expected a number (remove the quotes), got "500"',
        f"{path}, line 7: risk.max_open_positions: expected a whole number, got 2.5",
    ]


def test_out_of_range_values_state_the_range() -> None:
    path = FIXTURES / "out_of_range.toml"
    assert errors_of(path) == [
        f"{path}, line 5: auto_stop.criteria.max_loss_percent: "
        "expected a number greater than 0, got -1",
        f"{path}, line 6: auto_stop.criteria.volatility_threshold: "
        "expected a number from 0 to 1, got 1.5",
    ]


def test_bad_enum_lists_the_choices() -> None:
    path = FIXTURES / "bad_enum.toml"
    assert errors_of(path) == [
        f'{path}, line 3: engine.mark: expected one of: bid, mid, last (got "ask")',
        f"{path}, line 6: auto_stop.mode: expected one of: live, dry_run, alert_only "
        "(got \"dryrun\"); did you mean 'dry_run'?",
    ]


def test_toml_syntax_error_names_file_line_and_column() -> None:
    path = FIXTURES / "syntax_error.toml"
    assert errors_of(path) == [
        f"{path}, line 5, column 8: TOML syntax error: Invalid value; "
        'text values need double quotes (mode = "dry_run"); true/false and numbers do not'
    ]


def test_bad_strategy_override_points_at_the_nested_key() -> None:
    path = FIXTURES / "bad_strategy.toml"
    assert errors_of(path) == [
        f"{path}, line 7: auto_stop.strategies.scalp.criteria.max_los_percent: unknown key; "
        "did you mean 'max_loss_percent'?",
        f"{path}, line 10: auto_stop.strategies.swing.criteria.profit_target_percent: "
        "expected a number greater than 0, got -5",
    ]


def test_missing_file_names_the_path_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert errors_of(Path("nope.toml")) == [
        f"nope.toml: config file not found ({tmp_path / 'nope.toml'}); copy config.toml from "
        "the project there, or pass --config with the path of an existing file"
    ]
    assert errors_of(tmp_path) == [
        f"{tmp_path}: this is a directory; give the config file's path, "
        f"e.g. {tmp_path / 'config.toml'}"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[engine]\ntick_seconds = 100\n",
            "c.toml, line 2: engine.tick_seconds: "
            "expected a number greater than 0 and at most 60, got 100",
        ),
        (
            "[risk]\nmax_open_positions = 0\n",
            "c.toml, line 2: risk.max_open_positions: expected a whole number of at least 1, got 0",
        ),
        (
            "[risk]\nmax_daily_loss = true\n",
            "c.toml, line 2: risk.max_daily_loss: "
            "expected a number (true/false is not a number), got true",
        ),
        (
            "[auto_stop.criteria]\nmax_loss_percent = nan\n",
            "c.toml, line 2: auto_stop.criteria.max_loss_percent: "
            "expected a finite number (nan and inf are not allowed), got nan",
        ),
        (
            '[engine]\nvenue = "kalshy"\n',
            'c.toml, line 2: engine.venue: expected one of: sim, paper, kalshi, ibkr (got "kalshy"); '
            "did you mean 'kalshi'?",
        ),
        (
            "[ui]\ntheme = 5\n",
            "c.toml, line 2: ui.theme: expected text in double quotes, got 5",
        ),
        (
            '[ui]\nengine = "fork"\n',
            'c.toml, line 2: ui.engine: expected one of: service, process, thread (got "fork")',
        ),
        (
            "engine = 5\n",
            "c.toml, line 1: engine: "
            "expected a table: a [engine] section or { key = value, ... }, got 5",
        ),
        (
            "[enigne]\n",
            "c.toml, line 1: enigne: unknown section; did you mean 'engine'?",
        ),
        (
            "[auto_stop]\nmax_loss_percent = 40\n",
            "c.toml, line 2: auto_stop.max_loss_percent: unknown key here; 'max_loss_percent' "
            "belongs in [auto_stop.criteria] or [auto_stop.strategies.NAME.criteria]",
        ),
        (
            "[auto_stop]\nfoo = 1\n",
            "c.toml, line 2: auto_stop.foo: unknown key; the keys allowed in [auto_stop] are: "
            "mode, armed, ladder_max_attempts, ladder_step_seconds, ladder_tick, ladder_floor, "
            "ladder, criteria, strategies",
        ),
        (
            "[signals]\nvolatility_windows_minutes = [\n  5,\n  0,\n]\n",
            "c.toml, line 2: signals.volatility_windows_minutes[1]: "
            "expected a whole number greater than 0, got 0",
        ),
        (
            "[signals]\nvolatility_windows_minutes = 5\n",
            "c.toml, line 2: signals.volatility_windows_minutes: "
            "expected a list in brackets, e.g. [1, 2, 3], got 5",
        ),
        (
            "[signals]\nregime_thresholds = [0.5, 0.4, 0.6, 0.8]\n",
            "c.toml, line 2: signals.regime_thresholds: expected 4 increasing numbers from 0 to 1, "
            "the boundaries very_low|low, low|medium, medium|high, high|extreme, "
            "got [0.5, 0.4, 0.6, 0.8]",
        ),
        (
            '[signals]\nmomentum_weights = { "5" = 0.3 }\n',
            "c.toml, line 2: signals.momentum_weights: unknown momentum window '5'; "
            "expected keys among: 1, 2, 3, 4, 15, 30 (minutes)",
        ),
        (
            "auto_stop.criteria.max_loss_percent = -5\n",
            "c.toml, line 1: auto_stop.criteria.max_loss_percent: "
            "expected a number greater than 0, got -5",
        ),
        (
            '[auto_stop.strategies."my scalp".criteria]\nmax_los_percent = 1\n',
            'c.toml, line 2: auto_stop.strategies."my scalp".criteria.max_los_percent: '
            "unknown key; did you mean 'max_loss_percent'?",
        ),
        (
            "[auto_stop.strategies.scalp]\ncritera = {}\n",
            "c.toml, line 2: auto_stop.strategies.scalp.critera: "
            "unknown section; did you mean 'criteria'?",
        ),
    ],
)
def test_error_messages(text: str, expected: str) -> None:
    assert errors_in(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[engine]\nvenue = "sim\n', ", line 2, column 13: TOML syntax error: Illegal character"),
        ("[x]\n[x]\n", ", line 2, column 3: TOML syntax error: Cannot declare ('x',) twice"),
        ("[ui]\ntheme = [1,\n", ", at the end of the file: TOML syntax error: Invalid value"),
    ],
)
def test_syntax_errors_name_the_place(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    [line] = errors_of(path)
    assert line.startswith(f"{path}{expected}")


def test_find_line_handles_dotted_keys_inline_tables_and_multiline_values() -> None:
    text = (
        "# [auto_stop] in a comment\n"  # 1
        'title = """\n'  # 2
        "[engine]\n"  # 3: inside a string, not a header
        'mode = "x"\n'  # 4: inside a string, not a key
        '"""\n'  # 5
        "[auto_stop]\n"  # 6
        "criteria.max_loss_percent = 3\n"  # 7
        "weights = [\n"  # 8
        "  1, # mode = 2\n"  # 9
        "]\n"  # 10
        "mode = 'live'\n"  # 11
        "[auto_stop.strategies.'a.b']\n"  # 12
        "criteria = { max_loss_percent = 1 }\n"  # 13
    )
    assert _find_line(text, ["auto_stop", "criteria", "max_loss_percent"]) == 7
    assert _find_line(text, ["auto_stop", "mode"]) == 11
    assert _find_line(text, ["auto_stop", "weights", 0]) == 8
    assert _find_line(text, ["auto_stop", "strategies", "a.b", "criteria", "x"]) == 13
    assert _find_line(text, ["engine", "mode"]) is None
    assert _find_line("", ["engine"]) is None


def test_every_problem_is_reported_at_once() -> None:
    lines = errors_in("[engine]\ntick_seconds = 0\nmark = 1\n[risk]\nmax_daily_loss = -1\n")
    assert [line.split(":")[0] for line in lines] == [
        "c.toml, line 2",
        "c.toml, line 3",
        "c.toml, line 5",
    ]


def test_config_error_carries_no_pydantic_context() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"engine": {"tick_seconds": -1}})
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert info.value.lines == [
        "config: engine.tick_seconds: expected a number greater than 0 and at most 60, got -1"
    ]


# --- criteria layering ---------------------------------------------------------------------------


def test_criteria_for_layers_global_then_strategy_then_trade() -> None:
    auto = AutoStopConfig(
        criteria=Criteria(max_loss_percent=40, profit_target_percent=80, ttc_cutoff_seconds=120),
        strategies={
            "scalp": StrategyConfig(criteria={"max_loss_percent": 25, "ttc_cutoff_seconds": None})
        },
    )
    assert auto.criteria_for("") == auto.criteria
    assert auto.criteria_for("unknown-strategy") == auto.criteria

    scalp = auto.criteria_for("scalp")
    assert scalp.max_loss_percent == 25  # strategy wins over global
    assert scalp.profit_target_percent == 80  # untouched keys come from global
    assert scalp.ttc_cutoff_seconds is None  # None disables the rule

    trade = auto.criteria_for("scalp", {"max_loss_percent": 10, "profit_target_percent": None})
    assert trade.max_loss_percent == 10  # trade wins over strategy
    assert trade.profit_target_percent is None
    assert trade.ttc_cutoff_seconds is None
    assert auto.criteria_for("", {"min_time_value": 0.1}).min_time_value == 0.1

    assert auto.criteria.max_loss_percent == 40  # layering never changes the global criteria


def test_criteria_overrides_are_validated() -> None:
    auto = AutoStopConfig()
    with pytest.raises(ValidationError):
        auto.criteria_for("", {"max_loss_pct": 10})
    with pytest.raises(ValidationError):
        auto.criteria_for("", {"max_loss_percent": -1})
    with pytest.raises(ValidationError):
        StrategyConfig(criteria={"profit_target": 1})


def test_strategy_overrides_from_toml_layer_like_the_others() -> None:
    text = (
        "[auto_stop.criteria]\nmax_loss_percent = 40\nprofit_target_percent = 80\n"
        "[auto_stop.strategies.scalp.criteria]\nprofit_target_percent = 30\n"
    )
    cfg = parse_config(tomllib.loads(text), text)
    crit = cfg.auto_stop.criteria_for("scalp", {"max_loss_percent": 15})
    assert (crit.max_loss_percent, crit.profit_target_percent) == (15, 30)


# --- secrets -------------------------------------------------------------------------------------


def _kalshi_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALSHI_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PATH", KEY_PATH)


def _assert_hidden(text: str) -> None:
    assert KEY_ID not in text
    assert KEY_PATH not in text


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _kalshi_env(monkeypatch)
    cfg = load_config(SHIPPED)
    kalshi = cfg.venues.kalshi
    assert kalshi.api_key_id is not None and kalshi.api_key_id.get_secret_value() == KEY_ID
    assert kalshi.private_key_path is not None
    assert kalshi.private_key_path.get_secret_value() == KEY_PATH


def test_a_secret_in_the_file_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _kalshi_env(monkeypatch)
    cfg = parse_config({"venues": {"kalshi": {"api_key_id": "from-file"}}})
    assert cfg.venues.kalshi.api_key_id is not None
    assert cfg.venues.kalshi.api_key_id.get_secret_value() == "from-file"


def test_secrets_never_show_in_output(monkeypatch: pytest.MonkeyPatch) -> None:
    _kalshi_env(monkeypatch)
    cfg = load_config(SHIPPED)
    text = cfg.redacted_toml()
    for shown in (text, str(cfg), repr(cfg), str(cfg.venues), repr(cfg.venues.kalshi)):
        _assert_hidden(shown)
    assert f'api_key_id = "{SECRET_MASK}"  # secret, redacted' in text
    assert f'private_key_path = "{SECRET_MASK}"  # secret, redacted' in text


def test_redacted_toml_round_trips_with_secrets_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    _kalshi_env(monkeypatch)
    cfg = load_config(SHIPPED)
    # The mask counts as "not set", so the same environment fills the secrets in again.
    assert parse_config(tomllib.loads(cfg.redacted_toml())) == cfg
    monkeypatch.delenv("KALSHI_API_KEY_ID")
    monkeypatch.delenv("KALSHI_PRIVATE_KEY_PATH")
    back = parse_config(tomllib.loads(cfg.redacted_toml()))
    assert back.venues.kalshi.api_key_id is None  # secrets excepted: never written out
    assert back.model_dump(exclude={"venues"}) == cfg.model_dump(exclude={"venues"})


def test_error_messages_never_echo_a_secret() -> None:
    path = FIXTURES / "secret_misplaced.toml"
    lines = errors_of(path)
    assert lines == [
        f"{path}, line 3: venues.kalshi.api_key: unknown key; did you mean 'api_key_id'?",
        f"{path}, line 4: venues.kalshi.private_key_path: expected text in double quotes",
    ]
    joined = "\n".join(lines)
    assert "DO-NOT-PRINT" not in joined and "424242" not in joined
    [line] = errors_in('[venues]\nkalshi = "sk-live-DO-NOT-PRINT"\n')
    assert "DO-NOT-PRINT" not in line
    assert line == (
        "c.toml, line 2: venues.kalshi: "
        "expected a table: a [venues.kalshi] section or { key = value, ... }"
    )


# --- redacted_toml -------------------------------------------------------------------------------


def _varied_config() -> Config:
    data: dict[str, Any] = {
        "engine": {"data_dir": 'C:\\trader\\"data"\n', "tick_seconds": 0.25, "mark": "mid"},
        "signals": {
            "momentum_weights": {"1": 1.0, "30": -0.5},
            "regime_thresholds": [0.1, 0.2, 0.3, 0.4],
        },
        "auto_stop": {
            "mode": "alert_only",
            "armed": False,
            "criteria": {"max_loss_percent": 12.5, "min_time_value": 0.1},
            "strategies": {
                "scalp": {"criteria": {"max_loss_percent": 25}},
                "my swing": {"criteria": {}},
                "trend": {},
            },
        },
        "risk": {"max_open_positions": 3, "on_daily_loss": "close_all"},
        "sim": {"seed": -3, "speed": 1e-05, "start_price": 1e20},
        "ui": {"theme": "nord\u00e9\t\u0001"},
        "venues": {"kalshi": {"environment": "prod"}},
    }
    return parse_config(data)


def test_redacted_toml_is_valid_toml_that_loads_back_equal() -> None:
    cfg = _varied_config()
    text = cfg.redacted_toml()
    assert parse_config(tomllib.loads(text)) == cfg
    assert parse_config(tomllib.loads(Config().redacted_toml())) == Config()


def test_redacted_toml_shows_unset_values_as_comments() -> None:
    text = Config().redacted_toml()
    assert "# max_loss_percent = (not set)" in text
    assert "# api_key_id = (not set)" in text
    assert "null" not in text.lower() and "None" not in text
    assert "\n[auto_stop.criteria]\n" in text
    assert "momentum_weights = { 1 = 0.3, 2 = 0.2, 3 = 0.15, 4 = 0.1, 15 = 0.15, 30 = 0.1 }" in text


# --- paths ---------------------------------------------------------------------------------------


def test_resolve_config_path_prefers_explicit_then_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("elsewhere.toml") == Path("elsewhere.toml")
    (tmp_path / "config.toml").write_text("", encoding="utf-8")
    assert resolve_config_path(None) == Path("config.toml")
    assert load_config(resolve_config_path(None)) == Config()


def test_data_path_relative_home_and_default(tmp_path: Path) -> None:
    assert parse_config({"engine": {"data_dir": "./data"}}).data_path() == Path("data")
    assert parse_config({"engine": {"data_dir": "~/ts"}}).data_path() == Path.home() / "ts"
    assert Config().data_path().name == "trade-supervisor"
    cfg = parse_config({"engine": {"data_dir": str(tmp_path)}})
    assert cfg.alert_log_path() == tmp_path / "alerts.jsonl"
    cfg = parse_config(
        {"engine": {"data_dir": str(tmp_path)}, "alerts": {"log_file": "/var/a.jsonl"}}
    )
    assert cfg.alert_log_path() == Path("/var/a.jsonl")


# --- switching a rule off in TOML ----------------------------------------------------------------


def test_false_switches_a_rule_off_for_a_strategy() -> None:
    text = (
        "[auto_stop.criteria]\nttc_cutoff_seconds = 120\nmax_loss_percent = false\n"
        "[auto_stop.strategies.scalp.criteria]\nttc_cutoff_seconds = false\n"
    )
    cfg = parse_config(tomllib.loads(text), text)
    assert cfg.auto_stop.criteria.max_loss_percent is None
    assert cfg.auto_stop.strategies["scalp"].criteria == {"ttc_cutoff_seconds": None}
    assert cfg.auto_stop.criteria_for("scalp").ttc_cutoff_seconds is None
    assert cfg.auto_stop.criteria_for("other").ttc_cutoff_seconds == 120
    out = cfg.redacted_toml()
    assert "ttc_cutoff_seconds = false  # rule off for this strategy" in out
    assert parse_config(tomllib.loads(out)) == cfg


def test_true_is_not_a_threshold() -> None:
    assert errors_in("[auto_stop.strategies.scalp.criteria]\nmax_loss_percent = true\n") == [
        "c.toml, line 2: auto_stop.strategies.scalp.criteria.max_loss_percent: "
        "expected a number, or false to switch the rule off, got true"
    ]


def test_ui_keys_name_known_binding_ids(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[ui.keys]\nclose_trad = "C"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    text = str(e.value)
    assert "line 2" in text and "close_trad" in text and "close_trade" in text
    p.write_text('[ui.keys]\nclose_trade = "ctrl+k,C"\n', encoding="utf-8")
    assert load_config(p).ui.keys == {"close_trade": "ctrl+k,C"}


# --- venue "kalshi" ------------------------------------------------------------------------------


def test_kalshi_venue_needs_the_api_key_and_names_the_env_vars() -> None:
    alert_only = '[auto_stop]\nmode = "alert_only"\n'
    [line] = errors_in('[engine]\nvenue = "kalshi"\n' + alert_only)
    assert line.startswith("c.toml, line 2: engine.venue: ")
    for word in ("venues.kalshi.api_key_id", "venues.kalshi.private_key_path"):
        assert word in line
    assert "KALSHI_API_KEY_ID" in line and "KALSHI_PRIVATE_KEY_PATH" in line
    text = f'[engine]\nvenue = "kalshi"\n{alert_only}[venues.kalshi]\napi_key_id = "{KEY_ID}"\n'
    [line] = errors_in(text)
    assert "private_key_path" in line and "api_key_id" not in line
    assert KEY_ID not in line


def test_kalshi_venue_takes_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALSHI_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PATH", KEY_PATH)
    cfg = parse_config({"engine": {"venue": "kalshi"}, "auto_stop": {"mode": "alert_only"}})
    assert cfg.engine.venue == "kalshi"


def test_kalshi_venue_refuses_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALSHI_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PATH", KEY_PATH)
    [line] = errors_in('[engine]\nvenue = "kalshi"\n[auto_stop]\nmode = "dry_run"\n')
    assert line.startswith('c.toml, line 4: auto_stop.mode: "dry_run" is not available')
    assert '"alert_only"' in line and KEY_PATH not in line


def test_spot_staleness_limit_is_within_the_engines() -> None:
    [line] = errors_in("[engine]\nmax_spot_age_seconds = 5\n[spot]\nstale_after_seconds = 8\n")
    assert line.startswith("c.toml, line 4: spot.stale_after_seconds: expected a number of at most")
    assert "engine.max_spot_age_seconds (5), got 8" in line
    [line] = errors_in('[spot]\nprimary = "kraken"\nfallback = "kraken"\n')
    assert "spot.fallback: the fallback must differ from the primary" in line


def test_delayed_ib_market_data_in_live_mode_is_refused_unless_allowed() -> None:
    live = '[engine]\nvenue = "ibkr"\n[auto_stop]\nmode = "live"\n[venues.ibkr]\n'
    for kind in ("delayed", "delayed_frozen"):
        [line] = errors_in(live + f'market_data_type = "{kind}"\n')
        assert line.startswith(f'c.toml, line 6: venues.ibkr.market_data_type: "{kind}"')
        assert "[venues.ibkr] allow_delayed_data = true" in line
        assert "\n" not in line
    for ok in (
        live + 'market_data_type = "delayed"\nallow_delayed_data = true\n',
        live.replace('"live"', '"alert_only"') + 'market_data_type = "delayed"\n',
        live + 'market_data_type = "live"\n',
    ):
        cfg = parse_config(tomllib.loads(ok), ok, "c.toml")
        assert cfg.engine.venue == "ibkr"


def test_the_ibkr_paper_example_config_loads() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "docs" / "ibkr-paper.toml")
    assert cfg.engine.venue == "ibkr" and cfg.venues.ibkr.port == 4002
    assert cfg.auto_stop.mode is Mode.ALERT_ONLY
    ladder = cfg.ladder()  # IB's own ladder keys, not [auto_stop] ladder_*
    assert (ladder.floor, ladder.tick, ladder.max_attempts, ladder.step_seconds) == (
        0.05,
        0.05,
        5,
        5.0,
    )
