"""Every key binding has an id and a tooltip, and [ui.keys] can remap exactly the screen's ids."""

from __future__ import annotations

import pytest
from textual.binding import Binding

from engine.config import UI_KEY_IDS
from tui.app import MainScreen, TradeSupervisorApp
from tui.screens.confirm import ConfirmScreen, TypedConfirmScreen
from tui.screens.detail import TradeDetailScreen
from tui.screens.edit import EditThresholdsScreen
from tui.screens.help import HelpScreen

SCREENS = [
    MainScreen,
    TradeSupervisorApp,
    ConfirmScreen,
    TypedConfirmScreen,
    HelpScreen,
    TradeDetailScreen,
    EditThresholdsScreen,
]


@pytest.mark.parametrize("owner", SCREENS, ids=lambda c: c.__name__)
def test_every_binding_has_an_id_and_a_tooltip(owner: type) -> None:
    bindings = [b for b in owner.BINDINGS if isinstance(b, Binding)]
    assert bindings and len(bindings) == len(owner.BINDINGS)
    for b in bindings:
        assert b.id, f"{owner.__name__}: {b.key} -> {b.action} has no id"
        assert b.tooltip, f"{owner.__name__}: {b.id} has no tooltip"


def test_the_remappable_ids_are_the_main_screens_bindings() -> None:
    ids = [b.id for b in [*MainScreen.BINDINGS, *TradeSupervisorApp.BINDINGS]]
    assert sorted(ids) == sorted(UI_KEY_IDS)
    assert len(set(ids)) == len(ids)
