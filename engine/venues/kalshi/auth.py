"""Kalshi request signing: the RSA private key and the three KALSHI-ACCESS-* headers.

Each authenticated request carries the key id, a millisecond timestamp, and a base64 RSA-PSS
signature (SHA-256, MGF1-SHA256, salt length = digest length) over
`timestamp + METHOD + path`, where path includes `/trade-api/v2` and excludes the query string.

The key and the signature are secrets: nothing here logs them, and `KalshiSigner`'s repr shows
neither. A key file that group or others can read is refused, like ssh does.
"""

from __future__ import annotations

import base64
import stat
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["KalshiKeyError", "KalshiSigner", "load_private_key", "sign_message"]

HEADER_KEY = "KALSHI-ACCESS-KEY"
HEADER_TIMESTAMP = "KALSHI-ACCESS-TIMESTAMP"
HEADER_SIGNATURE = "KALSHI-ACCESS-SIGNATURE"


class KalshiKeyError(Exception):
    """The private key file cannot be used (missing, too open, not an RSA PEM key)."""


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    """Read an RSA private key from a PEM file that only its owner can read.

    Raises `KalshiKeyError` with the fix when the file is missing, readable by group or others,
    or not an unencrypted RSA PEM key. The message names the path but never the content.
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise KalshiKeyError(f"Kalshi private key file not found: {p}") from None
    if not stat.S_ISREG(mode):
        raise KalshiKeyError(f"Kalshi private key path is not a file: {p}")
    if mode & 0o077:
        raise KalshiKeyError(
            f"Kalshi private key file {p} is readable by other users "
            f"(mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {p}"
        )
    data = p.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The exception text could quote the file; say only what is wrong.
        raise KalshiKeyError(
            f"Kalshi private key file {p} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KalshiKeyError(f"Kalshi private key file {p} holds a non-RSA key")
    return key


def sign_message(private_key: rsa.RSAPrivateKey, message: str) -> str:
    """Base64 RSA-PSS (SHA-256, MGF1-SHA256, salt = digest length) signature of `message`."""
    signature = private_key.sign(
        message.encode("utf-8"),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    return base64.b64encode(signature).decode("ascii")


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class KalshiSigner:
    """Produces the KALSHI-ACCESS-* headers for one API key.

    `now_ms` is injectable for tests; it must be wall time, since Kalshi checks the timestamp
    against its own clock.
    """

    def __init__(
        self,
        key_id: str,
        private_key: rsa.RSAPrivateKey,
        *,
        now_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        if not key_id:
            raise KalshiKeyError("Kalshi API key id is empty")
        self._key_id = key_id
        self._key = private_key
        self._now_ms = now_ms

    @classmethod
    def from_file(cls, key_id: str, path: str | Path) -> KalshiSigner:
        return cls(key_id, load_private_key(path))

    def __repr__(self) -> str:
        return "KalshiSigner(key_id=**********)"

    def headers(self, method: str, url_or_path: str) -> dict[str, str]:
        """The three auth headers for `method` on `url_or_path` (query string ignored)."""
        path = urlsplit(url_or_path).path
        timestamp = str(self._now_ms())
        signature = sign_message(self._key, timestamp + method.upper() + path)
        return {
            HEADER_KEY: self._key_id,
            HEADER_TIMESTAMP: timestamp,
            HEADER_SIGNATURE: signature,
        }
