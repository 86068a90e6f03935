"""Alerts: what the supervisor saw and did, delivered to channels and stored.

The bus throttles repeats of the same alert (same kind and subject within `cooldown_seconds`): the
repeats are held back and counted, and the next one after the cooldown carries the count
(`Alert.repeats`). Channels are small objects with one `deliver` coroutine; a failing channel is
counted and never stops the engine. A channel with a `filter` (`AlertFilter`: minimum severity,
kinds, quiet hours) is given only the alerts the filter passes. Slow channels (desktop, webhook:
engine/alert_channels.py) only queue in `deliver` and send from their own task, so `raise_` never
waits on the network; they report their own `health()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TextIO

from engine import private_files
from engine.models import AlertKind, Severity
from engine.text import shown

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Alert:
    ts: float
    kind: AlertKind
    severity: Severity
    message: str
    trade_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    repeats: int = 0  # how many identical alerts the throttle held back before this one
    # 1, 2, 3... in the order the bus raised them (the UI's key for new alerts); alerts restored
    # from the journal at start-up count up to 0 (-n ... 0), so nothing old is announced again.
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "kind": str(self.kind),
            "severity": str(self.severity),
            "trade_id": self.trade_id,
            "message": self.message,
            "repeats": self.repeats,
            "data": _clean(dict(self.data)),
        }


class AlertChannel(Protocol):
    name: str

    async def deliver(self, alert: Alert) -> None: ...


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    """How an alert channel is doing, for the header: alerts sent, failed (every attempt failed,
    or the channel raised), dropped (its queue was full), held back by quiet hours, waiting."""

    name: str
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    quiet: int = 0
    pending: int = 0
    failing: bool = False  # the last delivery failed
    disabled: str | None = None  # why the channel is off (e.g. no desktop notification backend)


SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class Verdict(StrEnum):
    PASS = "pass"
    SKIP = "skip"  # below the severity or not one of the kinds
    QUIET = "quiet"  # within the quiet hours


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alerts a channel passes on. Quiet hours are (start, end) minutes after midnight in
    `tz` (end < start runs over midnight), taken at the alert's own time; critical alerts pass
    them. Alerts held back by quiet hours are dropped for the channel, not delayed."""

    min_severity: Severity = Severity.INFO
    kinds: frozenset[AlertKind] = frozenset()  # empty: every kind
    quiet_hours: tuple[int, int] | None = None
    tz: tzinfo = UTC

    def check(self, alert: Alert) -> Verdict:
        if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[self.min_severity]:
            return Verdict.SKIP
        if self.kinds and alert.kind not in self.kinds:
            return Verdict.SKIP
        if self.quiet_hours is not None and alert.severity is not Severity.CRITICAL:
            local = datetime.fromtimestamp(alert.ts, self.tz)
            minute = local.hour * 60 + local.minute
            start, end = self.quiet_hours
            inside = start <= minute < end if start < end else minute >= start or minute < end
            if inside:
                return Verdict.QUIET
        return Verdict.PASS


class JsonlChannel:
    """Appends each alert as one JSON line to a file (flushed per line)."""

    name = "log"

    def __init__(self, path: Path, filter: AlertFilter | None = None) -> None:
        self.filter = filter
        private_files.make_dir(path.parent)
        self._fh = private_files.open_append(path, encoding="utf-8")

    async def deliver(self, alert: Alert) -> None:
        self._fh.write(json.dumps(alert.to_json(), allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


_SEVERITY_MARK = {Severity.INFO: "  ", Severity.WARNING: "! ", Severity.CRITICAL: "!!"}


class PrintChannel:
    """Prints alerts as one line each (headless mode).

    When its stream is closed (`... | head` exited, the terminal went away) it switches itself
    off: one line on stderr says so, and the other channels carry on. Never a traceback per
    alert."""

    name = "stdout"

    def __init__(
        self, stream: TextIO | None = None, time_fmt: Callable[[float], str] | None = None
    ) -> None:
        self._stream = stream
        self._fmt = time_fmt or _utc_hms
        self.off: str | None = None
        self.sent = 0

    async def deliver(self, alert: Alert) -> None:
        if self.off is not None:
            return
        stream = self._stream or sys.stdout
        trade = f" [{shown(alert.trade_id)}]" if alert.trade_id else ""
        more = f" (+{alert.repeats} similar)" if alert.repeats else ""
        try:
            print(
                f"{self._fmt(alert.ts)} {_SEVERITY_MARK[alert.severity]}{alert.severity.value:<8} "
                f"{alert.kind.value:<17}{trade} {alert.message}{more}",
                file=stream,
                flush=True,
            )
        except (OSError, ValueError) as e:  # BrokenPipeError; ValueError: the file is closed
            self._switch_off(stream, e)
            return
        self.sent += 1

    def _switch_off(self, stream: TextIO, e: Exception) -> None:
        why = "the pipe was closed" if isinstance(e, BrokenPipeError) else f"{e}"
        self.off = f"stdout unusable ({why})"
        with contextlib.suppress(Exception):
            # What is still buffered would fail again at exit ("Exception ignored ..."): send
            # the stream's descriptor to /dev/null.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        with contextlib.suppress(Exception):
            print(
                f"trade-supervisor: {self.off}: the stdout alert channel is off; alerts still "
                "go to the alert log and the other channels",
                file=sys.stderr,
                flush=True,
            )
        log.warning("alert channel stdout switched off: %s", self.off)

    def health(self) -> ChannelHealth:
        return ChannelHealth(self.name, sent=self.sent, disabled=self.off)


class StoreLike(Protocol):
    async def add_alert(
        self, *, ts: float, kind: str, severity: str, trade_id: str | None, message: str, data: dict
    ) -> None: ...


class AlertBus:
    """Raises alerts: throttles, keeps the recent ones, fans out to channels, then stores."""

    def __init__(self, cooldown_seconds: float = 30.0, keep: int = 200) -> None:
        self.cooldown_seconds = cooldown_seconds
        self.channels: list[AlertChannel] = []
        self.store: StoreLike | None = None
        self.recent: deque[Alert] = deque(maxlen=max(keep, 1))
        self.failures: dict[str, int] = {}
        self.total = 0
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self.listeners: list[Callable[[Alert], None]] = []
        self._sent: dict[str, int] = {}  # per channel, for channels without their own health()
        self._quiet: dict[str, int] = {}
        self._failing: dict[str, bool] = {}

    def restore(self, rows: list[dict[str, Any]]) -> int:
        """Put stored alerts (newest first, as `Store.recent_alerts` returns them) back into
        `recent`, so the alerts pane shows what happened before a restart. Not re-delivered."""
        usable = [a for a in map(alert_from_row, rows) if a is not None][: self.recent.maxlen]
        for i, a in enumerate(reversed(usable)):  # oldest first, so the newest ends up in front
            self.recent.appendleft(replace(a, seq=i - len(usable) + 1))
        return len(usable)

    async def raise_(
        self,
        ts: float,
        kind: AlertKind,
        severity: Severity,
        message: str,
        trade_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        subject: str | None = None,
        every_channel: bool = False,
        throttle: bool = True,
    ) -> Alert | None:
        """Raise an alert; returns None when the throttle held it back as a repeat.
        `every_channel`: past every channel's filter (the engine stopping itself).
        `throttle=False`: never held back (a change of state: each one is its own news).
        The message is shown everywhere, so its control and bidi characters (a venue's text, an
        id from another program) are escaped here (engine.text.shown)."""
        message = shown(message)
        key = (kind.value, subject if subject is not None else (trade_id or message))
        last = self._last.get(key)
        if throttle and last is not None and ts - last < self.cooldown_seconds:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = ts
        self.total += 1
        alert = Alert(
            ts,
            kind,
            severity,
            message,
            trade_id,
            dict(data or {}),
            self._held.pop(key, 0),
            self.total,
        )
        self.recent.appendleft(alert)
        for ch in self.channels:
            f: AlertFilter | None = getattr(ch, "filter", None)
            verdict = Verdict.PASS if f is None or every_channel else f.check(alert)
            if verdict is Verdict.QUIET:
                self._quiet[ch.name] = self._quiet.get(ch.name, 0) + 1
            if verdict is not Verdict.PASS:
                continue
            try:
                await ch.deliver(alert)  # queueing channels return at once (never the network)
            except Exception:
                log.exception("alert channel %s failed", ch.name)
                self.failures[ch.name] = self.failures.get(ch.name, 0) + 1
                self._failing[ch.name] = True
            else:
                self._sent[ch.name] = self._sent.get(ch.name, 0) + 1
                self._failing[ch.name] = False
        for listener in self.listeners:
            listener(alert)
        # Stored last: a journal that cannot be written (a full disk) or is slow to answer
        # never delays or swallows the delivery above.
        if self.store is not None:
            try:
                await self.store.add_alert(
                    ts=ts,
                    kind=kind.value,
                    severity=severity.value,
                    trade_id=trade_id,
                    message=message,
                    data=_clean(dict(alert.data)),
                )
            except Exception as e:  # the journal being unwritable must not hide the alert
                if self.failures.get("store"):
                    log.error("could not store alert: %s", e)  # the first one has the traceback
                else:
                    log.exception("could not store alert")
                self.failures["store"] = self.failures.get("store", 0) + 1
        return alert

    def channel_health(self) -> tuple[ChannelHealth, ...]:
        """Each channel's health, in the order of `channels`."""
        out = []
        for ch in self.channels:
            quiet = self._quiet.get(ch.name, 0)
            own: Callable[[], ChannelHealth] | None = getattr(ch, "health", None)
            if own is not None:
                h = own()
                out.append(replace(h, quiet=h.quiet + quiet))
                continue
            out.append(
                ChannelHealth(
                    ch.name,
                    sent=self._sent.get(ch.name, 0),
                    failed=self.failures.get(ch.name, 0),
                    quiet=quiet,
                    failing=self._failing.get(ch.name, False),
                )
            )
        return tuple(out)


def alert_from_row(r: Mapping[str, Any]) -> Alert | None:
    """An alert as the journal stores it (a `Store` alerts row), or None if its kind or severity
    is one this version does not know."""
    if r.get("kind") not in AlertKind._value2member_map_:
        return None
    if r.get("severity") not in Severity._value2member_map_:
        return None
    return Alert(
        float(r["ts"]),
        AlertKind(r["kind"]),
        Severity(r["severity"]),
        str(r["message"]),
        r.get("trade_id"),
        dict(r.get("data") or {}),
    )


def _clean(v: Any) -> Any:
    """Make a value JSON-safe: NaN/inf become None, unknown objects become strings."""
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if v is None or isinstance(v, str | int | bool):
        return v
    return str(v)


def _utc_hms(ts: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.gmtime(ts))
