"""The control socket: how screens, the command line and other programs reach a running engine.

One Unix domain socket per engine (per journal), in `data_dir` (or under `$XDG_RUNTIME_DIR`
when that path would not fit in `sun_path`), mode 0600; a peer of another uid is refused
(SO_PEERCRED). The protocol is documented in docs/control-protocol.md; in short:

- a frame is a 4-byte big-endian length and that many bytes of JSON (one object with a
  `"type"` field); a frame to the engine is at most `MAX_REQUEST_BYTES`;
- the client speaks first (`hello` with the protocol version) within `HELLO_TIMEOUT_SECONDS`,
  the engine answers `welcome` (protocol, engine version, pid, data_dir, venue, mode ...) or an
  `error` and closes;
- then requests (`command`, `status`, `detail`, `snapshot`, `metrics`, `stop`) each with an
  `id`, answered in order;
  a subscribed client also gets `snapshot` frames at the screen's cadence.

Messages are data (msgspec typed structs, validated at decode): nothing here unpickles or
evaluates. A message that fails validation is answered with an `error` and never executed;
framing errors (an oversized or empty frame, garbage before the handshake) close the connection.
Each kind of fault is logged once (then counted in `ControlServer.faults`).

The server runs on the engine loop but never holds it: the snapshot is encoded once per publish
and handed to each client's one-slot mailbox (a newer snapshot replaces one not yet written);
each client has its own writer task, so a slow or stopped client (SIGSTOP) only ever holds the
frame being written and the newest snapshot, and delays nobody. Commands go through the
engine's one command interface (`Engine.command`).

This module never imports the UI toolkit. `ControlClient` is the blocking client the command
line uses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import socket
import struct
import time
import typing
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import msgspec

from engine.commands import Command
from engine.config import Config

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SOCKET_NAME = "engine.sock"
SUN_PATH_MAX = 107  # Linux: 108 bytes including the terminating NUL
MAX_REQUEST_BYTES = 64 * 1024  # what a client may send in one frame
MAX_REPLY_BYTES = 256 * 1024 * 1024  # what a client accepts (a snapshot of a huge chain)
HELLO_TIMEOUT_SECONDS = 5.0
MAX_CLIENTS = 64
MAX_QUEUED_REPLIES = 64  # replies a client has not read yet; beyond that it is dropped
HEADER = struct.Struct(">I")

# The actions a client may send: the engine's command interface minus its internal ones.
SocketAction = Literal[
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
]


def engine_version() -> str:
    try:
        return metadata.version("trade-supervisor")
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------- the messages


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    """A message to the engine: unknown fields are refused."""


class _Out(msgspec.Struct, tag_field="type", frozen=True):
    """A message from the engine: a newer engine may add fields within a version."""


# client -> engine


class Hello(_Msg, tag="hello"):
    protocol: int
    client: str = ""  # free text for the engine's log, e.g. "cli", "screen"
    subscribe: bool = False  # send snapshots
    read_only: bool = False  # refuse this connection's commands


class CommandRequest(_Msg, tag="command"):
    id: int
    action: SocketAction
    trade_id: str | None = None
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


class StatusRequest(_Msg, tag="status"):
    id: int


class DetailRequest(_Msg, tag="detail"):
    id: int
    trade_id: str


class StopRequest(_Msg, tag="stop"):
    id: int


class SnapshotRequest(_Msg, tag="snapshot"):
    """Send the current snapshot now (to this client, subscribed or not), then a result."""

    id: int


class MetricsRequest(_Msg, tag="metrics"):
    id: int


Request = (
    Hello
    | CommandRequest
    | StatusRequest
    | DetailRequest
    | StopRequest
    | SnapshotRequest
    | MetricsRequest
)

# engine -> client


class Welcome(_Out, tag="welcome"):
    protocol: int
    engine_version: str
    pid: int
    data_dir: str
    journal: str
    venue: str
    mode: str
    armed: bool
    paused_all: bool
    read_only: bool


class Result(_Out, tag="result"):
    id: int
    ok: bool
    message: str


class StatusReply(_Out, tag="status"):
    id: int
    pid: int
    venue: str
    mode: str
    armed: bool
    paused_all: bool
    open_trades: list[str]
    unprotected: dict[str, str]  # trade id -> why the engine is not protecting it now
    clients: int


class DetailReply(_Out, tag="detail"):
    id: int
    detail: Any  # engine.snapshot.TradeDetail as JSON, or null once the trade is closed


class MetricsReply(_Out, tag="metrics"):
    id: int
    metrics: Any  # engine.analytics.metrics_for: the closed trades' report as plain data


class Error(_Out, tag="error"):
    id: int | None
    message: str


class SnapshotFrame(_Out, tag="snapshot"):
    seq: int
    snapshot: Any  # engine.snapshot.Snapshot as JSON


class Stopping(_Out, tag="stopping"):
    message: str


Reply = (
    Welcome | Result | StatusReply | DetailReply | MetricsReply | Error | SnapshotFrame | Stopping
)

_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)
_encoder = msgspec.json.Encoder()


class ProtocolError(Exception):
    """A frame that cannot be read: the connection is closed."""


def frame(msg: Any) -> bytes:
    body = _encoder.encode(msg)
    return HEADER.pack(len(body)) + body


def decode_request(body: bytes) -> Request:
    """A validated request; raises msgspec.ValidationError / DecodeError for anything else."""
    return _request_decoder.decode(body)


def decode_reply(body: bytes) -> Reply:
    return _reply_decoder.decode(body)


# ---------------------------------------------------------------------- where the socket is


def socket_path(config: Config) -> Path:
    """The engine's socket for this config's data_dir: `<data_dir>/engine.sock`, or, when that
    does not fit in a Unix socket address, a name derived from the data_dir under
    `$XDG_RUNTIME_DIR/trade-supervisor/` (else `/tmp/trade-supervisor-<uid>/`)."""
    data = config.data_path().resolve()
    path = data / SOCKET_NAME
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    name = f"{hashlib.sha256(os.fsencode(data)).hexdigest()[:20]}.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    bases = [Path(runtime) / "trade-supervisor"] if runtime else []
    bases.append(Path("/tmp") / f"trade-supervisor-{os.getuid()}")
    for base in bases:
        if len(os.fsencode(base / name)) <= SUN_PATH_MAX:
            return base / name
    return bases[-1] / name


def _private_dir(path: Path) -> None:
    """Create the socket's directory if needed; refuse one another user owns or can write."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise OSError(f"{path} belongs to another user (uid {st.st_uid}); remove it or fix it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours: nobody else may list or replace the socket


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# ---------------------------------------------------------------------- the server


class _Client:
    """One attached client: its outbox (replies in order, at most one snapshot waiting) and the
    task that writes it."""

    def __init__(self, n: int, writer: asyncio.StreamWriter, hello: Hello) -> None:
        self.n = n
        self.writer = writer
        self.hello = hello
        self.outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def put(self, data: bytes) -> bool:
        """Queue a reply; False when the client has left too many unread (drop it)."""
        if sum(1 for k, _ in self.outbox if k == "r") >= MAX_QUEUED_REPLIES:
            return False
        self.outbox.append(("r", data))
        self.wake.set()
        return True

    def put_snapshot(self, data: bytes) -> None:
        """The newest snapshot replaces one still waiting: a slow client gets only the newest."""
        for i, (kind, _) in enumerate(self.outbox):
            if kind == "s":
                del self.outbox[i]
                break
        self.outbox.append(("s", data))
        self.wake.set()

    async def run(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.outbox:
                    _kind, data = self.outbox.popleft()
                    self.writer.write(data)
                    # Only this client's task waits here; the engine loop is free meanwhile.
                    await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True


class ControlServer:
    """The engine's control socket, served on the engine's loop."""

    def __init__(
        self,
        engine: Any,
        config: Config,
        path: Path | None = None,
        *,
        hello_timeout: float = HELLO_TIMEOUT_SECONDS,
        refresh_seconds: float | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.path = path or socket_path(config)
        self.hello_timeout = hello_timeout
        self.refresh_seconds = (
            config.ui.refresh_seconds if refresh_seconds is None else refresh_seconds
        )
        self.peer_uid: Callable[[socket.socket], int] = peer_uid  # tests fake another user
        self.clients: dict[int, _Client] = {}
        self.faults: collections.Counter[str] = collections.Counter()
        self.snapshots_encoded = 0
        self._server: asyncio.AbstractServer | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._ids = 0
        self._last_seq = -1
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the socket (a stale one from a killed engine is replaced: the caller holds the
        journal's lock, so no live engine serves it) and start serving."""
        path = self.path
        if path.parent != self.config.data_path().resolve():
            _private_dir(path.parent)
        if path.is_socket():
            path.unlink()  # stale: its engine is gone (we hold the journal's lock)
        elif path.exists() or path.is_symlink():
            raise OSError(f"{path} exists and is not a socket; move it aside")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)  # before listen(): nobody can connect in between
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(
                self._on_connect, sock=sock, limit=MAX_REQUEST_BYTES + HEADER.size
            )
        except BaseException:
            sock.close()
            raise
        self._publisher = asyncio.create_task(self._publish_loop(), name="control-publisher")
        self._watcher = asyncio.create_task(self._close_when_stopping(), name="control-watcher")
        log.info("control socket listening at %s", path)

    async def _close_when_stopping(self) -> None:
        """Every client learns at once that the engine stops (before its journal is flushed)."""
        await self.engine.wait_stopping()
        await self.close("the engine is stopping")

    async def close(self, message: str = "the engine is stopping") -> None:
        """Tell every client the engine stops, close the connections and remove the socket.
        Called when the engine starts stopping (its watcher) and again by the runtime: once."""
        if self._closing:
            return
        self._closing = True
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        if self._publisher is not None:
            self._publisher.cancel()
        if self._server is not None:
            self._server.close()
        bye = frame(Stopping(message))
        writers = [c.task for c in self.clients.values() if c.task is not None]
        for c in list(self.clients.values()):
            with contextlib.suppress(Exception):
                # Best effort, never waiting for a client: the replies not yet written (the
                # answer to a stop), then the goodbye; the transport sends them as it closes.
                for kind, data in c.outbox:
                    if kind == "r":
                        c.writer.write(data)
                c.outbox.clear()
                c.writer.write(bye)
            self._drop(c)
        tasks = [*self._conns, *writers]
        if self._publisher is not None:
            tasks.append(self._publisher)
        for t in tasks:
            t.cancel()
        if tasks:  # let them finish their cancellation on this loop (bounded: they only close)
            await asyncio.wait(tasks, timeout=1.0)
        with contextlib.suppress(OSError):
            self.path.unlink()

    # ------------------------------------------------------------------ faults

    def _fault(self, kind: str, detail: str) -> None:
        """Log the first of each kind of fault, count the rest."""
        self.faults[kind] += 1
        if self.faults[kind] == 1:
            log.warning(
                "control socket: %s (%s); further ones are counted, not logged", kind, detail
            )

    # ------------------------------------------------------------------ connections

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client: _Client | None = None
        try:
            sock = writer.get_extra_info("socket")
            try:
                uid = self.peer_uid(sock)
            except OSError as e:
                self._fault("peer credentials unreadable", str(e))
                return
            if uid != os.getuid():
                self._fault("connection from another user refused", f"uid {uid}")
                writer.write(frame(Error(None, "refused: the engine belongs to another user")))
                return
            if len(self.clients) >= MAX_CLIENTS or len(self._conns) > 2 * MAX_CLIENTS:
                self._fault("too many clients", f"{len(self.clients)} attached")
                writer.write(frame(Error(None, f"refused: {MAX_CLIENTS} clients already attached")))
                return
            try:
                body = await asyncio.wait_for(self._read(reader), self.hello_timeout)
            except TimeoutError:
                self._fault("silent client dropped", f"no hello within {self.hello_timeout:g} s")
                return
            if body is None:
                return  # connected and left
            try:
                hello = decode_request(body)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                self._fault("bad handshake", str(e))
                writer.write(frame(Error(None, f"expected a hello message: {e}")))
                return
            if not isinstance(hello, Hello):
                self._fault("bad handshake", f"a {type(hello).__name__} before hello")
                writer.write(frame(Error(None, "the first message must be a hello")))
                return
            if hello.protocol != PROTOCOL_VERSION:
                self._fault("wrong protocol version", f"client speaks {hello.protocol}")
                writer.write(
                    frame(
                        Error(
                            None,
                            f"protocol version {hello.protocol} is not supported: this engine "
                            f"speaks version {PROTOCOL_VERSION} (engine {engine_version()})",
                        )
                    )
                )
                return
            self._ids += 1
            client = _Client(self._ids, writer, hello)
            self.clients[client.n] = client
            client.task = asyncio.create_task(client.run(), name=f"control-client-{client.n}")
            client.put(frame(self._welcome(hello)))
            if hello.subscribe:
                await self._send_snapshot([client], force=True)
            await self._requests(reader, client)
        except ProtocolError as e:
            self._fault("bad frame, connection closed", str(e))
            with contextlib.suppress(Exception):
                writer.write(frame(Error(None, f"connection closed: {e}")))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never let one client's trouble reach the engine
            log.exception("control socket: serving a client failed")
            self._fault("internal error", repr(e))
        finally:
            if client is not None:
                self._drop(client)
            else:
                with contextlib.suppress(Exception):
                    writer.close()

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.n, None)
        if client.task is not None and not client.task.done():
            # Let what is queued go out unless the client is not reading (then it is dropped).
            client.task.cancel()
        with contextlib.suppress(Exception):
            client.writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> bytes | None:
        """One frame's body, None at a clean end of file."""
        try:
            head = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                return None
            raise ProtocolError("the connection closed inside a frame header") from None
        (n,) = HEADER.unpack(head)
        if n == 0:
            raise ProtocolError("an empty frame")
        if n > MAX_REQUEST_BYTES:
            raise ProtocolError(f"a frame of {n} bytes (the limit is {MAX_REQUEST_BYTES})")
        return await reader.readexactly(n)

    async def _requests(self, reader: asyncio.StreamReader, client: _Client) -> None:
        while not self._closing:
            body = await self._read(reader)
            if body is None:
                return
            try:
                req = decode_request(body)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                self._fault("invalid message refused", str(e))
                if not client.put(frame(Error(_request_id(body), f"invalid message: {e}"))):
                    return
                continue
            try:
                reply = await self._answer(client, req)
            except Exception as e:  # the engine's own failure: answered, the connection kept
                log.exception("control socket: answering %s failed", type(req).__name__)
                reply = Error(getattr(req, "id", None), f"the engine failed to answer: {e!r}")
            if client.closed:
                return  # it left while its request was answered
            if not client.put(frame(reply)):
                self._fault("client not reading its replies dropped", f"client {client.n}")
                return

    async def _answer(self, client: _Client, req: Request) -> Any:
        eng = self.engine
        if isinstance(req, Hello):
            return Error(None, "hello was already received")
        if isinstance(req, StatusRequest):
            return StatusReply(
                req.id,
                os.getpid(),
                eng.venue.name,
                eng.mode.value,
                eng.armed,
                eng.paused_all,
                list(eng.trades),
                {u.trade_id: u.reason for u in eng.watchdog.current.values()},
                len(self.clients),
            )
        if isinstance(req, DetailRequest):
            detail = await eng.trade_detail(req.trade_id)
            return DetailReply(req.id, detail)
        if isinstance(req, SnapshotRequest):
            await self._send_snapshot([client], force=True, anyway=True)
            return Result(req.id, True, "")
        if isinstance(req, MetricsRequest):
            from engine.analytics import metrics_for

            return MetricsReply(req.id, await metrics_for(eng))
        if client.hello.read_only:
            return Result(req.id, False, "refused: this client attached read-only")
        if isinstance(req, StopRequest):
            log.warning("control socket: stop requested by client %d", client.n)
            asyncio.get_running_loop().call_soon(eng.stop)
            return Result(req.id, True, f"engine (pid {os.getpid()}) stopping")
        assert isinstance(req, CommandRequest)
        result = await eng.command(Command(req.action, req.trade_id, dict(req.payload)))
        # The picture that includes the command's effect reaches subscribers before its reply.
        await self._send_snapshot(list(self.clients.values()))
        return Result(req.id, result.ok, result.message)

    def _welcome(self, hello: Hello) -> Welcome:
        eng = self.engine
        return Welcome(
            PROTOCOL_VERSION,
            engine_version(),
            os.getpid(),
            str(self.config.data_path().resolve()),
            str(eng.store.path),
            eng.venue.name,
            eng.mode.value,
            eng.armed,
            eng.paused_all,
            hello.read_only,
        )

    # ------------------------------------------------------------------ snapshots

    async def _publish_loop(self) -> None:
        while True:
            try:
                await self._send_snapshot(list(self.clients.values()))
            except Exception as e:
                self._fault("publishing a snapshot failed", repr(e))
            await asyncio.sleep(self.refresh_seconds)  # real time: the screen's cadence

    async def _send_snapshot(
        self, clients: list[_Client], force: bool = False, anyway: bool = False
    ) -> None:
        subs = [c for c in clients if (c.hello.subscribe or anyway) and not c.closed]
        if not subs:
            return
        snap = await self.engine.snapshot_async()  # built in slices: reactions go first
        if snap.seq == self._last_seq and not force:
            return
        self._last_seq = snap.seq
        # Once for every client, in chunks of rows that let reactions through.
        data = await encode_snapshot_frame(snap, self.engine.let_reactions_through)
        self.snapshots_encoded += 1
        for c in subs:
            if not c.closed:
                c.put_snapshot(data)


ROWS_PER_CHUNK = 100  # ~0.3 ms of encoding; the loop is let through between chunks


async def encode_snapshot_frame(
    snap: Any, pause: Callable[[], Awaitable[None]], rows: int = ROWS_PER_CHUNK
) -> bytes:
    """The `snapshot` frame of `snap`, byte for byte what `frame(SnapshotFrame(snap.seq, snap))`
    gives, but its strikes and trades encoded `rows` at a time, awaiting `pause` in between (a
    picture of 1000 strikes and 500 trades takes 2-8 ms in one piece)."""
    parts = []
    for f in dataclasses.fields(snap):
        value = getattr(snap, f.name)
        if f.name in ("strikes", "trades"):
            items = []
            for i in range(0, len(value), rows):
                if i:
                    await pause()
                items.append(_encoder.encode(value[i : i + rows])[1:-1])
            enc = b"[" + b",".join(items) + b"]"
        else:
            enc = _encoder.encode(value)
        parts.append(_encoder.encode(f.name) + b":" + enc)
    body = b'{"type":"snapshot","seq":%d,"snapshot":{%s}}' % (snap.seq, b",".join(parts))
    return HEADER.pack(len(body)) + body


@functools.cache
def _snapshot_hints() -> dict[str, Any]:
    from engine.snapshot import Snapshot

    return typing.get_type_hints(Snapshot)


def snapshot_from_json(obj: dict[str, Any]) -> Any:
    """A `snapshot` frame's `snapshot` back into an `engine.snapshot.Snapshot`, validated."""
    from engine.snapshot import OptionStrikeRow, Snapshot, StrikeRow

    kwargs: dict[str, Any] = {}
    for name, hint in _snapshot_hints().items():
        if name not in obj:
            continue  # a field with a default the engine did not send
        value = obj[name]
        if name == "strikes":
            row = OptionStrikeRow if value and "call" in value[0] else StrikeRow
            kwargs[name] = msgspec.convert(value, tuple[row, ...])
        else:
            kwargs[name] = msgspec.convert(value, hint)
    return Snapshot(**kwargs)


def detail_from_json(obj: Any) -> Any:
    """A `detail` reply's `detail` as an `engine.snapshot.TradeDetail` (None once closed)."""
    from engine.snapshot import TradeDetail

    return None if obj is None else msgspec.convert(obj, TradeDetail)


def _request_id(body: bytes) -> int | None:
    """The `id` of a message that failed validation, if it has a readable one."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


# ---------------------------------------------------------------------- the blocking client


class ControlError(Exception):
    """The engine could not be reached, refused the connection, or answered with an error."""


class NoEngine(ControlError):
    """No engine serves this socket."""


class ControlClient:
    """A blocking client (the command line): connect, handshake, ask, read the answer."""

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = 30.0,
        client: str = "cli",
        read_only: bool = False,
        subscribe: bool = False,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise NoEngine(f"no engine answers at {path}") from e
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot connect to {path}: {e}") from e
        self.sock = sock
        self.last_snapshot: Any = None  # the last snapshot frame's `snapshot` seen by request()
        try:
            self._send(Hello(PROTOCOL_VERSION, client, subscribe, read_only))
            first = self.read()
        except BaseException:
            self.close()
            raise
        if isinstance(first, Error):
            self.close()
            raise ControlError(f"the engine refused the connection: {first.message}")
        if not isinstance(first, Welcome):
            self.close()
            raise ControlError(f"expected a welcome, got {type(first).__name__}")
        self.welcome = first

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, msg: Any) -> None:
        try:
            self.sock.sendall(frame(msg))
        except OSError as e:
            raise ControlError(f"the engine closed the connection: {e}") from e

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except TimeoutError as e:
                raise ControlError(f"the engine did not answer within {self.timeout:g} s") from e
            except OSError as e:
                raise ControlError(f"the connection to the engine failed: {e}") from e
            if not chunk:
                raise ControlError("the engine closed the connection")
            buf += chunk
        return bytes(buf)

    def read(self) -> Reply:
        (n,) = HEADER.unpack(self._recv(HEADER.size))
        if n == 0 or n > MAX_REPLY_BYTES:
            raise ControlError(f"the engine sent a frame of {n} bytes")
        try:
            return decode_reply(self._recv(n))
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise ControlError(f"the engine's message could not be read: {e}") from e

    def request(self, make: Callable[[int], Any]) -> Reply:
        """Send `make(id)` and return the reply with that id (snapshots are skipped)."""
        self._ids += 1
        rid = self._ids
        self._send(make(rid))
        while True:
            msg = self.read()
            if isinstance(msg, Stopping):
                raise ControlError(f"the engine stopped: {msg.message}")
            if isinstance(msg, SnapshotFrame):
                self.last_snapshot = msg.snapshot
                continue
            if getattr(msg, "id", None) == rid:
                return msg

    def command(
        self, action: str, trade_id: str | None = None, payload: dict[str, Any] | None = None
    ) -> Result | Error:
        reply = self.request(lambda i: CommandRequest(i, action, trade_id, payload or {}))  # type: ignore[arg-type]
        assert isinstance(reply, Result | Error)
        return reply

    def status(self) -> StatusReply | Error:
        reply = self.request(StatusRequest)
        assert isinstance(reply, StatusReply | Error)
        return reply

    def stop(self) -> Result | Error:
        reply = self.request(StopRequest)
        assert isinstance(reply, Result | Error)
        return reply


def wait_until(cond: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll `cond` until it holds or `timeout` seconds pass (process start-up and shutdown)."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
