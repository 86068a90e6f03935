"""Fixtures shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

_DESKTOP_SESSION = ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS")


@pytest.fixture(autouse=True)
def no_user_dirs(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The app's default data and config directories (platformdirs: XDG_DATA_HOME,
    XDG_CONFIG_HOME) point into the test run's temporary directory: a test that forgets to set
    `engine.data_dir` must not write into the developer's real journal or paper account, and the
    developer's own config.toml must not change what a test sees. Subprocesses inherit this."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "xdg-config"))
    yield


@pytest.fixture(autouse=True)
def no_desktop_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests run as on a server: desktop notifications ([alerts.desktop], on by default) find no
    session and turn themselves off, so a developer's desktop gets no pop-ups from the suite.
    (Subprocesses started by tests inherit this environment.)"""
    for name in _DESKTOP_SESSION:
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """The test account's API key (one per test run: generating 2048-bit keys is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A failed test that never reached its store's close() leaves aiosqlite's worker thread
    running (the failure's traceback keeps the connection alive), and the interpreter would wait
    for that thread forever at exit: CI would hang instead of reporting the failure. Stop them."""
    import gc

    import aiosqlite

    for obj in gc.get_objects():
        # `type`, not isinstance: a weak proxy to a dead object raises on any attribute access.
        if type(obj) is aiosqlite.Connection and obj._connection is not None:
            obj.stop()
