"""The engine never imports the UI: `engine` and every submodule load without textual or rich.

Checked in a fresh interpreter, so modules other tests imported cannot hide (or fake) a UI import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib, json, pkgutil, sys
import engine
names = ["engine"]
for info in pkgutil.walk_packages(engine.__path__, "engine."):
    importlib.import_module(info.name)
    names.append(info.name)
ui = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "rich"))
print(json.dumps({"modules": names, "ui": ui}))
"""


def test_engine_imports_no_ui_library() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    # The walk found the package's modules (so the check below means something)...
    expected = {p.stem for p in (ROOT / "engine").glob("*.py") if p.stem != "__init__"}
    assert {f"engine.{name}" for name in expected} <= set(report["modules"])
    assert {"engine.cli", "engine.supervisor", "engine.replay"} <= set(report["modules"])
    # ...and none of them pulled in textual or rich.
    assert report["ui"] == []


ENGINE_PROCESS_PROBE = """
import json, sys
import tui.engine_process
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "rich"))))
"""


def test_the_engine_process_loads_no_ui_library() -> None:
    """The screen's engine process (`python -m tui.engine_process`) stays an engine: no
    Textual in its memory or its start-up time."""
    proc = subprocess.run(
        [sys.executable, "-c", ENGINE_PROCESS_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
