"""The configuration: typed pydantic models, loaded once from TOML and validated.

A bad file never starts the engine: `load_config` raises `ConfigError` whose lines each name the
file, the key (with its TOML line where it can be found) and what was expected. Secrets are
`SecretStr` and may come from environment variables; they print as `**********`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.models import Mode

APP_NAME = "trade-supervisor"

Pct = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Base: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Criteria(Strict):
    """Auto-stop thresholds. A key left out (None) disables its rule."""

    max_loss_percent: Pct | None = None
    profit_target_percent: Pct | None = None
    trailing_drawdown_percent: Pct | None = None
    trailing_activation_percent: NonNeg | None = None
    max_holding_time_minutes: Pct | None = None
    momentum_threshold_bps: Pct | None = None
    momentum_reversal_threshold_bps: Pct | None = None
    reversal_window_seconds: Annotated[float, Field(gt=0)] = 60.0
    volatility_threshold: Unit | None = None
    volatility_spike_threshold: Annotated[float, Field(gt=0, le=1)] | None = None
    spike_window_seconds: Annotated[float, Field(gt=0)] = 300.0
    price_gap_threshold_percent: Pct | None = None
    ttc_cutoff_seconds: Pct | None = None
    min_time_value: NonNeg | None = None

    def merged(self, *overrides: dict[str, Any]) -> Criteria:
        """These criteria with each override applied in turn (later wins; None disables)."""
        data = self.model_dump()
        for o in overrides:
            data.update(o)
        return Criteria.model_validate(data)


class StrategyConfig(Strict):
    criteria: dict[str, Any] = Field(default_factory=dict)

    @field_validator("criteria")
    @classmethod
    def _known_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        Criteria.model_validate(v)  # raises with the offending key named
        return v


class AutoStopConfig(Strict):
    mode: Mode = Mode.DRY_RUN
    armed: bool = True
    exit_max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    exit_retry_seconds: Annotated[float, Field(gt=0)] = 2.0
    criteria: Criteria = Field(default_factory=Criteria)
    strategies: dict[str, StrategyConfig] = Field(default_factory=dict)

    def criteria_for(self, strategy: str, trade_overrides: dict[str, Any] | None = None) -> Criteria:
        """Effective criteria: global, then the strategy's overrides, then the trade's."""
        layers: list[dict[str, Any]] = []
        if strategy and strategy in self.strategies:
            layers.append(self.strategies[strategy].criteria)
        if trade_overrides:
            layers.append(trade_overrides)
        return self.criteria.merged(*layers) if layers else self.criteria


class RiskConfig(Strict):
    max_open_positions: Annotated[int, Field(ge=1)] | None = None
    max_total_risk: Pct | None = None
    max_daily_loss: Pct | None = None
    halt_on_breach: bool = False


class EngineConfig(Strict):
    venue: Literal["sim", "paper"] = "sim"
    data_dir: str = ""
    tick_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_quote_age_seconds: Annotated[float, Field(gt=0)] = 10.0
    max_spot_age_seconds: Annotated[float, Field(gt=0)] = 10.0
    mark: Literal["bid", "mid", "last"] = "bid"
    mark_sample_seconds: Annotated[float, Field(gt=0)] = 5.0
    snapshot_alerts: Annotated[int, Field(ge=0, le=10000)] = 200


class SignalsConfig(Strict):
    momentum_weights: dict[str, float] = Field(
        default_factory=lambda: {"1": 0.30, "2": 0.20, "3": 0.15, "4": 0.10, "15": 0.15, "30": 0.10}
    )
    momentum_drift: bool = False
    volatility_windows_minutes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [5, 15, 30, 60]
    )
    volatility_lookback_minutes: Annotated[int, Field(gt=0)] = 1440
    fallback_sigma: Annotated[float, Field(gt=0, le=10)] = 0.50
    regime_thresholds: list[Unit] = Field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    edge_threshold: Unit = 0.05

    @field_validator("momentum_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = {"1", "2", "3", "4", "15", "30"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown momentum window(s) {bad}; use minutes among {sorted(allowed, key=int)}")
        return v

    @field_validator("regime_thresholds")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        if len(v) != 4 or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("needs 4 increasing values: very_low|low|medium|high|extreme boundaries")
        return v


class SimConfig(Strict):
    seed: int = 7
    speed: Annotated[float, Field(gt=0, le=10000)] = 1.0
    start_price: Annotated[float, Field(gt=0)] = 97000.0
    annual_vol: Annotated[float, Field(gt=0, le=5)] = 0.50
    vol_of_vol: Annotated[float, Field(ge=0, le=10)] = 1.5
    jumps_per_day: NonNeg = 4.0
    jump_size_percent: NonNeg = 0.6
    strikes: Annotated[int, Field(ge=1, le=2000)] = 21
    strike_spacing: Annotated[float, Field(gt=0)] = 250.0
    spread: Annotated[float, Field(ge=0, le=0.5)] = 0.02
    quote_noise: Annotated[float, Field(ge=0, le=0.5)] = 0.01
    demo_trades: Annotated[int, Field(ge=0, le=50)] = 4


class PaperConfig(Strict):
    slippage: Literal["none", "fixed", "size"] = "none"
    slippage_fixed: NonNeg = 0.01
    slippage_per_contract: NonNeg = 0.0005
    fee_per_contract: NonNeg = 0.0
    partial_fill_probability: Unit = 0.0
    reject_probability: Unit = 0.0
    seed: int = 11


class AlertsConfig(Strict):
    log_file: str = "alerts.jsonl"
    cooldown_seconds: NonNeg = 30.0
    print_headless: bool = True


class UiConfig(Strict):
    theme: str = "textual-dark"


class KalshiConfig(Strict):
    environment: Literal["prod", "demo"] = "demo"
    api_key_id: SecretStr | None = None
    private_key_path: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_env(cls, data: Any) -> Any:
        data = dict(data or {})
        for key, env in (("api_key_id", "KALSHI_API_KEY_ID"), ("private_key_path", "KALSHI_PRIVATE_KEY_PATH")):
            if not data.get(key) and os.environ.get(env):
                data[key] = os.environ[env]
        return data


class VenuesConfig(Strict):
    kalshi: KalshiConfig = Field(default_factory=KalshiConfig)


class Config(Strict):
    engine: EngineConfig = Field(default_factory=EngineConfig)
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    auto_stop: AutoStopConfig = Field(default_factory=AutoStopConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    sim: SimConfig = Field(default_factory=SimConfig)
    paper: PaperConfig = Field(default_factory=PaperConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    venues: VenuesConfig = Field(default_factory=VenuesConfig)

    def data_path(self) -> Path:
        """The data directory (journal, alert log), created on demand by the caller."""
        if self.engine.data_dir:
            return Path(self.engine.data_dir).expanduser()
        return Path(platformdirs.user_data_dir(APP_NAME))

    def redacted_toml(self) -> str:
        """The effective config as TOML, with every secret shown as `**********`."""
        return _to_toml(self.model_dump(mode="json"))


class ConfigError(Exception):
    """A config that cannot be used. `lines` each name the place and what is expected."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def default_config_paths() -> list[Path]:
    return [Path("config.toml"), Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"]


def resolve_config_path(explicit: str | None) -> Path | None:
    """The config file to read: the explicit one, else ./config.toml, else the user's config dir."""
    if explicit:
        return Path(explicit)
    for p in default_config_paths():
        if p.is_file():
            return p
    return None


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; None means the built-in defaults."""
    if path is None:
        return Config()
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{where}: file not found; create it (see config.toml in the project) or pass --config PATH"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{where}: cannot read the file ({e})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{where}: TOML syntax error: {e}; fix the line it names"]) from None
    return parse_config(data, text, where)


def parse_config(data: dict[str, Any], text: str = "", where: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError([_describe(err, text, where) for err in e.errors()]) from None


def _describe(err: Any, text: str, where: str) -> str:
    loc = [str(p) for p in err["loc"]]
    # Errors raised inside nested strategy criteria carry the key inside the message; keep both.
    key = ".".join(loc) if loc else "(top level)"
    line = _find_line(text, loc)
    at = f" (line {line})" if line else ""
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling against config.toml"
    elif "input" in err and err["type"] != "missing":
        got = err["input"]
        if isinstance(got, str | int | float | bool):
            msg = f"{msg} (got {got!r})"
    return f"{where}: {key}{at}: {msg}"


_HEADER = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")
_KEY = re.compile(r"^\s*\"?([A-Za-z0-9_\-]+)\"?\s*=")


def _find_line(text: str, loc: list[str]) -> int | None:
    """Best-effort TOML line of a dotted key path: the `key =` line under its table header."""
    if not text or not loc:
        return None
    table: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(raw)
        if m:
            table = [p.strip().strip('"') for p in m.group(1).split(".")]
            if table == loc:
                return n
            continue
        k = _KEY.match(raw)
        if k and table + [k.group(1)] == loc[: len(table) + 1] and len(table) < len(loc):
            return n
    return None


def _to_toml(data: dict[str, Any]) -> str:
    """Render the effective config as TOML: scalars first, then tables."""
    out: list[str] = []

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {fmt(x)}' for k, x in v.items()) + " }"
        return repr(v)

    def emit(prefix: list[str], d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) or not _is_table(k, prefix)}
        tables = {k: v for k, v in d.items() if k not in scalars}
        if prefix and (scalars or not tables):
            out.append(f"\n[{'.'.join(prefix)}]")
        for k, v in scalars.items():
            if v is None:
                out.append(f"# {k} = (not set)")
            else:
                out.append(f"{k} = {fmt(v)}")
        for k, v in tables.items():
            emit([*prefix, k], v)

    emit([], data)
    return "\n".join(out).strip() + "\n"


def _is_table(key: str, prefix: list[str]) -> bool:
    # Free-form maps stay inline tables; everything else is a [section].
    return key not in ("momentum_weights",) and not (prefix and prefix[-1] == "strategies" and False)
