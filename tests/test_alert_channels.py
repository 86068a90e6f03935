"""Alert delivery: the webhook (generic JSON, ntfy, Telegram) against a loopback HTTP server,
channel filters and quiet hours, retries with backoff, failures in the health, the throttle, and
desktop notifications with and without a backend.

Everything runs on 127.0.0.1; backoff waits are recorded instead of slept (tests/loopback.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.alert_channels import (
    DesktopChannel,
    WebhookChannel,
    alert_filter,
    attach_channels,
    plyer_notifier,
)
from engine.alerts import AlertBus, ChannelHealth, JsonlChannel
from engine.clock import ManualClock
from engine.config import AlertsConfig, WebhookAlertsConfig, parse_config
from engine.models import AlertKind, Severity
from tests.loopback import RecordedSleeps, serve

TOKEN = "123456:SECRET-bot-token-ABCdef"
W, C, I = Severity.WARNING, Severity.CRITICAL, Severity.INFO  # noqa: E741


def ts_at(hhmm: str, day: int = 3) -> float:
    """A timestamp at HH:MM UTC on a fixed day."""
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(2026, 3, day, h, m, tzinfo=UTC).timestamp()


# ---- the loopback webhook server ----------------------------------------------------------------


@dataclass
class Hook:
    """What the server got, and how it answers: `statuses` in turn (then 200), optionally
    holding each request until `release` is set. A 429 / 503 carries `retry_after` as its
    `Retry-After` header when set; `clock` (when set) stamps each request's arrival (`at`)."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    retry_after: str | None = None
    clock: ManualClock | None = None
    at: list[float] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        h.requests.append(
            {"path": request.path, "headers": dict(request.headers), "body": body.decode()}
        )
        h.arrived.set()
        if h.clock is not None:
            h.at.append(h.clock.now())
        if h.hold:
            await h.release.wait()
        status = h.statuses.pop(0) if h.statuses else 200
        answer = web.json_response({"ok": status == 200}, status=status)
        if status in (429, 503) and h.retry_after is not None:
            answer.headers["Retry-After"] = h.retry_after
        return answer

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    async with serve(app, shutdown_timeout=0.1) as port:
        h.port = port
        yield h


def webhook(hook: Hook, sleeps: RecordedSleeps | None = None, **kw: Any) -> WebhookChannel:
    kw.setdefault("url", hook.url())
    kw.setdefault("backoff_base_seconds", 1.0)
    kw.setdefault("backoff_max_seconds", 5.0)
    return WebhookChannel(sleep=sleeps or RecordedSleeps(), **kw)


async def raised(bus: AlertBus, *alerts: tuple[float, AlertKind, Severity, str]) -> None:
    for ts, kind, sev, msg in alerts:
        await bus.raise_(ts, kind, sev, msg, trade_id="T1" if kind is AlertKind.AUTO_STOP else None)


def health(bus: AlertBus, name: str) -> ChannelHealth:
    return next(h for h in bus.channel_health() if h.name == name)


# ---- the formats --------------------------------------------------------------------------------


async def test_generic_json_body(hook: Hook) -> None:
    ch = webhook(hook)
    bus = AlertBus(30)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed at 0.41", "T1", {"pnl": -12.5})
    await ch.wait_idle()
    await ch.aclose()
    (req,) = hook.requests
    assert req["path"] == "/hook"
    assert req["headers"]["Content-Type"] == "application/json"
    body = json.loads(req["body"])
    assert body["source"] == "trade-supervisor"
    assert body["kind"] == "auto_stop" and body["severity"] == "critical"
    assert body["trade_id"] == "T1" and body["message"] == "closed at 0.41"
    assert body["ts"] == ts_at("12:00") and body["repeats"] == 0
    assert body["data"] == {"pnl": -12.5}
    assert body["title"] == "CRITICAL auto_stop T1" and body["text"] == "closed at 0.41"
    assert health(bus, "webhook") == ChannelHealth("webhook", sent=1)


async def test_ntfy_format_title_priority_tags_headers(hook: Hook) -> None:
    ch = webhook(hook, url=hook.url("/mytopic"), format="ntfy")
    bus = AlertBus(30)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed at 0.41 ✓", "T1")
    await bus.raise_(ts_at("12:01"), AlertKind.DATA_QUALITY, W, "spot stale — 12 s")
    await ch.wait_idle()
    await ch.aclose()
    first, second = hook.requests
    assert first["path"] == "/mytopic"
    assert first["body"] == "closed at 0.41 ✓"  # the message is the body, UTF-8
    assert first["headers"]["Title"] == "CRITICAL auto_stop T1"
    assert first["headers"]["Priority"] == "5"
    assert first["headers"]["Tags"] == "rotating_light,auto_stop"
    assert second["headers"]["Priority"] == "4"
    assert second["headers"]["Tags"] == "warning,data_quality"


async def test_telegram_send_message_path_and_body(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook.statuses = [500, 500]  # a failed alert: its log line must not show the token either
    ch = webhook(
        hook,
        max_attempts=2,
        url=hook.url("/tg"),
        format="telegram",
        telegram_bot_token=TOKEN,
        telegram_chat_id="-1001234",
    )
    bus = AlertBus(30)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.RISK_LIMIT, W, "daily loss 180 of 200")
    await bus.raise_(ts_at("12:00"), AlertKind.TRADE_DETECTED, I, "new trade", subject="x")
    await ch.wait_idle()
    await ch.aclose()
    assert [r["path"] for r in hook.requests] == [f"/tg/bot{TOKEN}/sendMessage"] * 3
    body = json.loads(hook.requests[1]["body"])
    assert body == {
        "chat_id": "-1001234",
        "text": "WARNING risk_limit\ndaily loss 180 of 200",
        "disable_notification": False,
    }
    assert json.loads(hook.requests[2]["body"])["disable_notification"] is True  # info: silent
    ours = "\n".join(  # the loopback server's own access log (aiohttp) is not ours
        r.getMessage() for r in caplog.records if not r.name.startswith("aiohttp")
    )
    assert TOKEN not in ours  # httpx's request lines are redacted
    assert "bot**********/sendMessage" in ours
    assert "HTTP 500" in ours


def test_telegram_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "42")
    cfg = parse_config({"alerts": {"webhook": {"enabled": True, "format": "telegram"}}})
    wh = cfg.alerts.webhook
    assert wh.telegram_bot_token is not None and wh.telegram_bot_token.get_secret_value() == TOKEN
    assert wh.telegram_chat_id == "42"
    assert TOKEN not in cfg.redacted_toml() and TOKEN not in repr(cfg)
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN")
    with pytest.raises(Exception, match="telegram_bot_token and telegram_chat_id"):
        parse_config({"alerts": {"webhook": {"enabled": True, "format": "telegram"}}})
    with pytest.raises(Exception, match="needs url"):
        parse_config({"alerts": {"webhook": {"enabled": True}}})


# ---- filters and quiet hours --------------------------------------------------------------------


async def test_min_severity_and_kinds(hook: Hook) -> None:
    cfg = WebhookAlertsConfig(
        enabled=True, url=hook.url(), min_severity="warning", kinds=["auto_stop", "risk_limit"]
    )
    ch = WebhookChannel.from_config(cfg, sleep=RecordedSleeps())
    bus = AlertBus(30)
    bus.channels.append(ch)
    await raised(
        bus,
        (ts_at("12:00"), AlertKind.AUTO_STOP, I, "info: below the minimum"),
        (ts_at("12:01"), AlertKind.DATA_QUALITY, C, "critical, but not a listed kind"),
        (ts_at("12:02"), AlertKind.RISK_LIMIT, W, "passes"),
        (ts_at("12:03"), AlertKind.AUTO_STOP, C, "passes too"),
    )
    await ch.wait_idle()
    await ch.aclose()
    assert [json.loads(r["body"])["message"] for r in hook.requests] == ["passes", "passes too"]


async def test_quiet_hours_drop_all_but_critical(hook: Hook) -> None:
    """Within the quiet hours a warning is dropped for the channel (not delayed: it is not sent
    when they end), counted as `quiet`; a critical alert passes. Other channels get everything."""
    cfg = WebhookAlertsConfig(
        enabled=True, url=hook.url(), min_severity="info", quiet_hours="22:00-07:00"
    )
    # New York: 22:00-07:00 local is 03:00-12:00 UTC in March (EDT from 8 March; day 3 is EST).
    ch = WebhookChannel.from_config(cfg, "America/New_York", sleep=RecordedSleeps())
    bus = AlertBus(0)
    bus.channels.append(ch)
    await raised(
        bus,
        (ts_at("04:00"), AlertKind.DATA_QUALITY, W, "23:00 local: quiet"),
        (ts_at("11:59"), AlertKind.REGIME_CHANGE, I, "06:59 local: quiet"),
        (ts_at("05:00"), AlertKind.AUTO_STOP, C, "00:00 local: critical passes"),
        (ts_at("12:00"), AlertKind.DATA_QUALITY, W, "07:00 local: after"),
        (ts_at("02:59"), AlertKind.DATA_QUALITY, W, "21:59 local: before"),
    )
    await ch.wait_idle()
    await ch.aclose()
    got = [json.loads(r["body"])["message"] for r in hook.requests]
    assert got == [
        "00:00 local: critical passes",
        "07:00 local: after",
        "21:59 local: before",
    ]
    h = health(bus, "webhook")
    assert (h.sent, h.quiet, h.failed) == (3, 2, 0)


def test_quiet_hours_without_midnight_and_bad_values() -> None:
    f = alert_filter(AlertsConfig(log={"quiet_hours": "12:00-13:30"}).log)
    assert f.quiet_hours == (720, 810)
    for bad in ("22:00", "25:00-07:00", "10:00-10:00", "7-8"):
        with pytest.raises(Exception, match="quiet_hours"):
            AlertsConfig(log={"quiet_hours": bad})


async def test_the_log_channel_is_filtered_too(tmp_path: Path) -> None:
    ch = JsonlChannel(
        tmp_path / "a.jsonl", alert_filter(AlertsConfig(log={"min_severity": "warning"}).log)
    )
    bus = AlertBus(0)
    bus.channels.append(ch)
    await raised(
        bus,
        (ts_at("12:00"), AlertKind.TRADE_DETECTED, I, "no"),
        (ts_at("12:00"), AlertKind.RISK_LIMIT, W, "yes"),
    )
    ch.close()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(x)["message"] for x in lines] == ["yes"]
    assert health(bus, "log") == ChannelHealth("log", sent=1)
    assert len(bus.recent) == 2  # the bus keeps (and stores) every alert


# ---- failures: retried with backoff, never blocking ---------------------------------------------


async def test_raise_never_waits_for_the_server(hook: Hook) -> None:
    """The server holds the POST until the test releases it; raise_ has returned long before."""
    hook.hold = True
    ch = webhook(hook)
    bus = AlertBus(30)
    bus.channels.append(ch)
    alert = await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed", "T1")
    assert alert is not None  # returned although nothing has even reached the server yet
    await hook.arrived.wait()  # the POST is at the server, unanswered
    assert health(bus, "webhook") == ChannelHealth("webhook", pending=0)  # taken, not sent
    await bus.raise_(ts_at("12:01"), AlertKind.AUTO_STOP, C, "closed", "T2")  # still instant
    assert health(bus, "webhook").pending == 1
    hook.release.set()
    await ch.wait_idle()
    assert health(bus, "webhook") == ChannelHealth("webhook", sent=2)
    await ch.aclose()


async def test_5xx_is_retried_with_exponential_backoff(hook: Hook) -> None:
    hook.statuses = [500, 503, 429]
    sleeps = RecordedSleeps()
    ch = webhook(hook, sleeps, max_attempts=4, backoff_base_seconds=1.0, backoff_max_seconds=3.0)
    bus = AlertBus(30)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed", "T1")
    await ch.wait_idle()
    await ch.aclose()
    assert len(hook.requests) == 4
    assert sleeps.delays == [1.0, 2.0, 3.0]  # doubling, capped at backoff_max_seconds
    assert health(bus, "webhook") == ChannelHealth("webhook", sent=1)


class ClockSleeps(RecordedSleeps):
    """Records each wait and moves the manual clock by it (the channel's time passes)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await super().__call__(seconds)


@pytest.mark.parametrize(
    ("status", "retry_after", "waited"),
    [
        (429, "10", 10.0),  # delta-seconds
        (503, "Tue, 03 Mar 2026 12:00:25 GMT", 25.0),  # an HTTP date, on the channel's clock
        (429, "3600", 60.0),  # longer than retry_after_max_seconds: the bound
    ],
)
async def test_retry_after_is_waited_for_and_bounded(
    hook: Hook, status: int, retry_after: str, waited: float
) -> None:
    clock = ManualClock(ts_at("12:00"))
    hook.statuses, hook.retry_after, hook.clock = [status], retry_after, clock
    reported: list[str] = []

    async def report(text: str) -> None:
        reported.append(text)

    ch = webhook(
        hook,
        ClockSleeps(clock),
        max_attempts=3,
        now=clock.now,
        retry_after_max_seconds=60.0,
        report=report,
    )
    bus = AlertBus(30)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed", "T1")
    await ch.wait_idle()
    await ch.aclose()
    first, second = hook.at
    assert second - first == waited  # not sooner than asked (backoff alone: 1 s), at most 60
    assert health(bus, "webhook") == ChannelHealth("webhook", sent=1)
    if waited == 60.0:  # a server asking for an hour is said once, never with the URL
        [text] = reported
        assert "3600" in text and "retry_after_max_seconds" in text and "127.0.0.1" not in text
    else:
        assert reported == []


async def test_failures_are_counted_and_shown(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    hook.statuses = [500, 500, 404]
    sleeps = RecordedSleeps()
    ch = webhook(hook, sleeps, max_attempts=2)
    bus = AlertBus(30)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "one", "T1")  # 500, 500: failed
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "two", "T2")  # 404: not retried
    await ch.wait_idle()
    h = health(bus, "webhook")
    assert (h.sent, h.failed, h.failing) == (0, 2, True)
    assert len(hook.requests) == 3 and sleeps.delays == [1.0]
    assert "HTTP 500" in caplog.text and "HTTP 404" in caplog.text
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "three", "T3")  # 200 again
    await ch.wait_idle()
    h = health(bus, "webhook")
    assert (h.sent, h.failed, h.failing) == (1, 2, False)
    await ch.aclose()

    from engine.snapshot import Snapshot
    from tui.panes import header_text

    def header(*channels: ChannelHealth) -> str:
        snap = Snapshot(
            1, 0.0, "sim", "dry_run", "SIM", False, True, False, None, (), (), (), (), None,  # type: ignore[arg-type]
            alert_channels=channels,
        )  # fmt: skip
        return header_text(snap).plain

    assert "webhook ✗2" in header(h)
    assert "webhook" not in header(ChannelHealth("webhook", sent=5))  # nothing lost: not shown
    assert "✗" not in header(ChannelHealth("desktop", disabled="no backend"))


async def test_timeout_and_refused_connection(hook: Hook) -> None:
    hook.hold = True  # never answers until released: every attempt times out
    sleeps = RecordedSleeps()
    ch = webhook(hook, sleeps, max_attempts=2, timeout_seconds=0.05)
    bus = AlertBus(30)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed", "T1")
    await ch.wait_idle()
    assert len(hook.requests) == 2 and sleeps.delays == [1.0]
    assert health(bus, "webhook").failed == 1
    hook.release.set()
    await ch.aclose()

    with socket.socket() as s:  # bound, never listening: refused, and no one else can take it
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        sleeps = RecordedSleeps()
        ch = WebhookChannel(url=f"http://127.0.0.1:{dead}/hook", max_attempts=3, sleep=sleeps)
        bus = AlertBus(30)
        bus.channels.append(ch)
        await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed", "T1")
        await ch.wait_idle()
        await ch.aclose()
    assert sleeps.delays == [1.0, 2.0]
    h = health(bus, "webhook")
    assert (h.failed, h.sent, h.failing) == (1, 0, True)


async def test_a_full_queue_drops_the_oldest(hook: Hook) -> None:
    hook.hold = True
    ch = webhook(hook, queue_size=2)
    bus = AlertBus(0)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "m0", "T0")
    await hook.arrived.wait()  # m0 is being sent; the queue is empty
    for i in range(1, 5):
        await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, f"m{i}", f"T{i}")
    assert health(bus, "webhook").dropped == 2  # m1 and m2 made way for m3 and m4
    hook.release.set()
    await ch.wait_idle()
    await ch.aclose()
    assert [json.loads(r["body"])["message"] for r in hook.requests] == ["m0", "m3", "m4"]
    h = health(bus, "webhook")
    assert (h.sent, h.dropped) == (3, 2)


async def test_close_gives_up_on_a_dead_server_quickly(hook: Hook) -> None:
    hook.hold = True
    ch = webhook(hook, max_attempts=5)
    bus = AlertBus(0)
    bus.channels.append(ch)
    for i in range(3):
        await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, f"m{i}", f"T{i}")
    await hook.arrived.wait()
    await ch.aclose(grace=0)  # does not wait for the held request
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "after close", "T9")
    h = health(bus, "webhook")
    assert (h.pending, h.dropped, h.sent) == (0, 3, 0)  # the one in flight and the two waiting
    hook.release.set()


# ---- the throttle -------------------------------------------------------------------------------


async def test_throttle_merges_repeats_with_a_count(hook: Hook) -> None:
    ch = webhook(hook, format="json")
    bus = AlertBus(cooldown_seconds=30)
    bus.channels.append(ch)
    t0 = ts_at("12:00")
    for dt in (0, 5, 10, 29):
        await bus.raise_(t0 + dt, AlertKind.DATA_QUALITY, W, "spot stale", subject="spot")
    await bus.raise_(t0 + 5, AlertKind.DATA_QUALITY, W, "quotes stale", subject="quotes")
    await bus.raise_(t0 + 31, AlertKind.DATA_QUALITY, W, "spot stale", subject="spot")
    await ch.wait_idle()
    await ch.aclose()
    bodies = [json.loads(r["body"]) for r in hook.requests]
    assert [(b["message"], b["repeats"]) for b in bodies] == [
        ("spot stale", 0),
        ("quotes stale", 0),
        ("spot stale", 3),
    ]
    assert bodies[2]["text"] == "spot stale (+3 similar)"


# ---- desktop ------------------------------------------------------------------------------------


class StandIn:
    """A notification object like plyer's: records calls, or raises what it is given."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def notify(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error


async def test_desktop_backend_gets_called() -> None:
    n = StandIn()
    ch = DesktopChannel(n, timeout_seconds=7, filter=alert_filter(AlertsConfig().desktop))
    bus = AlertBus(0)
    bus.channels.append(ch)
    await bus.raise_(ts_at("12:00"), AlertKind.TRADE_DETECTED, I, "below warning: not shown")
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed at 0.41", "T1")
    await ch.wait_idle()
    await ch.aclose()
    assert n.calls == [
        {
            "title": "CRITICAL auto_stop T1",
            "message": "closed at 0.41",
            "app_name": "Trade Supervisor",
            "timeout": 7,
        }
    ]
    assert health(bus, "desktop") == ChannelHealth("desktop", sent=1)


async def test_desktop_without_a_backend_is_off_once(caplog: pytest.LogCaptureFixture) -> None:
    n = StandIn(NotImplementedError("No usable implementation found!"))
    ch = DesktopChannel(n)
    bus = AlertBus(0)
    bus.channels.append(ch)
    for i in range(3):
        await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, f"m{i}", f"T{i}")
    await ch.wait_idle()
    await bus.raise_(ts_at("12:01"), AlertKind.AUTO_STOP, C, "later", "T9")
    await ch.aclose()
    assert len(n.calls) == 1  # tried once, then off: no more attempts
    h = health(bus, "desktop")
    assert h.disabled is not None and "NotImplementedError" in h.disabled
    assert (h.sent, h.failed, h.pending) == (0, 0, 0)
    offs = [r for r in caplog.records if "desktop notifications are off" in r.getMessage()]
    assert len(offs) == 1


async def test_plyer_on_a_server_is_detected_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    """No desktop session: `attach_channels` says so once in the log and carries on."""
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    notifier, problem = plyer_notifier()
    assert notifier is None and problem is not None
    cfg = AlertsConfig(log_file="")
    bus = AlertBus(0)
    closers: list[Any] = []
    attach_channels(bus, cfg, Path("."), closers)
    (h,) = bus.channel_health()
    assert h.name == "desktop" and h.disabled == problem
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed", "T1")  # carries on
    for c in closers:
        await c()
    assert [r.levelname for r in caplog.records if "desktop" in r.getMessage()] == ["WARNING"]
    assert capfd.readouterr().err == ""  # plyer's warnings and tracebacks kept off the terminal


async def test_attach_channels_wires_the_webhook(hook: Hook, tmp_path: Path) -> None:
    cfg = AlertsConfig(
        webhook={"enabled": True, "url": hook.url(), "min_severity": "critical"},
        desktop={"enabled": False},
    )
    bus = AlertBus(0)
    closers: list[Any] = []
    attach_channels(bus, cfg, tmp_path, closers, print_alerts=False)
    assert [c.name for c in bus.channels] == ["log", "webhook"]
    await bus.raise_(ts_at("12:00"), AlertKind.AUTO_STOP, C, "closed", "T1")
    await bus.raise_(ts_at("12:00"), AlertKind.RISK_LIMIT, W, "not critical")
    wh = bus.channels[1]
    assert isinstance(wh, WebhookChannel)
    await wh.wait_idle()
    for c in closers:
        r = c()
        if asyncio.iscoroutine(r):
            await r
    assert len(hook.requests) == 1
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 2
