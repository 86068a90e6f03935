"""The control socket (engine/control.py) against a real engine on the simulated market.

The engine is built as `--headless` builds it (`build_runtime`), on a manual clock and not
driven: only what the test does happens. Clients are raw sockets speaking the documented
framing (docs/control-protocol.md), so the tests check the bytes another program would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine import control
from engine.clock import ManualClock
from engine.commands import Command
from engine.config import Config, parse_config
from engine.runtime import Runtime, build_runtime

T0 = 1_764_000_000.0
HDR = struct.Struct(">I")


def make_config(data: Path, **sim: Any) -> Config:
    return parse_config(
        {
            "engine": {"data_dir": str(data)},
            "alerts": {"log_file": ""},
            "sim": {"demo_trades": 2, **sim},
        }
    )


class Served:
    def __init__(self, rt: Runtime, server: control.ControlServer) -> None:
        self.rt = rt
        self.server = server

    @property
    def path(self) -> Path:
        return self.server.path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    cfg = make_config(tmp_path / "data")
    rt = await build_runtime(cfg, None, clock=ManualClock(T0))
    server = control.ControlServer(rt.engine, cfg, hello_timeout=0.5, refresh_seconds=0.05)
    await server.start()
    try:
        yield Served(rt, server)
    finally:
        await server.close()
        await rt.close()


class Raw:
    """A client speaking the framing by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path) -> Raw:
        r, w = await asyncio.open_unix_connection(str(path), limit=1 << 26)
        return cls(r, w)

    async def send(self, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.writer.write(HDR.pack(len(body)) + body)
        await self.writer.drain()

    async def recv(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next message, None at end of file."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
        except asyncio.IncompleteReadError:
            return None
        (n,) = HDR.unpack(head)
        return json.loads(await asyncio.wait_for(self.reader.readexactly(n), timeout))

    async def recv_kind(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            msg = await self.recv(timeout)
            assert msg is not None, f"the connection closed before a {kind!r} message"
            if msg["type"] == kind:
                return msg

    async def hello(self, **kw: Any) -> dict[str, Any]:
        await self.send({"type": "hello", "protocol": control.PROTOCOL_VERSION, **kw})
        msg = await self.recv()
        assert msg is not None and msg["type"] == "welcome", msg
        return msg

    async def closed(self, timeout: float = 10.0) -> bool:
        """Reads to the end; True when the engine closed the connection within the time."""
        while True:
            msg = await self.recv(timeout)
            if msg is None:
                return True

    def close(self) -> None:
        self.writer.close()


async def until(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


# --- the socket itself ---------------------------------------------------------------------


async def test_socket_is_private_in_the_data_dir(served: Served, tmp_path: Path) -> None:
    assert served.path == (tmp_path / "data").resolve() / "engine.sock"
    st = served.path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_a_path_too_long_for_a_socket_goes_to_the_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    run = Path(tempfile.mkdtemp(prefix="ts-run-", dir="/tmp"))  # short, as /run/user/UID is
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    path = control.socket_path(make_config(deep))
    assert len(os.fsencode(path)) <= control.SUN_PATH_MAX
    assert path.parent == run / "trade-supervisor"
    # Another data_dir gets another socket.
    assert control.socket_path(make_config(deep / "x")) != path


async def test_a_stale_socket_file_does_not_block_the_next_engine(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "data")
    path = control.socket_path(cfg)
    path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # left behind by a killed engine: nobody listens
    dead.close()
    rt = await build_runtime(cfg, None, clock=ManualClock(T0))
    server = control.ControlServer(rt.engine, cfg)
    try:
        await server.start()
        c = await Raw.connect(path)
        assert (await c.hello())["pid"] == os.getpid()
        c.close()
    finally:
        await server.close()
        await rt.close()
    assert not path.exists()  # removed on the way out


# --- the handshake -------------------------------------------------------------------------


async def test_handshake_says_who_the_engine_is(served: Served, tmp_path: Path) -> None:
    c = await Raw.connect(served.path)
    w = await c.hello(client="test")
    assert w["protocol"] == control.PROTOCOL_VERSION
    assert w["pid"] == os.getpid()
    assert w["data_dir"] == str((tmp_path / "data").resolve())
    assert w["journal"] == str(served.rt.store.path)
    assert (w["venue"], w["mode"]) == ("sim", served.rt.engine.mode.value)
    assert w["engine_version"] and w["read_only"] is False
    c.close()


async def test_a_wrong_protocol_version_is_refused_and_closed(served: Served) -> None:
    c = await Raw.connect(served.path)
    await c.send({"type": "hello", "protocol": 99})
    msg = await c.recv()
    assert msg is not None and msg["type"] == "error"
    assert "99" in msg["message"] and f"version {control.PROTOCOL_VERSION}" in msg["message"]
    assert await c.closed()
    assert served.server.faults["wrong protocol version"] == 1


async def test_a_request_before_hello_is_refused_and_not_executed(served: Served) -> None:
    eng = served.rt.engine
    assert eng.armed
    c = await Raw.connect(served.path)
    await c.send({"type": "command", "id": 1, "action": "disarm"})
    msg = await c.recv()
    assert msg is not None and msg["type"] == "error" and "hello" in msg["message"]
    assert await c.closed()
    assert eng.armed


async def test_a_silent_client_is_dropped(served: Served) -> None:
    c = await Raw.connect(served.path)
    assert await c.closed(timeout=5)  # hello_timeout is 0.5 s here
    assert served.server.faults["silent client dropped"] == 1
    assert not served.server.clients


async def test_another_user_is_refused(served: Served) -> None:
    served.server.peer_uid = lambda _sock: os.getuid() + 1  # the SO_PEERCRED answer, faked
    c = await Raw.connect(served.path)
    msg = await c.recv()
    assert msg is not None and msg["type"] == "error" and "another user" in msg["message"]
    assert await c.closed()
    assert served.server.faults["connection from another user refused"] == 1


def test_peer_uid_reads_so_peercred() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert control.peer_uid(a) == os.getuid()


# --- garbage -------------------------------------------------------------------------------


async def test_garbage_and_oversized_frames_close_the_connection(served: Served) -> None:
    c = await Raw.connect(served.path)
    c.writer.write(b"GET / HTTP/1.1\r\n\r\n")  # a length of 1.2 GB
    assert await c.closed()
    c = await Raw.connect(served.path)
    await c.hello()
    c.writer.write(HDR.pack(control.MAX_REQUEST_BYTES + 1) + b"x" * 100)
    msg = await c.recv_kind("error")
    assert "limit" in msg["message"]
    assert await c.closed()
    assert served.server.faults["bad frame, connection closed"] == 2
    # The engine still answers.
    c = await Raw.connect(served.path)
    await c.hello()
    c.close()


async def test_an_invalid_message_is_answered_and_never_executed(served: Served) -> None:
    eng = served.rt.engine
    c = await Raw.connect(served.path)
    await c.hello()
    bad = [
        {"type": "command", "id": 7, "action": "release_position"},  # internal: not on the socket
        {"type": "command", "id": 8, "action": "disarm", "extra": 1},  # unknown field
        {"type": "command", "id": 9, "action": "disarm", "trade_id": 5},  # wrong type
        {"type": "launch", "id": 10},
    ]
    for msg in bad:
        await c.send(msg)
        err = await c.recv_kind("error")
        assert err["id"] == msg["id"] and "invalid message" in err["message"]
    body = b"\x80\x04not json"
    c.writer.write(HDR.pack(len(body)) + body)  # a pickle's first bytes
    err = await c.recv_kind("error")
    assert err["id"] is None
    assert eng.armed  # nothing ran
    # The connection is still usable.
    await c.send({"type": "status", "id": 11})
    assert (await c.recv_kind("status"))["id"] == 11
    assert served.server.faults["invalid message refused"] == 5
    c.close()


async def test_many_clients_connecting_and_vanishing(served: Served) -> None:
    for i in range(100):
        c = await Raw.connect(served.path)
        if i % 2:
            await c.send({"type": "hello", "protocol": 1})
        c.close()
    await until(lambda: not served.server._conns)
    assert not served.server.clients
    c = await Raw.connect(served.path)
    await c.hello()
    await c.send({"type": "status", "id": 1})
    assert (await c.recv_kind("status"))["open_trades"]
    c.close()


# --- commands and queries ------------------------------------------------------------------


async def test_commands_go_through_the_engine(served: Served) -> None:
    eng = served.rt.engine
    c = await Raw.connect(served.path)
    await c.hello()
    await c.send({"type": "command", "id": 1, "action": "disarm"})
    assert await c.recv_kind("result") == {
        "type": "result",
        "id": 1,
        "ok": True,
        "message": "disarmed",
    }
    assert not eng.armed
    tid = next(iter(eng.trades))
    await c.send({"type": "command", "id": 2, "action": "pause", "trade_id": tid})
    r = await c.recv_kind("result")
    assert r["ok"] and eng.trades[tid].paused
    await c.send({"type": "command", "id": 3, "action": "close", "trade_id": "nope"})
    r = await c.recv_kind("result")
    assert (r["id"], r["ok"]) == (3, False) and "nope" in r["message"]
    await c.send({"type": "status", "id": 4})
    st = await c.recv_kind("status")
    assert (st["armed"], st["open_trades"]) == (False, list(eng.trades))
    await c.send({"type": "detail", "id": 5, "trade_id": tid})
    d = await c.recv_kind("detail")
    assert d["detail"]["row"]["trade_id"] == tid
    c.close()


async def test_a_read_only_client_is_refused_every_command(served: Served) -> None:
    eng = served.rt.engine
    c = await Raw.connect(served.path)
    assert (await c.hello(read_only=True))["read_only"] is True
    await c.send({"type": "command", "id": 1, "action": "disarm"})
    r = await c.recv_kind("result")
    assert not r["ok"] and "read-only" in r["message"]
    await c.send({"type": "stop", "id": 2})
    assert not (await c.recv_kind("result"))["ok"]
    assert eng.armed and not eng.stopping
    c.close()


async def test_stop_over_the_socket_stops_the_engine(served: Served) -> None:
    c = await Raw.connect(served.path)
    await c.hello()
    await c.send({"type": "stop", "id": 1})
    assert (await c.recv_kind("result"))["ok"]
    await until(lambda: served.rt.engine.stopping)
    c.close()


# --- snapshots -----------------------------------------------------------------------------


async def test_a_subscriber_gets_snapshots_and_sees_its_command_first(served: Served) -> None:
    c = await Raw.connect(served.path)
    await c.hello(subscribe=True)
    first = await c.recv_kind("snapshot")
    snap = first["snapshot"]
    assert snap["venue"] == "sim" and len(snap["trades"]) == 2 and snap["armed"] is True
    await c.send({"type": "command", "id": 1, "action": "disarm"})
    # The picture with the command's effect comes before the command's reply.
    seen: list[dict[str, Any]] = []
    while (msg := await c.recv()) is not None and msg["type"] != "result":
        seen.append(msg)
    assert seen and seen[-1]["type"] == "snapshot" and seen[-1]["snapshot"]["armed"] is False
    c.close()


async def test_a_stopped_client_only_ever_has_the_newest_snapshot(served: Served) -> None:
    """A client that reads nothing (SIGSTOP) holds at most the frame being written and one
    waiting snapshot; the engine keeps answering others meanwhile."""
    srv, eng = served.server, served.rt.engine
    # A raw socket with a tiny receive buffer that never reads.
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(served.path))
    body = json.dumps({"type": "hello", "protocol": 1, "subscribe": True}).encode()
    stuck.sendall(HDR.pack(len(body)) + body)
    await until(lambda: len(srv.clients) == 1)
    (client,) = srv.clients.values()
    other = await Raw.connect(served.path)
    await other.hello()
    for i in range(60):  # many new pictures while it is stopped
        await other.send({"type": "command", "id": i, "action": "disarm" if i % 2 else "arm"})
        assert (await other.recv_kind("result"))["id"] == i
        assert sum(1 for k, _ in client.outbox if k == "s") <= 1
        assert len(client.outbox) <= 2  # the welcome at most, and one snapshot
    assert srv.snapshots_encoded >= 30
    # It is really stuck: the kernel's buffers are full and a frame waits in the transport,
    # at most one frame beyond the transport's high-water mark.
    frame_size = len(client.outbox[-1][1]) if client.outbox else 0
    buffered = client.writer.transport.get_write_buffer_size()
    assert buffered > 0
    assert buffered <= 2 * max(frame_size, 64 * 1024) + 64 * 1024
    assert not eng.stopping
    stuck.close()
    other.close()


async def test_every_message_type_round_trips_through_the_client_decoder(
    served: Served,
) -> None:
    """What the engine sends is what `ControlClient` (and docs/control-protocol.md) expects."""
    path = served.path

    def talk() -> list[Any]:
        with control.ControlClient(path, timeout=10) as cl:
            out: list[Any] = [cl.welcome]
            out.append(cl.command("arm"))
            out.append(cl.status())
            out.append(cl.request(lambda i: control.DetailRequest(i, "nope")))
            out.append(cl.stop())
            return out

    welcome, result, status, detail, stop = await asyncio.to_thread(talk)
    assert isinstance(welcome, control.Welcome)
    assert isinstance(result, control.Result) and result.ok
    assert isinstance(status, control.StatusReply) and status.pid == os.getpid()
    assert isinstance(detail, control.DetailReply) and detail.detail is None
    assert isinstance(stop, control.Result) and stop.ok


def test_no_engine_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(control.NoEngine):
        control.ControlClient(tmp_path / "engine.sock")


async def test_the_chunked_snapshot_frame_is_the_plain_encoding(served: Served) -> None:
    snap = await served.rt.engine.snapshot_async()
    pauses = 0

    async def pause() -> None:
        nonlocal pauses
        pauses += 1

    chunked = await control.encode_snapshot_frame(snap, pause, rows=1)
    assert chunked == control.frame(control.SnapshotFrame(snap.seq, snap))
    assert pauses == max(len(snap.strikes) - 1, 0) + max(len(snap.trades) - 1, 0)


async def test_a_snapshot_and_a_detail_decode_back_to_the_engines_objects(served: Served) -> None:
    eng = served.rt.engine
    snap = await eng.snapshot_async()
    body = control.frame(control.SnapshotFrame(snap.seq, snap))[4:]
    msg = control.decode_reply(body)
    assert isinstance(msg, control.SnapshotFrame)
    assert control.snapshot_from_json(msg.snapshot) == snap
    tid = next(iter(eng.trades))
    detail = await eng.trade_detail(tid)
    reply = control.decode_reply(control.frame(control.DetailReply(1, detail))[4:])
    assert control.detail_from_json(reply.detail) == detail  # type: ignore[union-attr]


async def test_snapshot_and_metrics_requests(served: Served) -> None:
    c = await Raw.connect(served.path)
    await c.hello()  # not subscribed: nothing comes on its own
    await c.send({"type": "snapshot", "id": 1})
    first = await c.recv()
    assert first is not None and first["type"] == "snapshot"
    assert (await c.recv()) == {"type": "result", "id": 1, "ok": True, "message": ""}
    await c.send({"type": "metrics", "id": 2})
    m = await c.recv_kind("metrics")
    assert m["id"] == 2 and "equity" in m["metrics"]
    c.close()


async def test_a_fuzzed_socket_never_stops_an_exit(served: Served) -> None:
    """Random bytes and oversized frames from many clients while a trade's max_loss fires: the
    trade closes exactly once, and the engine still answers afterwards."""
    import random

    from engine.models import Quote, QuoteEvent

    eng, srv = served.rt.engine, served.server
    t = next(iter(eng.trades.values()))
    tid, cid, side, qty = t.trade_id, t.contract_id, t.side, t.qty
    held_before = sum(
        p.qty for p in await eng.venue.positions() if p.contract_id == cid and p.side == side
    )
    rng = random.Random(14)
    r = await eng.command(Command("set_overrides", tid, {"max_loss_percent": 30}))
    assert r.ok, r.message

    async def fuzz(n: int) -> None:
        c = await Raw.connect(served.path)
        with contextlib.suppress(ConnectionError):
            if n % 3 == 0:
                await c.hello()
            for _ in range(5):
                kind = rng.randrange(3)
                if kind == 0:
                    data = rng.randbytes(rng.randrange(1, 300))
                elif kind == 1:
                    data = HDR.pack(rng.randrange(control.MAX_REQUEST_BYTES, 2**32)) + b"x" * 64
                else:
                    body = rng.randbytes(rng.randrange(1, 200))
                    data = HDR.pack(len(body)) + body
                c.writer.write(data)
                await c.writer.drain()
        c.close()

    now = eng.clock.now()
    # A crash against the trade: its max_loss (the shipped criteria) fires on this quote.
    crash = Quote(cid, 0.01, 0.02, now) if side == "yes" else Quote(cid, 0.98, 0.99, now)
    tasks = [asyncio.create_task(fuzz(i)) for i in range(60)]
    await eng.handle(QuoteEvent(now, crash))
    await asyncio.gather(*tasks, return_exceptions=True)
    await eng.drain_exits()
    assert tid not in eng.trades
    held_after = sum(
        p.qty for p in await eng.venue.positions() if p.contract_id == cid and p.side == side
    )
    assert held_before - held_after == qty  # sold once, not twice
    await until(lambda: not srv._conns)
    assert sum(srv.faults.values()) > 0
    c = await Raw.connect(served.path)
    await c.hello()
    await c.send({"type": "status", "id": 1})
    assert tid not in (await c.recv_kind("status"))["open_trades"]
    c.close()


async def test_a_failing_answer_is_an_error_and_the_connection_stays(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(_tid: str) -> None:
        raise RuntimeError("detail exploded")

    monkeypatch.setattr(served.rt.engine, "trade_detail", boom)
    c = await Raw.connect(served.path)
    await c.hello()
    await c.send({"type": "detail", "id": 1, "trade_id": "demo-1"})
    err = await c.recv_kind("error")
    assert err["id"] == 1 and "detail exploded" in err["message"]
    await c.send({"type": "status", "id": 2})
    assert (await c.recv_kind("status"))["id"] == 2
    c.close()


async def test_a_verb_beside_an_engine_without_a_socket_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An engine inside a screen ([ui] engine = "process") holds the journal but serves no
    socket: the verbs say that, not that no engine runs."""
    from engine import service
    from engine.store import JOURNAL_FILENAME, Store

    cfg = make_config(tmp_path / "data")
    store = Store(cfg.data_path() / JOURNAL_FILENAME)
    await store.open()
    try:
        code = await asyncio.to_thread(service.verb, cfg, "arm")
    finally:
        await store.close()
    err = capsys.readouterr().err
    assert code == 1
    assert f"(pid {os.getpid()}) has no control socket" in err and "nothing was sent" in err


async def test_clients_hear_at_once_that_the_engine_stops(served: Served) -> None:
    c = await Raw.connect(served.path)
    await c.hello()
    await c.send({"type": "stop", "id": 1})
    # The answer to the stop still arrives, then the goodbye, then the end of the connection.
    assert (await c.recv_kind("result"))["ok"]
    bye = await c.recv()
    assert bye == {"type": "stopping", "message": "the engine is stopping"}
    assert await c.closed()
    assert not served.path.exists()
    assert served.rt.store.is_open  # before the journal is closed


async def test_a_file_in_the_sockets_place_is_never_deleted(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "data")
    path = control.socket_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text("mine")
    rt = await build_runtime(cfg, None, clock=ManualClock(T0))
    try:
        with pytest.raises(OSError, match="not a socket"):
            await control.ControlServer(rt.engine, cfg).start()
    finally:
        await rt.close()
    assert path.read_text() == "mine"


async def test_an_engine_with_a_long_data_dir_serves_from_the_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Path(tempfile.mkdtemp(prefix="ts-run-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    cfg = make_config(tmp_path / ("d" * 60) / ("e" * 60))
    rt = await build_runtime(cfg, None, clock=ManualClock(T0))
    server = control.ControlServer(rt.engine, cfg)
    try:
        await server.start()
        assert server.path.parent == run / "trade-supervisor"
        assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        c = await Raw.connect(server.path)
        assert (await c.hello())["data_dir"] == str(cfg.data_path().resolve())
        c.close()
    finally:
        await server.close()
        await rt.close()


def test_the_socket_takes_every_engine_action_but_the_internal_one():
    """engine/control.py spells its actions out for msgspec; a new engine action must be added
    there too (or named internal here), never silently refused by the socket."""
    from typing import get_args

    from engine.commands import ACTIONS
    from engine.control import SocketAction

    internal = {"release_position"}  # the paper account's bookkeeping, queued by `trades close`
    assert set(get_args(SocketAction)) == set(ACTIONS) - internal
