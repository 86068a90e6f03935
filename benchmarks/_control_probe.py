"""The control socket inside the benchmark's engine process (service_reaction.py).

Module-level functions, so a `ProcessEngineHost` can send them to the engine process by
reference; the server lives in this module, in the process that runs the engine.
"""

from __future__ import annotations

from typing import Any

from engine.supervisor import Engine

_server: Any = None


async def start_control(e: Engine) -> str:
    """On the engine's loop (in the engine process): serve the control socket."""
    global _server
    from engine.control import ControlServer

    _server = ControlServer(e, e.config)
    await _server.start()
    return str(_server.path)


async def snapshots_encoded(_e: Engine) -> int:
    return 0 if _server is None else _server.snapshots_encoded
