"""The configuration: typed pydantic models, loaded once from TOML and validated.

A bad file never starts the engine: `load_config` raises `ConfigError` whose lines each name the
file, the TOML line, the dotted key and what was expected, in words a trader understands:

    config.toml, line 31: auto_stop.criteria.max_loss_percent: expected a number greater than 0,
    got -1

Secrets are `SecretStr`, may come from environment variables, print as `**********` and are never
echoed in an error message. The shipped `config.toml` documents every key.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from engine.models import AlertKind, Mode

APP_NAME = "trade-supervisor"
SECRET_MASK = "**********"
"""How a secret is shown. A secret whose value is the mask counts as not set (see KalshiConfig)."""

Pct = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Base: unknown keys are errors, values are checked on assignment too.

    Types are strict: a quoted "40" is not a number, `true` is not 1, 20.5 is not a whole number,
    and nan/inf are refused. In a file that controls money a value that needs guessing is an error.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


class Criteria(Strict):
    """Auto-stop thresholds. A key left out (None) disables its rule.

    Percentages are of the position's cost basis (P&L % = P&L / cost basis).
    """

    max_loss_percent: Pct | None = None  # close at P&L % <= -this
    profit_target_percent: Pct | None = None  # close at P&L % >= +this
    trailing_drawdown_percent: Pct | None = None  # close when P&L % falls this far below its peak
    trailing_activation_percent: NonNeg | None = None  # ... once the peak P&L % reached this
    max_holding_time_minutes: Pct | None = None  # close after holding this long
    momentum_threshold_bps: Pct | None = None  # momentum score against the position, basis points
    momentum_reversal_threshold_bps: Pct | None = None  # swing against the position, bps ...
    reversal_window_seconds: Annotated[float, Field(gt=0)] = 60.0  # ... within this window
    volatility_threshold: Unit | None = None  # volatility score 0..1
    volatility_spike_threshold: Annotated[float, Field(gt=0, le=1)] | None = None  # score rise ...
    spike_window_seconds: Annotated[float, Field(gt=0)] = 300.0  # ... within this window
    price_gap_threshold_percent: Pct | None = None  # spot move between two ticks, percent
    ttc_cutoff_seconds: Pct | None = None  # close when time to close <= this
    min_time_value: NonNeg | None = None  # options: close when time value <= this, dollars

    @field_validator("*", mode="before")
    @classmethod
    def _false_is_off(cls, v: Any, info: ValidationInfo) -> Any:
        # TOML has no null: `key = false` switches a rule off (e.g. in a strategy override).
        if isinstance(v, bool) and info.field_name in _OPTIONAL_RULES:
            if v:
                raise PydanticCustomError(
                    "rule_switch", "expected a number, or false to switch the rule off"
                )
            return None
        return v

    def merged(self, *overrides: dict[str, Any]) -> Criteria:
        """These criteria with each override applied in turn (later wins; None disables)."""
        data = self.model_dump()
        for o in overrides:
            data.update(o)
        return Criteria.model_validate(data)


_OPTIONAL_RULES = frozenset(k for k, f in Criteria.model_fields.items() if f.default is None)


class StrategyConfig(Strict):
    """One strategy's overrides: only the criteria keys given replace the global ones."""

    criteria: dict[str, Any] = Field(default_factory=dict)

    @field_validator("criteria")
    @classmethod
    def _known_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        # The ValidationError raised here keeps its own locations, so a bad key is reported as
        # auto_stop.strategies.NAME.criteria.KEY with its line, like any other key.
        Criteria.model_validate(v)
        return {k: None if x is False else x for k, x in v.items()}  # false = rule off


class LadderEndConfig(Strict):
    """[auto_stop.ladder]: what an exhausted exit ladder does, on every venue (the ladder's steps
    themselves are [auto_stop] ladder_*, or IB's own keys in [venues.ibkr])."""

    # "retry": leave the trade open (critical alert) and start a new ladder after
    # retry_after_seconds if the rule still fires. "cross": first send one last order at the most
    # aggressive price the venue accepts (engine/exit_ladder.py cross_limit), then as "retry".
    on_exhausted: Literal["retry", "cross"] = "retry"
    retry_after_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0


class AutoStopConfig(Strict):
    mode: Mode = Field(default=Mode.DRY_RUN, strict=False)  # the enum is given as text
    armed: bool = True
    # The exit's limit-price ladder (engine/exit_ladder.py).
    ladder_max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    ladder_step_seconds: Annotated[float, Field(gt=0)] = 2.0
    ladder_tick: Annotated[float, Field(ge=0, le=1000)] = 0.01
    ladder_floor: Annotated[float, Field(ge=0)] = 0.01
    ladder: LadderEndConfig = Field(default_factory=LadderEndConfig)
    criteria: Criteria = Field(default_factory=Criteria)
    strategies: dict[str, StrategyConfig] = Field(default_factory=dict)

    def criteria_for(
        self, strategy: str, trade_overrides: dict[str, Any] | None = None
    ) -> Criteria:
        """Effective criteria: global, then the strategy's overrides, then the trade's."""
        layers: list[dict[str, Any]] = []
        if strategy and strategy in self.strategies:
            layers.append(self.strategies[strategy].criteria)
        if trade_overrides:
            layers.append(trade_overrides)
        return self.criteria.merged(*layers) if layers else self.criteria


class RiskConfig(Strict):
    max_open_positions: Annotated[int, Field(ge=1)] | None = None
    max_total_risk: Pct | None = None  # dollars
    max_daily_loss: Pct | None = None  # dollars
    # What a breach of max_daily_loss / max_total_risk does besides its critical alert: "alert"
    # only, or "close_all": close every supervised trade through the normal exit path, once per
    # breach episode. A breach never pauses the stops (halt_on_breach did; it is refused now).
    on_daily_loss: Literal["alert", "close_all"] = "alert"
    on_total_risk: Literal["alert", "close_all"] = "alert"


class EngineConfig(Strict):
    venue: Literal["sim", "paper", "kalshi", "ibkr"] = "sim"
    data_dir: str = ""  # "" = the platform's user data dir
    tick_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_quote_age_seconds: Annotated[float, Field(gt=0)] = 10.0
    max_spot_age_seconds: Annotated[float, Field(gt=0)] = 10.0
    # Market data after failures (quote and spot polls, websocket reconnects): the longest wait
    # between two tries, jittered; and the longest Retry-After (429/503) obeyed.
    backoff_max_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    retry_after_max_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    mark: Literal["bid", "mid", "last"] = "bid"
    mark_sample_seconds: Annotated[float, Field(gt=0)] = 5.0
    snapshot_alerts: Annotated[int, Field(ge=0, le=10000)] = 200
    # The protection watchdog: an open trade not evaluated on fresh, valid data for longer than
    # this (seconds) is UNPROTECTED (badge, status, one critical alert per episode). None: the
    # quote age limit plus three ticks (see `unprotected_limit`).
    unprotected_after_seconds: Annotated[float, Field(gt=0)] | None = None

    def unprotected_limit(self) -> float:
        """Seconds without an evaluation on fresh data after which a trade is unprotected."""
        if self.unprotected_after_seconds is not None:
            return self.unprotected_after_seconds
        return self.max_quote_age_seconds + 3 * self.tick_seconds


MOMENTUM_WINDOWS = ("1", "2", "3", "4", "15", "30")
"""Momentum windows, in minutes, as the keys of `signals.momentum_weights`."""


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
    # The sigma of the strike probabilities: realised volatility, or the implied one (Deribit's
    # DVOL, [spot] dvol = true) while fresh, falling back to realised (see signals.choose_sigma).
    # The volatility score and regime stay realised either way.
    sigma_source: Literal["realized", "implied"] = "realized"
    implied_vol_max_age_seconds: Annotated[float, Field(gt=0)] = 300.0
    regime_thresholds: list[Unit] = Field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    # A change of the realised regime needs the volatility score past the current regime's
    # boundary by `regime_margin` (score units, 0..1) and kept there for `regime_dwell_seconds`
    # (signals.regime_past_margin, Engine._track_regime): no flapping on constant volatility.
    regime_margin: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    regime_dwell_seconds: Annotated[float, Field(ge=0)] = 600.0
    # ...and realised sigma this many percent away from its median while the current regime
    # held: the score is a percentile, which wanders over 0..1 on constant volatility too.
    regime_min_sigma_change_percent: Annotated[float, Field(ge=0)] = 50.0
    # While VIX values arrive (IBKR) and are fresh, the regime comes from the VIX level
    # (index points) instead of the volatility score; see Engine.vix_update.
    vix_regime_thresholds: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [12.0, 16.0, 20.0, 30.0]
    )
    vix_max_age_seconds: Annotated[float, Field(gt=0)] = 300.0
    edge_threshold: Unit = 0.05

    @field_validator("momentum_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(MOMENTUM_WINDOWS))
        if bad:
            raise ValueError(
                f"unknown momentum window {', '.join(repr(b) for b in bad)}; "
                f"expected keys among: {', '.join(MOMENTUM_WINDOWS)} (minutes)"
            )
        return v

    @field_validator("regime_thresholds")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        if len(v) != 4 or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(
                "expected 4 increasing numbers from 0 to 1, the boundaries "
                "very_low|low, low|medium, medium|high, high|extreme"
            )
        return v

    @field_validator("vix_regime_thresholds")
    @classmethod
    def _vix_thresholds(cls, v: list[float]) -> list[float]:
        if len(v) != 4 or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(
                "expected 4 increasing VIX levels (index points, e.g. [12, 16, 20, 30]), the "
                "boundaries very_low|low, low|medium, medium|high, high|extreme"
            )
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


ALERT_KIND_NAMES: tuple[str, ...] = tuple(k.value for k in AlertKind)
AlertKindName = Literal[ALERT_KIND_NAMES]  # type: ignore[valid-type]
SeverityName = Literal["info", "warning", "critical"]
_QUIET_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_quiet_hours(v: str) -> tuple[int, int] | None:
    """ "22:00-07:00" as (start, end) minutes after midnight; "" is None (no quiet hours).
    A window whose end is before its start runs over midnight."""
    if not v.strip():
        return None
    m = _QUIET_HOURS.match(v)
    if m is None:
        raise PydanticCustomError(
            "quiet_hours", 'expected "HH:MM-HH:MM" such as "22:00-07:00", or "" for none'
        )
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise PydanticCustomError("quiet_hours", "expected hours 00-23 and minutes 00-59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end % 1440:
        raise PydanticCustomError("quiet_hours", "the quiet hours start and end at the same time")
    return start, end


def _quiet_hours(v: str) -> str:
    parse_quiet_hours(v)
    return v


def _time_zone(v: str) -> str:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "time_zone", 'expected an IANA time zone such as "UTC" or "America/New_York"'
        ) from None
    return v


QuietHours = Annotated[str, AfterValidator(_quiet_hours)]


def _secrets_from_env(data: Any, keys: Sequence[tuple[str, str]]) -> Any:
    """A table's secrets: each `(key, ENV)` left out (or empty) is read from the environment
    variable; a redacted value read back from a dump (SECRET_MASK) counts as not set."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return data  # reported as "expected a table" by the model itself
    data = dict(data)
    for key, env in keys:
        if data.get(key) == SECRET_MASK:
            del data[key]
        if not data.get(key) and os.environ.get(env):
            data[key] = os.environ[env]
    return data


class AlertChannelConfig(Strict):
    """What one alert channel passes on: the alerts at or above a severity, of some kinds, and
    (except critical ones) not within its quiet hours. Every alert is stored whatever this says."""

    min_severity: SeverityName = "info"
    kinds: list[AlertKindName] = Field(default_factory=list)  # empty: every kind
    quiet_hours: QuietHours = ""  # "22:00-07:00" in [alerts] time_zone; critical ones pass


class AlertLogConfig(AlertChannelConfig):
    """The JSON-lines alert log ([alerts] log_file)."""


class DesktopAlertsConfig(AlertChannelConfig):
    """Desktop notifications through plyer, where the machine has a notification backend."""

    enabled: bool = True
    min_severity: SeverityName = "warning"
    timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 10  # how long the notice shows


class WebhookAlertsConfig(AlertChannelConfig):
    """An HTTP POST per alert: a generic JSON body, ntfy, or Telegram's Bot API `sendMessage`."""

    enabled: bool = False
    format: Literal["json", "ntfy", "telegram"] = "json"
    # json: the address posted to; ntfy: the topic's address ("https://ntfy.sh/mytopic");
    # telegram: the Bot API's address, "" for https://api.telegram.org.
    url: str = ""
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str = ""
    min_severity: SeverityName = "warning"
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 4
    backoff_base_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 100

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if v and not _HTTP_URL.match(v):
            raise PydanticCustomError(
                "url", 'expected an http(s) address such as "https://ntfy.sh/mytopic"'
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _from_env(cls, data: Any) -> Any:
        return _secrets_from_env(
            data,
            (
                ("telegram_bot_token", "TELEGRAM_BOT_TOKEN"),
                ("telegram_chat_id", "TELEGRAM_CHAT_ID"),
            ),
        )

    @model_validator(mode="after")
    def _complete(self) -> WebhookAlertsConfig:
        if not self.enabled:
            return self
        if self.format == "telegram":
            token = self.telegram_bot_token
            if token is None or not token.get_secret_value().strip() or not self.telegram_chat_id:
                raise ValueError(
                    'format = "telegram" needs telegram_bot_token and telegram_chat_id (or the '
                    "environment variables TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID)"
                )
        elif not self.url:
            raise ValueError(f'format = "{self.format}" needs url, the address to post to')
        return self


class AlertsConfig(Strict):
    log_file: str = "alerts.jsonl"  # relative paths are inside the data directory
    cooldown_seconds: NonNeg = 30.0
    print_headless: bool = True
    time_zone: Annotated[str, AfterValidator(_time_zone)] = "UTC"  # of the quiet hours
    log: AlertLogConfig = Field(default_factory=AlertLogConfig)
    desktop: DesktopAlertsConfig = Field(default_factory=DesktopAlertsConfig)
    webhook: WebhookAlertsConfig = Field(default_factory=WebhookAlertsConfig)


UI_KEY_IDS: tuple[str, ...] = (
    "close_trade",
    "pause_trade",
    "kill_switch",
    "arm",
    "close_all",
    "detail",
    "edit",
    "metrics",
    "reload",
    "filter",
    "clear_filter",
    "alert_severity",
    "alert_kind",
    "next_pane",
    "previous_pane",
    "help",
    "quit",
)
"""The ids of the screen's key bindings, remappable in `[ui.keys]` (the UI checks it has each)."""

UI_DEFAULT_KEYS: dict[str, str] = {
    "close_trade": "c",
    "pause_trade": "p",
    "kill_switch": "P",
    "arm": "a",
    "close_all": "X",
    "detail": "enter",
    "edit": "e",
    "metrics": "m",
    "reload": "r",
    "filter": "slash",
    "clear_filter": "escape",
    "alert_severity": "s",
    "alert_kind": "k",
    "next_pane": "tab",
    "previous_pane": "shift+tab",
    "help": "question_mark",
    "quit": "q",
}
"""Each binding's built-in key (tui/app.py binds these; a test checks the two agree)."""

UI_RESERVED_KEYS: dict[str, str] = {
    "ctrl+q": "quit at once",
    "ctrl+c": "copy / quit",
    "ctrl+p": "the command palette",
    "up": "move in a table",
    "down": "move in a table",
    "left": "move in a table",
    "right": "move in a table",
    "pageup": "move in a table",
    "pagedown": "move in a table",
    "home": "move in a table",
    "end": "move in a table",
}
"""Keys the screen's toolkit (Textual) itself binds: a `[ui.keys]` binding may not take them."""

_KEY_ALIASES = {"?": "question_mark", "/": "slash", "esc": "escape"}


def _key_set(keys: str) -> list[str]:
    """The keys of a binding ("ctrl+k, C" -> ["ctrl+k", "C"]), written the way Textual names them."""
    out = []
    for k in keys.split(","):
        k = k.strip()
        out.append(_KEY_ALIASES.get(k, k))
    return out


UiKeyId = Literal[UI_KEY_IDS]  # type: ignore[valid-type]
_KEY_LIST = re.compile(r"^\s*([A-Za-z0-9_+-]+|[!-~])(\s*,\s*([A-Za-z0-9_+-]+|[!-~]))*\s*$")


def _key_names(v: str) -> str:
    if not _KEY_LIST.match(v):
        raise PydanticCustomError(
            "ui_key",
            'expected Textual key names such as "c", "ctrl+k", "f5", several separated by commas',
        )
    return v


KeyName = Annotated[str, AfterValidator(_key_names)]


class UiConfig(Strict):
    theme: str = "textual-dark"
    refresh_seconds: Annotated[float, Field(ge=0.05, le=5)] = 0.25
    engine: Literal["service", "process", "thread"] = "service"
    on_quit: Literal["detach", "stop"] = "detach"  # engine = "service": what q does to it
    up_color: str = "green"
    down_color: str = "red"
    toasts: bool = True
    toast_min_severity: SeverityName = "warning"
    toast_kinds: list[AlertKindName] = Field(default_factory=list)  # empty: every kind
    toast_quiet_hours: QuietHours = ""  # in [alerts] time_zone; critical ones pass
    bell: bool = True
    bell_min_severity: SeverityName = "critical"
    bell_kinds: list[AlertKindName] = Field(default_factory=list)  # empty: every kind
    bell_quiet_hours: QuietHours = ""  # in [alerts] time_zone; critical ones pass
    keys: dict[UiKeyId, KeyName] = Field(default_factory=dict)


class KalshiConfig(Strict):
    """Kalshi's REST client: where, who, how long to wait, how often to ask, how to retry."""

    environment: Literal["prod", "demo"] = "demo"
    api_key_id: SecretStr | None = None
    private_key_path: SecretStr | None = None
    base_url: str | None = None  # overrides `environment` (a proxy, a test server)
    ws_url: str | None = None  # the websocket's address, overrides `environment` (as base_url)
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    read_requests_per_second: Annotated[float, Field(gt=0, le=1000)] = 20.0
    write_requests_per_second: Annotated[float, Field(gt=0, le=1000)] = 10.0
    rate_limit_burst: Annotated[int, Field(ge=1, le=100)] = 1
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 4
    backoff_base_seconds: Annotated[float, Field(gt=0, le=60)] = 0.25
    backoff_max_seconds: Annotated[float, Field(gt=0, le=300)] = 4.0
    # The market feed (engine.venue = "kalshi").
    series: str = "KXBTCD"
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    quote_refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    stream: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise PydanticCustomError(
                "base_url", 'expected an http(s) address such as "https://host/trade-api/v2"'
            )
        return v

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^wss?://[^/\s]+(/\S*)?$", v):
            raise PydanticCustomError(
                "ws_url", 'expected a websocket address such as "wss://host/trade-api/ws/v2"'
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _from_env(cls, data: Any) -> Any:
        return _secrets_from_env(
            data,
            (("api_key_id", "KALSHI_API_KEY_ID"), ("private_key_path", "KALSHI_PRIVATE_KEY_PATH")),
        )


_HTTP_URL = re.compile(r"^https?://[^/\s]+(/\S*)?$")


def _http_url(v: str) -> str:
    if not _HTTP_URL.match(v):
        raise PydanticCustomError("base_url", 'expected an http(s) address such as "https://host"')
    return v


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class SpotConfig(Strict):
    """The live spot price (engine.venue = "kalshi"): a primary source and a fallback."""

    primary: Literal["coinbase", "kraken"] = "coinbase"
    fallback: Literal["coinbase", "kraken", "none"] = "kraken"
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    stale_after_seconds: Annotated[float, Field(gt=0)] = 10.0
    coinbase_url: HttpUrl = "https://api.exchange.coinbase.com"
    kraken_url: HttpUrl = "https://api.kraken.com"
    dvol: bool = False
    deribit_url: HttpUrl = "https://www.deribit.com/api/v2"
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Websocket tickers instead of polling (REST still backfills the history).
    stream: bool = False
    coinbase_ws_url: str = "wss://ws-feed.exchange.coinbase.com"
    kraken_ws_url: str = "wss://ws.kraken.com/v2"

    @field_validator("coinbase_ws_url", "kraken_ws_url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        if not re.match(r"^wss?://[^/\s]+(/\S*)?$", v):
            raise PydanticCustomError("ws_url", 'expected a websocket address such as "wss://host"')
        return v

    @field_validator("fallback")
    @classmethod
    def _not_the_primary(cls, v: str, info: ValidationInfo) -> str:
        if v == info.data.get("primary"):
            raise ValueError(
                'the fallback must differ from the primary; use "none" for no fallback'
            )
        return v


class IbkrGroupConfig(Strict):
    """Legs held at IB that form one trade (a vertical, an iron condor): engine ids of the legs,
    e.g. "SPY 20261218 580P" (docs/ibkr.md)."""

    name: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    legs: Annotated[list[str], Field(min_length=2, max_length=8)]


class IbkrConfig(Strict):
    """Interactive Brokers through TWS or IB Gateway (engine.venue = "ibkr"), docs/ibkr.md."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 4002  # IB Gateway paper; 4001 live, TWS 7497/7496
    client_id: Annotated[int, Field(ge=0, le=2**31 - 1)] = 17
    readonly: bool = False  # true: never sends orders (the API's read-only mode)
    account: str = ""  # empty: the only managed account
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    reconnect_min_seconds: Annotated[float, Field(gt=0, le=600)] = 1.0
    reconnect_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    market_data_type: Literal["live", "frozen", "delayed", "delayed_frozen"] = "live"
    # Delayed (15-20 min old) market data in live mode: refused at start unless true; then the
    # header badge and every exit alert say "delayed data".
    allow_delayed_data: bool = False
    # The market pane and strike table: this underlying's nearest expiry.
    underlying: Annotated[str, Field(min_length=1, max_length=20)] = "SPY"
    underlying_currency: str = "USD"
    strikes: Annotated[int, Field(ge=2, le=200)] = 20
    vix: bool = True  # VIX (Index("VIX", "CBOE")) drives the regime
    exchange_calendar: str = "XNYS"  # the market calendar of the exchange's hours
    max_messages_per_second: Annotated[float, Field(gt=0, le=50)] = 45.0
    max_market_data_lines: Annotated[int, Field(ge=1, le=10_000)] = 100
    # The exit ladder at IB (replaces [auto_stop] ladder_* for this venue).
    min_price: Annotated[float, Field(ge=0)] = 0.05
    price_increment: Annotated[float, Field(gt=0, le=1000)] = 0.05
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    attempt_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 5.0
    # Outside the exchange's regular hours no exit is sent ("exit due at the open"). true: a
    # stock's exit goes out in IB's extended hours too (04:00-20:00 ET, `outsideRth`); options
    # always wait for the regular session (docs/ibkr.md, "Trading hours").
    exit_outside_rth: bool = False
    # Working orders of other clients (TWS itself, another API client) that would also close a
    # position: "warn" (alert once; close at most the position net of them), "cancel" (cancel
    # those this client may cancel, then close; the rest as "warn"), "hold" (close nothing
    # while they work; a critical alert). Our own older orders on it are always cancelled.
    on_foreign_orders: Literal["warn", "cancel", "hold"] = "warn"
    groups: list[IbkrGroupConfig] = Field(default_factory=list)


class VenuesConfig(Strict):
    kalshi: KalshiConfig = Field(default_factory=KalshiConfig)
    ibkr: IbkrConfig = Field(default_factory=IbkrConfig)


@dataclass(frozen=True, slots=True)
class Ladder:
    """An exit's limit ladder (engine/exit_ladder.py)."""

    tick: float
    floor: float
    max_attempts: int
    step_seconds: float
    on_exhausted: Literal["retry", "cross"] = "retry"  # [auto_stop.ladder], every venue
    retry_after_seconds: float = 60.0


class TapeConfig(Strict):
    """`[tape]`: what the engine saw on a live or simulated venue, kept for replay (engine/tape.py)."""

    enabled: bool = True
    keep_days: Annotated[int, Field(ge=1, le=3650)] = 30  # tapes of older UTC days are deleted
    max_mb: Annotated[float, Field(gt=0)] = 2000.0  # all tapes together; the oldest go first
    queue_events: Annotated[int, Field(ge=16, le=10_000_000)] = 100_000  # full: dropped, counted
    flush_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0  # a kill -9 loses at most this


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
    spot: SpotConfig = Field(default_factory=SpotConfig)
    tape: TapeConfig = Field(default_factory=TapeConfig)

    def ladder(self) -> Ladder:
        """The exit ladder of the configured venue: [auto_stop] ladder_*, or IB's own keys."""
        end = self.auto_stop.ladder
        if self.engine.venue == "ibkr":
            ib = self.venues.ibkr
            return Ladder(
                ib.price_increment,
                ib.min_price,
                ib.max_attempts,
                ib.attempt_timeout_seconds,
                end.on_exhausted,
                end.retry_after_seconds,
            )
        a = self.auto_stop
        return Ladder(
            a.ladder_tick,
            a.ladder_floor,
            a.ladder_max_attempts,
            a.ladder_step_seconds,
            end.on_exhausted,
            end.retry_after_seconds,
        )

    def data_path(self) -> Path:
        """The data directory (journal, alert log), created on demand by the caller.

        A relative `engine.data_dir` is relative to the working directory the app starts in.
        """
        if self.engine.data_dir:
            return Path(self.engine.data_dir).expanduser()
        return Path(platformdirs.user_data_dir(APP_NAME))

    def data_dir_problem(self, writable: bool = True) -> str | None:
        """Why the data directory cannot hold the journal (a file where it should be, a parent
        that is a file or, when `writable`, not writable), as one line naming the key and the
        fix; None if it can. Nothing is created."""
        p = self.data_path()
        key = f"engine.data_dir = {str(p)!r}"
        fix = "set engine.data_dir to a directory this user can write (nothing was written)"
        if p.exists():
            if not p.is_dir():
                return f"{key}: that is a file, not a directory; move the file away or {fix}"
            if writable and not os.access(p, os.W_OK | os.X_OK):
                return f"{key}: the directory is not writable (read-only?); {fix}"
            return None
        parent = p.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"{key}: cannot be created, {parent} is a file, not a directory; {fix}"
        if writable and not os.access(parent, os.W_OK | os.X_OK):
            return f"{key}: cannot be created, {parent} is not writable (read-only?); {fix}"
        return None

    def alert_log_path(self) -> Path:
        """The JSON-lines alert log: `alerts.log_file`, inside the data directory if relative."""
        return self.data_path() / Path(self.alerts.log_file).expanduser()

    def redacted_toml(self) -> str:
        """The effective config as TOML, with every secret shown as `**********`.

        The text loads back (`parse_config(tomllib.loads(text))`) into an equal Config, secrets
        excepted; keys that are not set (None) are shown as comments.
        """
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
        shown = f" ({path.absolute()})" if not path.is_absolute() else ""
        raise ConfigError(
            [
                f"{where}: config file not found{shown}; copy config.toml from the project "
                "there, or pass --config with the path of an existing file"
            ]
        ) from None
    except IsADirectoryError:
        example = path / "config.toml"
        raise ConfigError(
            [f"{where}: this is a directory; give the config file's path, e.g. {example}"]
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{where}: not UTF-8 text (bad byte at offset {e.start}); save the file as UTF-8"]
        ) from None
    except OSError as e:
        raise ConfigError([f"{where}: cannot read the file: {e.strerror or e}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_describe_syntax(e, where)]) from None
    return parse_config(data, text, where)


def parse_config(data: dict[str, Any], text: str = "", where: str = "config") -> Config:
    """Validate parsed TOML; `text` (the file) lets errors name their line, `where` the file."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
    else:
        problems = _cross_checks(cfg, text, where)
        if problems:
            raise ConfigError(problems)
        return cfg
    # In file order, so the trader can fix them top to bottom.
    lines = {id(err): _find_line(text, list(err["loc"])) for err in errors}
    errors.sort(key=lambda err: lines[id(err)] or float("inf"))
    raise ConfigError([_describe(err, text, where) for err in errors])


def _cross_checks(cfg: Config, text: str, where: str) -> list[str]:
    """Rules between keys of different tables, as `file, line N: key: what is wrong` lines."""

    def at(*loc: str) -> str:
        line = _find_line(text, list(loc))
        return f"{where}{f', line {line}' if line else ''}: {_dotted(list(loc))}"

    out: list[str] = _contradictions(cfg, at)
    limit = cfg.engine.max_spot_age_seconds
    if cfg.spot.stale_after_seconds > limit:
        out.append(
            f"{at('spot', 'stale_after_seconds')}: expected a number of at most "
            f"engine.max_spot_age_seconds ({_num(limit)}), got {_num(cfg.spot.stale_after_seconds)}; "
            "a source older than the engine accepts would be kept in use instead of the fallback"
        )
    live_venue = cfg.engine.venue in ("kalshi", "ibkr")
    if live_venue and cfg.auto_stop.mode is Mode.DRY_RUN:
        out.append(
            f'{at("auto_stop", "mode")}: "dry_run" is not available with engine.venue = '
            f'"{cfg.engine.venue}" (there is no simulated broker in front of a real account: its '
            'closes would be real orders); use "alert_only" to be told when a rule fires, or "live"'
        )
    ib = cfg.venues.ibkr
    if (
        cfg.engine.venue == "ibkr"
        and cfg.auto_stop.mode is Mode.LIVE
        and ib.market_data_type in ("delayed", "delayed_frozen")
        and not ib.allow_delayed_data
    ):
        out.append(
            f'{at("venues", "ibkr", "market_data_type")}: "{ib.market_data_type}" market data '
            "is 15-20 minutes old and live mode would run rules and price orders on it; use "
            '"live", or set [venues.ibkr] allow_delayed_data = true to accept it (the header '
            'and every exit alert then say "delayed data")'
        )
    if cfg.engine.venue == "kalshi":
        k = cfg.venues.kalshi
        missing = [
            f"venues.kalshi.{key} (or the environment variable {env})"
            for key, env, v in (
                ("api_key_id", "KALSHI_API_KEY_ID", k.api_key_id),
                ("private_key_path", "KALSHI_PRIVATE_KEY_PATH", k.private_key_path),
            )
            if v is None or not v.get_secret_value().strip()
        ]
        if missing:
            out.append(
                f'{at("engine", "venue")}: venue "kalshi" needs your Kalshi API key: set '
                + " and ".join(missing)
            )
    return out


def _contradictions(cfg: Config, at: Callable[..., str]) -> list[str]:
    """Keys that contradict each other, each line naming both: a `[ui.keys]` binding that takes
    another binding's key (or one the toolkit keeps), and a trailing stop that would arm only
    above the profit target (the target closes the trade first, so it never trails)."""
    out: list[str] = []
    configured = cfg.ui.keys
    effective = {k: configured.get(k, UI_DEFAULT_KEYS[k]) for k in UI_DEFAULT_KEYS}
    owner: dict[str, str] = {}
    for bid in UI_DEFAULT_KEYS:  # the built-in ids first: the configured one is the intruder
        if bid in configured:
            continue
        for key in _key_set(effective[bid]):
            owner.setdefault(key, bid)
    for bid, keys in configured.items():
        for key in _key_set(keys):
            if key in UI_RESERVED_KEYS:
                out.append(
                    f"{at('ui', 'keys', bid)}: {keys!r} takes {key!r}, the screen's own key for "
                    f"{UI_RESERVED_KEYS[key]}; choose another key"
                )
            elif key in owner and owner[key] != bid:
                other = owner[key]
                how = (
                    f"ui.keys.{other} = {configured[other]!r}"
                    if other in configured
                    else f"ui.keys.{other}'s built-in key {UI_DEFAULT_KEYS[other]!r}"
                )
                out.append(
                    f"{at('ui', 'keys', bid)}: {keys!r} takes {key!r}, which is {how}; one key "
                    f"would do two things: choose another key, or remap {other} too"
                )
            else:
                owner[key] = bid
    a = cfg.auto_stop
    layers: list[tuple[list[str], Criteria]] = [(["auto_stop", "criteria"], a.criteria)]
    layers += [
        (["auto_stop", "strategies", name, "criteria"], a.criteria_for(name))
        for name in a.strategies
    ]
    trail_keys = {
        "trailing_activation_percent",
        "profit_target_percent",
        "trailing_drawdown_percent",
    }
    for loc, c in layers:
        given = _given(cfg, loc)
        if loc[1] == "strategies" and not trail_keys & given:
            continue  # as the global criteria: said once, there
        glob = ["auto_stop", "criteria"]
        target_at = loc if "profit_target_percent" in given else glob
        problem = criteria_contradiction(c, _dotted(target_at) + ".")
        if problem is None:
            continue
        where = loc if "trailing_activation_percent" in given else glob
        out.append(f"{at(*where, 'trailing_activation_percent')}: {problem}")
    return out


def criteria_contradiction(c: Criteria, prefix: str = "") -> str | None:
    """Why these effective criteria contradict themselves, or None: a trailing stop that arms
    only at or above the profit target never trails (the target closes the trade first).
    Also checked by the screen's threshold editor for one trade's overrides."""
    act, target = c.trailing_activation_percent, c.profit_target_percent
    if c.trailing_drawdown_percent is None or act is None or target is None or act < target:
        return None
    return (
        f"{_num(act)} is not below {prefix}profit_target_percent ({_num(target)}): the profit "
        "target closes the trade before the trailing stop arms, so it never trails; lower the "
        "activation or raise the target"
    )


def _given(cfg: Config, loc: list[str]) -> set[str]:
    """The criteria keys written in the file at `loc` (the global table or a strategy's)."""
    if loc[1] == "criteria":
        return set(cfg.auto_stop.criteria.model_fields_set)
    return set(cfg.auto_stop.strategies[loc[2]].criteria)


# Modifier keys that mean nothing while their rule is off (its threshold key is not set).
_MODIFIES = {
    "trailing_activation_percent": "trailing_drawdown_percent",
    "reversal_window_seconds": "momentum_reversal_threshold_bps",
    "spike_window_seconds": "volatility_spike_threshold",
}


def override_warnings(base: Criteria, override: dict[str, Any], where: str) -> list[str]:
    """Warnings for a criteria override (a strategy's, a trade's) that sets a key of a rule that
    is off in the effective criteria: the key does nothing. Each line names both keys."""
    out: list[str] = []
    eff = base.merged(override)
    for key, rule_key in _MODIFIES.items():
        if key in override and override[key] is not None and getattr(eff, rule_key) is None:
            out.append(
                f"{where}.{key} = {_num(override[key])} has no effect: "
                f"{rule_key} is off there (set it, or remove {key})"
            )
    return out


def config_warnings(cfg: Config) -> list[str]:
    """What in a valid config probably does not do what its writer meant (printed by
    `check-config` and at start; the engine runs anyway)."""
    out: list[str] = []
    for name, s in cfg.auto_stop.strategies.items():
        where = f"auto_stop.strategies.{_key_part(name)}.criteria"
        out += override_warnings(cfg.auto_stop.criteria, s.criteria, where)
    return out


# --- error messages ------------------------------------------------------------------------------

_SYNTAX_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_SYNTAX_END = re.compile(r"\s*\(at end of document\)\s*$")


def _describe_syntax(e: tomllib.TOMLDecodeError, where: str) -> str:
    """`file, line L, column C: TOML syntax error: reason`, plus a hint for the usual mistakes.

    The offending line itself is not quoted: it may hold a secret.
    """
    msg = str(e)
    place = ""
    m = _SYNTAX_AT.search(msg)
    if m:
        place = f", line {m.group(1)}, column {m.group(2)}"
        msg = msg[: m.start()]
    else:
        m = _SYNTAX_END.search(msg)
        if m:
            place = ", at the end of the file"
            msg = msg[: m.start()]
    hint = "fix that line"
    if place == ", at the end of the file":
        hint = "a quote, bracket or brace opened earlier is never closed"
    elif "'\\n'" in msg:
        hint = "a quote opened on that line is never closed"
    elif msg.startswith("Invalid value"):
        hint = 'text values need double quotes (mode = "dry_run"); true/false and numbers do not'
    elif msg.startswith(("Unclosed", "Unterminated")):
        hint = "a quote or bracket opened there is never closed"
    elif msg.startswith("Cannot declare"):
        hint = "this [table] appears twice; merge the two"
    elif msg.startswith("Cannot overwrite"):
        hint = "this key is given twice; keep one"
    return f"{where}{place}: TOML syntax error: {msg}; {hint}"


def _describe(err: Any, text: str, where: str) -> str:
    """One pydantic error as `file, line N: dotted.key: what was expected, got what`."""
    loc: list[str | int] = list(err["loc"])
    key = _dotted([p for p in loc if p != "[key]"]) if loc else "(top level)"
    line = _find_line(text, loc)
    at = f", line {line}" if line else ""
    try:
        what = _expected(err, loc)
    except Exception:  # never let a message bug hide the error (or echo its input)
        what = str(err.get("msg", "invalid value"))
    return f"{where}{at}: {key}: {what}"


def _expected(err: Any, loc: list[str | int]) -> str:
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    node = _node_at(loc)
    secret = node.secret
    got_value = err.get("input")
    got = "" if secret else f", got {_show(got_value)}"

    if kind == "extra_forbidden":
        return _unknown_key(loc, got_value)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = node.bounds or {b: ctx[b] for b in ("gt", "ge", "lt", "le") if b in ctx}
        return f"expected {_a_number(node)} {_range_words(bounds)}{got}"
    if kind == "finite_number":
        return f"expected a finite number (nan and inf are not allowed){got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number{_quoted_hint(got_value)}{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number{_quoted_hint(got_value)}{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false (without quotes){got}"
    if kind in ("string_type", "string_sub_type"):
        return f"expected text in double quotes{got}"
    if kind in ("enum", "literal_error"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        msg = f"expected one of: {', '.join(choices)}"
        if not secret:
            msg += f" (got {_show(got_value)})"
            if isinstance(got_value, str):
                close = difflib.get_close_matches(got_value, choices, n=1)
                if close:
                    msg += f"; did you mean '{close[0]}'?"
        return msg
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table: a [{_dotted(loc)}] section or {{ key = value, ... }}{got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list in brackets, e.g. [1, 2, 3]{got}"
    if kind == "value_error":
        msg = str(err["msg"]).removeprefix("Value error, ")
        return msg if isinstance(got_value, dict) else f"{msg}{got}"
    msg = str(err["msg"])
    return f"{msg[:1].lower()}{msg[1:]}{got}"


# Keys renamed since they were first released: the error names the new key.
_RENAMED = {
    "exit_max_attempts": "ladder_max_attempts",
    "exit_retry_seconds": "ladder_step_seconds",
}
# Keys removed because their meaning changed: the error says what to write instead.
_REPLACED = {
    "halt_on_breach": (
        "removed: a breach no longer pauses the automatic exits; use on_daily_loss = "
        '"alert" (the default) or "close_all" (close every trade once), and on_total_risk '
        "likewise"
    ),
}


def _unknown_key(loc: list[str | int], value: Any) -> str:
    what = "unknown section" if isinstance(value, dict) else "unknown key"
    name = str(loc[-1]) if loc else ""
    if name in _RENAMED:
        return f"renamed: use '{_RENAMED[name]}' (same meaning)"
    if name in _REPLACED:
        return _REPLACED[name]
    parent = _node_at(loc[:-1])
    allowed = list(parent.model.model_fields) if parent.model else []
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        return f"{what}; did you mean '{close[0]}'?"
    homes = [t for t in _tables_with_key(name) if t != _dotted(loc[:-1])]
    if homes:
        return f"{what} here; '{name}' belongs in {' or '.join(f'[{t}]' for t in homes)}"
    if allowed:
        table = f"[{_dotted(loc[:-1])}]" if loc[:-1] else "the top level"
        return f"{what}; the keys allowed in {table} are: {', '.join(allowed)}"
    return what


def _quoted_hint(value: Any) -> str:
    if isinstance(value, str):
        return " (remove the quotes)" if _looks_numeric(value) else ""
    if isinstance(value, bool):
        return " (true/false is not a number)"
    return ""


def _looks_numeric(s: str) -> bool:
    try:
        float(s.replace("_", ""))
    except ValueError:
        return False
    return True


def _a_number(node: _Node) -> str:
    return "a whole number" if node.base is int else "a number"


def _range_words(b: dict[str, Any]) -> str:
    lo = ("gt", b["gt"]) if "gt" in b else ("ge", b["ge"]) if "ge" in b else None
    hi = ("lt", b["lt"]) if "lt" in b else ("le", b["le"]) if "le" in b else None
    if lo and hi and lo[0] == "ge" and hi[0] == "le":
        return f"from {_num(lo[1])} to {_num(hi[1])}"
    words = {"gt": "greater than", "ge": "of at least", "lt": "less than", "le": "of at most"}
    parts = [f"{words[pair[0]]} {_num(pair[1])}" for pair in (lo, hi) if pair]
    if len(parts) == 2:
        parts[1] = parts[1].removeprefix("of ")
    return " and ".join(parts)


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _show(v: Any) -> str:
    """A value as the trader wrote it in TOML (short)."""
    if isinstance(v, dict):
        return "a table"
    text = _fmt(v) if isinstance(v, str | bool | int | float | list) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_part(k: str | int) -> str:
    k = str(k)
    return k if _BARE.match(k) else _fmt(k)


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + _key_part(p)
    return out


# --- what the schema says about a key ------------------------------------------------------------

_NESTED_AS: dict[tuple[type[BaseModel], str], Any] = {(StrategyConfig, "criteria"): Criteria}
"""Free-form dicts that are validated as a model: their keys are that model's keys."""


class _Node:
    """The schema at a key path: its model (if a table), base type, bounds, whether secret."""

    def __init__(self) -> None:
        self.model: type[BaseModel] | None = None
        self.base: Any = None
        self.bounds: dict[str, Any] = {}
        self.secret = False


def _unwrap(ann: Any, metadata: list[Any]) -> Any:
    """Strip Annotated[...] (collecting its metadata) and `X | None` down to the base type."""
    while True:
        origin = get_origin(ann)
        if origin is Annotated:
            args = get_args(ann)
            metadata.extend(args[1:])
            ann = args[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(ann) if a is not type(None)]
            if len(rest) != 1:
                return ann
            ann = rest[0]
        else:
            return ann


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, FieldInfo):
            out.update(_bounds(list(m.metadata)))
            continue
        for name in ("gt", "ge", "lt", "le"):
            v = getattr(m, name, None)
            if v is not None:
                out[name] = v
    return out


def _node_at(loc: Sequence[str | int]) -> _Node:
    """Walk the Config schema along `loc`; unknown keys leave the node as far as it got."""
    node = _Node()
    ann: Any = Config
    metadata: list[Any] = []
    for part in loc:
        base = _unwrap(ann, metadata)
        if base is SecretStr:
            node.secret = True
        if isinstance(base, type) and issubclass(base, BaseModel):
            field = base.model_fields.get(str(part))
            if field is None:
                node.model = None
                return node
            ann = _NESTED_AS.get((base, str(part)), field.annotation)
            metadata = list(field.metadata)
        elif get_origin(base) is dict:
            ann, metadata = get_args(base)[1], []
        elif get_origin(base) is list:
            ann, metadata = get_args(base)[0], []
        else:
            return node
    base = _unwrap(ann, metadata)
    node.base = base
    node.bounds = _bounds(metadata)
    if base is SecretStr:
        node.secret = True
    if isinstance(base, type) and issubclass(base, BaseModel):
        node.model = base
        # A table holding secrets is never echoed: its value may be a misplaced secret.
        node.secret = node.secret or any(
            _unwrap(f.annotation, []) is SecretStr for f in base.model_fields.values()
        )
    return node


def _tables(model: type[BaseModel], prefix: list[str]) -> Iterator[tuple[str, type[BaseModel]]]:
    yield _dotted(prefix), model
    for name, field in model.model_fields.items():
        ann = _NESTED_AS.get((model, name), field.annotation)
        base = _unwrap(ann, [])
        if get_origin(base) is dict:
            base, name = _unwrap(get_args(base)[1], []), f"{name}.NAME"
        if isinstance(base, type) and issubclass(base, BaseModel):
            yield from _tables(base, [*prefix, *name.split(".")])


def _tables_with_key(key: str) -> list[str]:
    return [t for t, m in _tables(Config, []) if t and key in m.model_fields]


# --- where a key is in the file ------------------------------------------------------------------

_PART = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def _parse_key(s: str, i: int) -> tuple[list[str], int] | None:
    """A (dotted) TOML key at s[i:], and the index after it; None if there is none."""
    parts: list[str] = []
    while True:
        m = _PART.match(s, i)
        if not m or m.end() == i:
            return None
        raw = m.group(1) if m.group(1) is not None else m.group(3)
        if raw is None:
            raw = re.sub(r"\\(.)", r"\1", m.group(2))
        parts.append(raw)
        i = m.end()
        if i < len(s) and s[i] == ".":
            i += 1
            continue
        return parts, i


def _scan_value(s: str, i: int, state: dict[str, Any]) -> None:
    """Advance through a value, tracking open brackets and multi-line strings across lines."""
    n = len(s)
    while i < n:
        if state["ml"]:
            end = s.find(state["ml"], i)
            if end < 0:
                return
            i, state["ml"] = end + 3, None
            continue
        c = s[i]
        if c == "#":
            return
        if s.startswith('"""', i) or s.startswith("'''", i):
            state["ml"] = s[i : i + 3]
            i += 3
        elif c == '"':
            i += 1
            while i < n and s[i] != '"':
                i += 2 if s[i] == "\\" else 1
            i += 1
        elif c == "'":
            end = s.find("'", i + 1)
            i = n if end < 0 else end + 1
        elif c in "[{":
            state["depth"] += 1
            i += 1
        elif c in "]}":
            state["depth"] = max(0, state["depth"] - 1)
            i += 1
        else:
            i += 1


def _key_lines(text: str) -> Iterator[tuple[list[str], int]]:
    """(full key path, line number) of every table header and top-level `key =` in the text."""
    table: list[str] = []
    state: dict[str, Any] = {"depth": 0, "ml": None}
    for n, raw in enumerate(text.splitlines(), start=1):
        if state["ml"] or state["depth"]:
            _scan_value(raw, 0, state)
            continue
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            inner = s[2:] if s.startswith("[[") else s[1:]
            parsed = _parse_key(inner, 0)
            if parsed:
                table = parsed[0]
                yield table, n
            continue
        parsed = _parse_key(s, 0)
        if parsed and parsed[1] < len(s) and s[parsed[1]] == "=":
            yield [*table, *parsed[0]], n
            _scan_value(s, parsed[1] + 1, state)


def _find_line(text: str, loc: Sequence[str | int]) -> int | None:
    """The TOML line of a key path: where the key itself is, else the closest enclosing key or
    [table] (e.g. an inline table holding it, or a list holding a bad item). None if absent."""
    if not text or not loc:
        return None
    want = [str(p) for p in loc]
    best: tuple[int, int] | None = None  # (matched length, line)
    for path, n in _key_lines(text):
        if len(path) <= len(want) and want[: len(path)] == path:
            if len(path) == len(want):
                return n
            if best is None or len(path) > best[0]:
                best = (len(path), n)
    return best[1] if best else None


# --- TOML output ---------------------------------------------------------------------------------

_INLINE_MAPS = frozenset({"momentum_weights"})
"""Free-form maps written as inline tables; every other dict is a [section]."""


def _fmt(v: Any) -> str:
    """A TOML value."""
    if v is None:
        raise ValueError("TOML has no null; None values are written as comments")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + "".join(_ESCAPES.get(c) or _escape(c) for c in v) + '"'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_key_part(k)} = {_fmt(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(c: str) -> str:
    return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c


def _to_toml(data: dict[str, Any]) -> str:
    """Render the effective config as TOML: a table's plain keys first, then its sub-tables."""
    out: list[str] = []

    def emit(prefix: list[str], d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not _is_table(k, v)}
        tables = {k: v for k, v in d.items() if k not in scalars}
        if prefix and (scalars or not tables):
            out.append(f"\n[{_dotted(prefix)}]")
        override = len(prefix) >= 3 and prefix[-3] == "strategies" and prefix[-1] == "criteria"
        for k, v in scalars.items():
            if v is None and override:
                out.append(f"{_key_part(k)} = false  # rule off for this strategy")
            elif v is None:
                out.append(f"# {_key_part(k)} = (not set)")
            elif v == SECRET_MASK:
                out.append(f"{_key_part(k)} = {_fmt(v)}  # secret, redacted")
            else:
                out.append(f"{_key_part(k)} = {_fmt(v)}")
        for k, v in tables.items():
            emit([*prefix, k], v)

    emit([], data)
    return "\n".join(out).strip() + "\n"


def _is_table(key: str, value: Any) -> bool:
    # A dict is a [section], except the free-form maps that read better inline.
    return isinstance(value, dict) and key not in _INLINE_MAPS
