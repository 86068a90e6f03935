"""Messages the engine host posts to the app (from another thread, with `post_message`)."""

from __future__ import annotations

from textual.message import Message

from engine.snapshot import Snapshot


class SnapshotReady(Message):
    """The engine's latest picture. A burst is collapsed: only the newest one is rendered."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotReady)


class EngineStopped(Message):
    """The engine ended (error is None after a normal stop)."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error
