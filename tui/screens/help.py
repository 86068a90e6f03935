"""The `?` screen: every key, as bound now (after `[ui.keys]` remapping), with what it does."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding(
            "escape,question_mark,q", "close", "Close", id="help_close", tooltip="Close the help"
        )
    ]

    def __init__(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """rows: (keys as shown, binding id, description, tooltip)."""
        super().__init__(classes="confirm")
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, pad_edge=False)
        table.add_column("Key", style="bold cyan", no_wrap=True)
        table.add_column("Id", style="dim", no_wrap=True)
        table.add_column("What it does")
        for keys, bid, desc, tip in self.rows:
            table.add_row(keys, bid, f"{desc}: {tip}" if tip else desc)
        with VerticalScroll(classes="dialog help"):
            yield Label(
                "Keys (remap them by id in [ui.keys] of config.toml)", classes="dialog-title"
            )
            yield Static(table)
            yield Label(
                "ctrl+p opens the command palette with every action. "
                "Escape or ? closes this screen.",
                classes="dim",
            )

    def action_close(self) -> None:
        self.dismiss(None)
