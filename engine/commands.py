"""The one command interface into the engine (used by the UI, the CLI, replay and SIGHUP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal[
    "close",
    "close_all",
    "pause",
    "resume",
    "pause_all",
    "resume_all",
    "arm",
    "disarm",
    "reload",
    "add_trade",
    "set_overrides",
    "journal_close",
    "release_position",
]

ACTIONS: tuple[str, ...] = Action.__args__  # type: ignore[attr-defined]

# The commands a replay file may carry (and `record` writes): the trader's own actions.
REPLAY_ACTIONS: tuple[str, ...] = (
    "pause",
    "resume",
    "pause_all",
    "resume_all",
    "arm",
    "disarm",
    "close",
    "close_all",
)


@dataclass(frozen=True, slots=True)
class Command:
    """A request to the engine.

    `close` sends an exit for `trade_id` (reason `manual`); `journal_close` records that the trade
    was closed elsewhere at `payload["price"]` without sending anything; `add_trade` takes the
    trade's fields in `payload`; `set_overrides` replaces a trade's rule thresholds with `payload`.
    """

    action: Action
    trade_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    message: str
