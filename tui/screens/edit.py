"""The thresholds form: edit one trade's auto-stop thresholds and save them as its overrides.

One input per trader-facing `Criteria` field, prefilled with the value in force (empty = rule
off). Save parses every field, validates the whole set with `Criteria.model_validate` locally
(errors are shown next to the field and nothing is sent), and submits only what changed.

The engine's `set_overrides` REPLACES the trade's overrides with the payload, so the payload is
the trade's saved overrides with the changed fields applied on top: a value the trader did not
touch is neither pinned (a global/strategy value stays global) nor lost (a saved override stays).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from engine.commands import CommandResult
from engine.config import Criteria, criteria_contradiction
from engine.snapshot import TradeDetail

__all__ = [
    "FIELDS",
    "EditThresholdsScreen",
    "Submit",
    "describe_error",
    "format_value",
    "parse_value",
]

Submit = Callable[[dict[str, float | bool]], Awaitable[CommandResult]]

FIELDS: tuple[tuple[str, str], ...] = (
    ("max_loss_percent", "% of cost basis, > 0"),
    ("profit_target_percent", "% of cost basis, > 0"),
    ("trailing_drawdown_percent", "% points below the peak, > 0"),
    ("trailing_activation_percent", "peak P&L % that arms the trail, ≥ 0"),
    ("max_holding_time_minutes", "minutes, > 0"),
    ("momentum_threshold_bps", "bps against the position, > 0"),
    ("momentum_reversal_threshold_bps", "bps swing against, > 0"),
    ("volatility_threshold", "score 0 to 1"),
    ("volatility_spike_threshold", "score rise, > 0 to 1"),
    ("price_gap_threshold_percent", "% spot move between ticks, > 0"),
    ("ttc_cutoff_seconds", "seconds before close, > 0"),
    ("min_time_value", "$ per unit (options), ≥ 0"),
)
"""The fields on the form, in order, with the unit hint shown next to each."""

_FIELD_NAMES = frozenset(name for name, _ in FIELDS)
_OFF_HINT = "empty = off"


def format_value(v: float | None) -> str:
    """A threshold as the input shows it: exact (round-trips through float), "" when off."""
    if v is None:
        return ""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def parse_value(text: str) -> float | None:
    """Input text → threshold: empty is None (rule off); raises ValueError when not a number."""
    text = text.strip()
    if not text:
        return None
    return float(text)


def describe_error(err: Mapping[str, Any]) -> str:
    """One pydantic error in words a trader reads: "must be greater than 0 (got -5)"."""
    kind = str(err.get("type", ""))
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    got = err.get("input")
    shown = f" (got {format_value(got)})" if isinstance(got, int | float) else ""
    words = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in words:
        phrase, key = words[kind]
        return f"must be {phrase} {format_value(ctx.get(key))}{shown}"
    if kind == "finite_number":
        return "must be a finite number (not nan or inf)"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{msg[:1].lower()}{msg[1:]}{shown}"


def _changed(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    return float(old) != new


class EditThresholdsScreen(ModalScreen[bool]):
    """Modal form; dismisses True once the engine accepted new thresholds, else False."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save", id="save", tooltip="Validate and save the thresholds"),
        Binding("escape", "cancel", "Cancel", id="cancel", tooltip="Close without saving"),
    ]

    DEFAULT_CSS = """
    EditThresholdsScreen {
        align: center middle;
    }
    EditThresholdsScreen #edit-form {
        width: 96;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        overflow-y: auto;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    EditThresholdsScreen #edit-title {
        text-style: bold;
    }
    EditThresholdsScreen #edit-help {
        color: $text-muted;
        margin-bottom: 1;
    }
    EditThresholdsScreen .edit-row {
        height: auto;
    }
    EditThresholdsScreen .edit-label {
        width: 32;
    }
    EditThresholdsScreen .edit-row Input {
        width: 16;
    }
    EditThresholdsScreen .edit-hint {
        width: 1fr;
        padding-left: 1;
        color: $text-muted;
    }
    EditThresholdsScreen .edit-hint.-error {
        color: $error;
        text-style: bold;
    }
    EditThresholdsScreen #edit-message {
        margin-top: 1;
        height: auto;
    }
    EditThresholdsScreen #edit-message.-error {
        color: $error;
        text-style: bold;
    }
    EditThresholdsScreen #edit-buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    EditThresholdsScreen #edit-buttons Button {
        margin-left: 2;
    }
    """

    def __init__(self, detail: TradeDetail, submit: Submit) -> None:
        super().__init__()
        self.detail = detail
        self._submit = submit
        self.in_force: dict[str, Any] = dict(detail.criteria)
        self._busy = False

    def compose(self) -> ComposeResult:
        row = self.detail.row
        with Vertical(id="edit-form"):
            yield Label(
                f"Thresholds for {row.trade_id} — {self.detail.contract}",
                id="edit-title",
                markup=False,
            )
            yield Label(
                "empty = rule off · tab: next field · ctrl+s: save · esc: cancel",
                id="edit-help",
            )
            for name, hint in FIELDS:
                with Horizontal(classes="edit-row"):
                    yield Label(name, classes="edit-label")
                    yield Input(
                        format_value(self.in_force.get(name)),
                        placeholder="off",
                        id=f"edit-{name}",
                        compact=True,
                        tooltip=f"{hint}; {_OFF_HINT}",
                    )
                    yield Static(
                        hint,
                        id=f"hint-{name}",
                        classes="edit-hint",
                        markup=False,
                    )
            yield Static("", id="edit-message", markup=False)
            with Horizontal(id="edit-buttons"):
                yield Button("Save", id="edit-save", variant="primary")
                yield Button("Cancel", id="edit-cancel")

    def on_mount(self) -> None:
        self.query_one(f"#edit-{FIELDS[0][0]}", Input).focus()

    @on(Input.Submitted)
    def _next_field(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_next()

    @on(Button.Pressed, "#edit-save")
    async def _save_pressed(self) -> None:
        await self.action_save()

    @on(Button.Pressed, "#edit-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(False)

    def collect(self) -> tuple[dict[str, float | None], dict[str, str]]:
        """The form's values (None = off) and the per-field parse errors."""
        values: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        for name, _hint in FIELDS:
            text = self.query_one(f"#edit-{name}", Input).value
            try:
                values[name] = parse_value(text)
            except ValueError:
                errors[name] = f"expected a number, or empty to switch the rule off (got {text!r})"
        return values, errors

    def validate(self, values: Mapping[str, float | None]) -> dict[str, str]:
        """Check the whole set as the engine will; errors by field ("" = not a form field)."""
        errors: dict[str, str] = {}
        data = {**self.in_force, **values}
        try:
            problem = criteria_contradiction(Criteria.model_validate(data))
            if problem is not None:
                errors["trailing_activation_percent"] = problem
        except ValidationError as e:
            for err in e.errors():
                loc = err.get("loc") or ("",)
                field = str(loc[0]) if loc else ""
                key = field if field in _FIELD_NAMES else ""
                text = describe_error(err)
                if not key:
                    text = f"{field}: {text}" if field else text
                errors.setdefault(key, text)
        return errors

    def payload(self, values: Mapping[str, float | None]) -> dict[str, float | bool]:
        """The `set_overrides` payload: saved overrides plus the changed fields (False = off)."""
        changed = {k: v for k, v in values.items() if _changed(self.in_force.get(k), v)}
        if not changed:
            return {}
        merged: dict[str, float | None] = dict(self.detail.overrides)
        merged.update(changed)
        return {k: (False if v is None else v) for k, v in merged.items()}

    async def action_save(self) -> None:
        """Parse, validate locally, submit what changed; stay open on any refusal."""
        if self._busy:
            return
        values, errors = self.collect()
        if not errors:
            errors = self.validate(values)
        self._show_errors(errors)
        if errors:
            self._message("fix the fields in red; nothing was sent", error=True)
            return
        payload = self.payload(values)
        if not payload:
            self.dismiss(False)
            return
        self._busy = True
        self._message("saving…", error=False)
        try:
            result = await self._submit(payload)
        except Exception as e:
            result = CommandResult(False, f"not saved: {e}")
        finally:
            self._busy = False
        if result.ok:
            self.dismiss(True)
        else:
            self._message(result.message, error=True)

    def _show_errors(self, errors: Mapping[str, str]) -> None:
        for name, hint in FIELDS:
            note = self.query_one(f"#hint-{name}", Static)
            if name in errors:
                note.update(errors[name])
                note.add_class("-error")
            else:
                note.update(hint)
                note.remove_class("-error")

    def _message(self, text: str, *, error: bool) -> None:
        msg = self.query_one("#edit-message", Static)
        msg.update(text)
        msg.set_class(error, "-error")
