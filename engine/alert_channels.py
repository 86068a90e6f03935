"""Alert channels that talk to the outside: desktop notifications (plyer) and a webhook (httpx).

Both are `QueuedChannel`s: `deliver` only puts the alert on a bounded queue (when it is full the
oldest waiting alert is dropped and counted) and returns, so `AlertBus.raise_` — and the engine's
reaction path behind it — never waits on a desktop or the network. A task per channel drains the
queue; the webhook retries a failed POST with exponential backoff (`sleep` is injected in tests),
and after a 429 or 503 with `Retry-After` (seconds or an HTTP date, read by `engine.http_retry`
against the injected `now`) it waits that long instead when longer, at most
`retry_after_max_seconds` (`[engine]`); a server asking for longer is said once in an alert.
Each channel counts sent / failed / dropped and says why it is off (`health()`, shown in the
header through `AlertBus.channel_health`).

Secrets (the Telegram bot token, which Telegram puts in the request path) are never logged: a
failure is reported by status code or exception type, never by URL, and httpx's own request log
line is redacted while the channel is open.

`attach_channels` wires all of them (the JSON-lines log and stdout too) from `[alerts]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import time
import warnings
import zoneinfo
from collections import deque
from collections.abc import Awaitable, Callable
from email.header import Header
from pathlib import Path
from typing import Any, Protocol

import httpx

from engine.alerts import (
    Alert,
    AlertBus,
    AlertFilter,
    ChannelHealth,
    JsonlChannel,
    PrintChannel,
)
from engine.config import (
    AlertChannelConfig,
    AlertsConfig,
    DesktopAlertsConfig,
    WebhookAlertsConfig,
    parse_quiet_hours,
)
from engine.http_retry import DEFAULT_RETRY_AFTER_MAX_SECONDS, RetryGate
from engine.models import AlertKind, Severity
from engine.text import shown

log = logging.getLogger(__name__)

APP_TITLE = "Trade Supervisor"
TELEGRAM_API = "https://api.telegram.org"
CLOSE_GRACE_SECONDS = 2.0  # at close, how long waiting alerts may still be sent
NTFY_PRIORITY = {Severity.INFO: "3", Severity.WARNING: "4", Severity.CRITICAL: "5"}
NTFY_TAG = {Severity.INFO: "information_source", Severity.WARNING: "warning"}
NTFY_TAG[Severity.CRITICAL] = "rotating_light"

Sleep = Callable[[float], Awaitable[None]]


def alert_filter(cfg: AlertChannelConfig, time_zone: str = "UTC") -> AlertFilter:
    """The filter of one channel's config table."""
    return AlertFilter(
        Severity(cfg.min_severity),
        frozenset(AlertKind(k) for k in cfg.kinds),
        parse_quiet_hours(cfg.quiet_hours),
        zoneinfo.ZoneInfo(time_zone),
    )


def alert_title(alert: Alert) -> str:
    trade = f" {shown(alert.trade_id)}" if alert.trade_id else ""
    return f"{alert.severity.value.upper()} {alert.kind.value}{trade}"


def alert_text(alert: Alert) -> str:
    more = f" (+{alert.repeats} similar)" if alert.repeats else ""
    return f"{alert.message}{more}"


class DeliveryFailed(Exception):
    """One attempt failed. `retry` False: trying again would not help (a 4xx answer)."""

    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class QueuedChannel:
    """Base: a bounded queue drained by one task, attempts with exponential backoff, counts."""

    name = "queued"

    def __init__(
        self,
        *,
        filter: AlertFilter | None = None,
        queue_size: int = 100,
        max_attempts: int = 1,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.filter = filter
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._sleep = sleep
        self._queue: deque[Alert] = deque()
        self._queue_size = max(1, queue_size)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = False
        self._closing = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.failing = False
        self.disabled: str | None = None

    # --- the bus side: never blocks ------------------------------------------------------------

    async def deliver(self, alert: Alert) -> None:
        self.enqueue(alert)

    def enqueue(self, alert: Alert) -> None:
        if self.disabled is not None or self._closing:
            return
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(alert)
        self._idle.clear()
        self._wake.set()
        self.start()

    def health(self) -> ChannelHealth:
        return ChannelHealth(
            self.name,
            sent=self.sent,
            failed=self.failed,
            dropped=self.dropped,
            pending=len(self._queue),
            failing=self.failing,
            disabled=self.disabled,
        )

    # --- the task ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sending task (on the running loop); idempotent."""
        if self._task is None and self.disabled is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"alert-{self.name}"
            )

    async def wait_idle(self) -> None:
        """Until the queue is empty and nothing is being sent (tests; close)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            alert = self._queue.popleft()
            self._in_flight = True
            try:
                await self._attempts(alert)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a channel must not end its task
                log.exception("alert channel %s: unexpected error", self.name)
                self.failed += 1
                self.failing = True
            self._in_flight = False

    async def _attempts(self, alert: Alert) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._send(alert)
                if self.disabled is not None:
                    return  # the channel turned itself off: neither sent nor failed
            except DeliveryFailed as e:
                last_try = not e.retry or attempt >= self.max_attempts or self._closing
                if last_try:
                    self.failed += 1
                    self.failing = True
                    log.warning(
                        "alert channel %s: %s %s not delivered after %d attempt(s): %s",
                        self.name,
                        alert.severity.value,
                        alert.kind.value,
                        attempt,
                        e.reason,
                    )
                    return
                await self._sleep(self.backoff_delay(attempt))
            else:
                self.sent += 1
                self.failing = False
                return

    def backoff_delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1, 2, ...): base, 2·base, 4·base ..."""
        return min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))

    async def _send(self, alert: Alert) -> None:
        raise NotImplementedError

    async def aclose(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Stop taking alerts; send what waits for up to `grace` seconds (one attempt each),
        then stop the task."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            if not task.done():
                await asyncio.wait({task}, timeout=grace)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        lost = len(self._queue) + self._in_flight
        if lost:
            log.warning("alert channel %s: %d alert(s) not sent at close", self.name, lost)
        self.dropped += lost  # still waiting (or cut off) when the grace ran out
        self._queue.clear()
        self._in_flight = False
        self._idle.set()
        await self._close()

    async def _close(self) -> None:
        return None


# --- desktop -------------------------------------------------------------------------------------


class Notifier(Protocol):
    """plyer's `notification` (or a stand-in): `notify(title=, message=, app_name=, timeout=)`."""

    def notify(self, **kwargs: Any) -> Any: ...


def plyer_notifier() -> tuple[Notifier | None, str | None]:
    """plyer's notification object, or None and why there is no usable backend here.

    Resolving plyer's backend prints warnings and tracebacks to stderr when it finds none (the
    screen owns the terminal), so that is done here once, quietly."""
    if sys.platform.startswith("linux"):
        import os

        if not (
            os.environ.get("DISPLAY")
            or os.environ.get("WAYLAND_DISPLAY")
            or os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        ):
            return (
                None,
                "no desktop session (DISPLAY, WAYLAND_DISPLAY, DBUS_SESSION_BUS_ADDRESS unset)",
            )
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            from plyer import notification
            from plyer.facades import Notification

            backend = notification.notify.__self__  # resolves the platform's implementation
    except ImportError:
        return None, "plyer is not installed"
    except Exception as e:
        return None, f"plyer has no notification backend ({type(e).__name__})"
    if type(backend) is Notification:  # plyer's facade itself: NotImplementedError on notify
        return None, "plyer found no notification backend (no dbus module, no notify-send)"
    return notification, None


class DesktopChannel(QueuedChannel):
    """A desktop notification per alert, through plyer, from a worker thread (a notifier may
    block). Where there is no backend the channel is off from the start (`disabled` says why,
    logged once); a backend that turns out not to work on the first notification turns it off
    the same way."""

    name = "desktop"

    def __init__(
        self,
        notifier: Notifier | None = None,
        *,
        problem: str | None = None,
        timeout_seconds: int = 10,
        filter: AlertFilter | None = None,
        queue_size: int = 20,
        to_thread: Callable[..., Awaitable[Any]] = asyncio.to_thread,
    ) -> None:
        super().__init__(filter=filter, queue_size=queue_size, max_attempts=1)
        self._notifier = notifier
        self._timeout = timeout_seconds
        self._to_thread = to_thread
        if notifier is None:
            self._disable(problem or "no notifier")

    @classmethod
    def from_plyer(cls, **kwargs: Any) -> DesktopChannel:
        notifier, problem = plyer_notifier()
        return cls(notifier, problem=problem, **kwargs)

    def _disable(self, reason: str) -> None:
        if self.disabled is None:
            self.disabled = reason
            self._queue.clear()
            log.warning("desktop notifications are off: %s; carrying on without them", reason)

    async def _send(self, alert: Alert) -> None:
        assert self._notifier is not None
        try:
            await self._to_thread(
                self._notifier.notify,
                title=alert_title(alert),
                message=alert_text(alert),
                app_name=APP_TITLE,
                timeout=self._timeout,
            )
        except (NotImplementedError, ImportError, FileNotFoundError) as e:
            self._disable(f"the notification backend does not work ({type(e).__name__}: {e})")
            self._closing = True  # the task ends; nothing more is queued
        except Exception as e:
            raise DeliveryFailed(f"{type(e).__name__}: {e}", retry=False) from None


# --- webhook -------------------------------------------------------------------------------------


class _Redact(logging.Filter):
    """Masks a secret in log records (httpx logs every request's URL at INFO)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        if self.secret in msg:
            record.msg = msg.replace(self.secret, "**********")
            record.args = ()
        return True


class WebhookChannel(QueuedChannel):
    """POSTs each alert: `json` (the alert as a JSON object plus title and text), `ntfy` (the
    text as the body; Title, Priority and Tags headers, as ntfy's publish documents) or
    `telegram` (`POST {api}/bot<token>/sendMessage` with chat_id and text).

    5xx, 429, timeouts and connection errors are tried again after base, 2·base, 4·base ...
    seconds (at most `backoff_max_seconds`), up to `max_attempts` attempts; other answers below
    200 or from 300 up are not. A 429/503 with `Retry-After` is tried again no sooner than it
    says, at most `retry_after_max_seconds` later; the next alerts wait for it too. A longer one
    is reported once through `report` (the bus, from `attach_channels`) until a POST succeeds."""

    name = "webhook"

    def __init__(
        self,
        *,
        url: str,
        format: str = "json",
        telegram_bot_token: str = "",
        telegram_chat_id: str = "",
        timeout_seconds: float = 5.0,
        filter: AlertFilter | None = None,
        queue_size: int = 100,
        max_attempts: int = 4,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        now: Callable[[], float] = time.time,
        retry_after_max_seconds: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
        report: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__(
            filter=filter,
            queue_size=queue_size,
            max_attempts=max_attempts,
            backoff_base_seconds=backoff_base_seconds,
            backoff_max_seconds=backoff_max_seconds,
            sleep=sleep,
        )
        if format not in ("json", "ntfy", "telegram"):
            raise ValueError(f"unknown webhook format {format!r}")
        self.format = format
        self.retry_gate = RetryGate("webhook", now=now, max_seconds=retry_after_max_seconds)
        self._report = report
        self._excess_reported = False
        self._token = telegram_bot_token
        self._chat_id = telegram_chat_id
        if format == "telegram":
            self._url = f"{(url or TELEGRAM_API).rstrip('/')}/bot{telegram_bot_token}/sendMessage"
        else:
            self._url = url
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds), transport=transport, follow_redirects=False
        )
        self._redact: _Redact | None = None
        if telegram_bot_token:
            self._redact = _Redact(telegram_bot_token)
            logging.getLogger("httpx").addFilter(self._redact)  # its "HTTP Request: POST url"

    @classmethod
    def from_config(
        cls, cfg: WebhookAlertsConfig, time_zone: str = "UTC", **kwargs: Any
    ) -> WebhookChannel:
        token = cfg.telegram_bot_token.get_secret_value() if cfg.telegram_bot_token else ""
        return cls(
            url=cfg.url,
            format=cfg.format,
            telegram_bot_token=token,
            telegram_chat_id=cfg.telegram_chat_id,
            timeout_seconds=cfg.timeout_seconds,
            filter=alert_filter(cfg, time_zone),
            queue_size=cfg.queue_size,
            max_attempts=cfg.max_attempts,
            backoff_base_seconds=cfg.backoff_base_seconds,
            backoff_max_seconds=cfg.backoff_max_seconds,
            **kwargs,
        )

    def request_for(self, alert: Alert) -> dict[str, Any]:
        """The keyword arguments of the POST for an alert (url excepted)."""
        title, text = alert_title(alert), alert_text(alert)
        if self.format == "ntfy":
            tags = f"{NTFY_TAG[alert.severity]},{alert.kind.value}"
            return {
                "content": text.encode("utf-8"),
                "headers": {
                    "Title": _ascii_header(title),
                    "Priority": NTFY_PRIORITY[alert.severity],
                    "Tags": tags,
                    "Content-Type": "text/plain; charset=utf-8",
                },
            }
        if self.format == "telegram":
            return {
                "json": {
                    "chat_id": self._chat_id,
                    "text": f"{title}\n{text}",
                    "disable_notification": alert.severity is Severity.INFO,
                }
            }
        body = {"source": "trade-supervisor", "title": title, "text": text, **alert.to_json()}
        return {"json": body}

    async def _send(self, alert: Alert) -> None:
        wait = self.retry_gate.remaining()
        if wait > 0:  # the server said when to come back: after the backoff, the rest of it
            await self._sleep(wait)
        try:
            r = await self._client.post(self._url, **self.request_for(alert))
        except httpx.TimeoutException as e:
            raise DeliveryFailed(f"timed out ({type(e).__name__})") from None
        except httpx.HTTPError as e:  # refused, reset, DNS ...: never str(e), it may hold the URL
            raise DeliveryFailed(f"could not connect ({type(e).__name__})") from None
        ra = self.retry_gate.note(r.status_code, r.headers)
        if 200 <= r.status_code < 300:
            self.retry_gate.ok()
            self._excess_reported = False
            return
        retry = r.status_code >= 500 or r.status_code == 429
        if ra is None:
            raise DeliveryFailed(f"HTTP {r.status_code}", retry=retry)
        if ra.capped and not self._excess_reported:
            self._excess_reported = True
            text = self.retry_gate.describe()  # never the URL: it may hold a token
            log.warning("alert channel %s", text)
            if self._report is not None:
                await self._report(text)
        raise DeliveryFailed(f"HTTP {r.status_code}, Retry-After {ra.asked:.0f} s", retry=retry)

    async def _close(self) -> None:
        try:
            await self._client.aclose()
        finally:
            if self._redact is not None:
                logging.getLogger("httpx").removeFilter(self._redact)


def _ascii_header(v: str) -> str:
    """A header value as ASCII: RFC 2047 encoded when it is not (ntfy decodes it)."""
    if v.isascii():
        return v
    return Header(v, "utf-8").encode()


# --- wiring --------------------------------------------------------------------------------------


def attach_channels(
    bus: AlertBus,
    cfg: AlertsConfig,
    data_dir: Path,
    closers: list[Callable[[], object]],
    *,
    print_alerts: bool = False,
    desktop: Callable[..., DesktopChannel] = DesktopChannel.from_plyer,
    now: Callable[[], float] = time.time,
    retry_after_max_seconds: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
) -> None:
    """Add `[alerts]`'s channels to the bus (log, stdout, desktop, webhook), start the queued
    ones' tasks on the running loop and append their closers. `now` is the engine's clock
    (Retry-After dates; the time of the webhook's own alert)."""
    tz = cfg.time_zone
    if cfg.log_file:
        log_path = Path(cfg.log_file)
        jl = JsonlChannel(
            log_path if log_path.is_absolute() else data_dir / log_path,
            alert_filter(cfg.log, tz),
        )
        bus.channels.append(jl)
        closers.append(jl.close)
    if print_alerts:
        bus.channels.append(PrintChannel())
    queued: list[QueuedChannel] = []
    if cfg.desktop.enabled:
        queued.append(_desktop(cfg.desktop, tz, desktop))
    if cfg.webhook.enabled:

        async def report(text: str) -> None:
            await bus.raise_(
                now(), AlertKind.EXECUTION_FAILURE, Severity.WARNING, text, subject="webhook"
            )

        queued.append(
            WebhookChannel.from_config(
                cfg.webhook,
                tz,
                now=now,
                retry_after_max_seconds=retry_after_max_seconds,
                report=report,
            )
        )
    for ch in queued:
        bus.channels.append(ch)
        ch.start()
        closers.append(ch.aclose)


def _desktop(
    cfg: DesktopAlertsConfig, tz: str, make: Callable[..., DesktopChannel]
) -> DesktopChannel:
    return make(timeout_seconds=cfg.timeout_seconds, filter=alert_filter(cfg, tz))
