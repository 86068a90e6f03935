"""The protection watchdog: which open trades are not being protected right now.

A trade is protected while the engine keeps evaluating it on fresh, valid data. The engine stamps
each trade's last such evaluation (`protected_ts`); the watchdog does not ask why an evaluation
did not happen — stale or missing quotes, a stalled feed task, an exception in a rule, a contract
without details, a venue answering nonsense — it only sees that it did not, so it also catches the
causes nobody has thought of yet. A trade past `limit` seconds is UNPROTECTED.

Owns: the current unprotected set (trade id -> `Unprotected`) and its episodes: a scan says which
trades became unprotected and which are protected again, so each episode is alerted once.
Calls: nothing. The engine feeds it the open trades and raises the alerts it describes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

GROUPS_SHOWN = 3  # reasons named in one alert; the rest are counted
IDS_SHOWN = 6  # trade ids named per reason


@dataclass(frozen=True, slots=True)
class Unprotected:
    """One trade the engine is not protecting, and why."""

    trade_id: str
    contract_id: str
    since: float  # its last evaluation on fresh, valid data (Unix s; its adoption if none yet)
    reason: str  # e.g. "KXBTCD-25NOV2415-T97000: quote 11s old (limit 10s)"


@dataclass(frozen=True, slots=True)
class Change:
    """What one scan found: trades that became unprotected, and trades protected again
    (with how many seconds they were unprotected, counted from their last protection)."""

    new: tuple[Unprotected, ...] = ()
    back: tuple[tuple[str, float], ...] = ()
    gone: tuple[str, ...] = ()  # unprotected until they closed (no longer open)


class ProtectionWatchdog:
    """Tracks the unprotected set across scans (see the module docstring)."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._current: dict[str, Unprotected] = {}

    @property
    def current(self) -> dict[str, Unprotected]:
        """The trades unprotected at the last scan, by trade id (read only)."""
        return self._current

    def scan(
        self,
        now: float,
        trades: Iterable[tuple[str, str, float]],
        reason: Callable[[str, float], str],
    ) -> Change:
        """Compare every open trade's (trade id, contract id, protected_ts) with the limit.

        `reason(trade_id, age)` is asked only for trades past the limit. A trade that is no
        longer open leaves the set as `gone` (closed trades need no protection)."""
        seen: dict[str, Unprotected] = {}
        new: list[Unprotected] = []
        back: list[tuple[str, float]] = []
        for tid, cid, protected_ts in trades:
            age = now - protected_ts
            if age > self.limit:
                u = Unprotected(tid, cid, protected_ts, reason(tid, age))
                seen[tid] = u
                if tid not in self._current:
                    new.append(u)
            elif tid in self._current:
                back.append((tid, now - self._current[tid].since))
        gone = tuple(tid for tid in self._current if tid not in seen and tid not in dict(back))
        self._current = seen
        return Change(tuple(new), tuple(back), gone)


def describe_new(new: Iterable[Unprotected], total: int) -> str:
    """One alert's text for trades that became unprotected, grouped by reason:
    "3 trades UNPROTECTED — t1, t2: KX-A: quote 14s old; t3: no contract details for KX-B"."""
    groups: dict[str, list[str]] = {}
    for u in new:
        groups.setdefault(u.reason, []).append(u.trade_id)
    n = sum(len(v) for v in groups.values())
    parts = []
    for why, ids in list(groups.items())[:GROUPS_SHOWN]:
        parts.append(f"{_ids(sorted(ids))}: {why}")
    if len(groups) > GROUPS_SHOWN:
        parts.append(f"and {len(groups) - GROUPS_SHOWN} more reasons")
    head = f"{n} trade{'s' if n != 1 else ''} UNPROTECTED"
    if total > n:
        head += f" ({total} in all)"
    return f"{head} — {'; '.join(parts)}. No auto-stop acts on them until this clears"


def _ids(ids: list[str]) -> str:
    more = f" +{len(ids) - IDS_SHOWN}" if len(ids) > IDS_SHOWN else ""
    return ", ".join(ids[:IDS_SHOWN]) + more


def describe_back(
    back: Iterable[tuple[str, float]], still: int, gone: Iterable[str] = ()
) -> str:
    """One alert's text for trades protected again (and those that closed meanwhile)."""
    items = sorted(back)
    parts = []
    if items:
        longest = max(s for _, s in items)
        n = len(items)
        parts.append(
            f"{n} trade{'s' if n != 1 else ''} protected again: "
            f"{_ids([tid for tid, _ in items])} (unprotected for up to {longest:.0f}s)"
        )
    closed = sorted(gone)
    if closed:
        parts.append(f"no longer open, so no longer unprotected: {_ids(closed)}")
    if still:
        parts.append(f"{still} still unprotected")
    return "; ".join(parts)
