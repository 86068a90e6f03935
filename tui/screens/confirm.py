"""Confirmations for actions that move money or stop protection. Each is its own small modal."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no. `y` or the confirm button says yes; `n`, escape or the other button says no.

    The default button is "No": enter alone never confirms a destructive action.
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm_yes", tooltip="Confirm"),
        Binding("n,escape", "answer(False)", "No", id="confirm_no", tooltip="Cancel"),
    ]

    def __init__(self, title: str, body: Text | str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__(classes="confirm")
        self.title_text = title
        self.body = body
        self.yes_label = yes
        self.no_label = no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.body, classes="dialog-body", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes_label} (y)", variant="error", id="yes")
                yield Button(f"{self.no_label} (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")


class TypedConfirmScreen(ModalScreen[bool]):
    """Confirmed only by typing a word exactly (e.g. CLOSE) and pressing enter."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="typed_cancel", tooltip="Cancel")]

    def __init__(self, title: str, body: Text | str, word: str = "CLOSE") -> None:
        super().__init__(classes="confirm")
        self.title_text = title
        self.body = body
        self.word = word

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.body, classes="dialog-body", markup=False)
            yield Label(f"Type {self.word} and press enter to confirm; escape cancels.")
            yield Input(placeholder=self.word, id="word")
            yield Static("", id="typed-error", markup=False)

    def on_mount(self) -> None:
        self.query_one("#word", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip() == self.word:
            self.dismiss(True)
        else:
            self.query_one("#typed-error", Static).update(
                f"Not confirmed: type {self.word} exactly (capitals), or escape to cancel."
            )
            event.input.value = ""

    def action_cancel(self) -> None:
        self.dismiss(False)
