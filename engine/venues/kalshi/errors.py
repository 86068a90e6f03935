"""Typed Kalshi errors: each carries the HTTP status and the venue's `code` and `message`."""

from __future__ import annotations

__all__ = [
    "KalshiAuthError",
    "KalshiBadResponse",
    "KalshiConflict",
    "KalshiError",
    "KalshiNotFound",
    "KalshiOrderOutcomeUnknown",
    "KalshiRateLimited",
    "KalshiUnavailable",
]


class KalshiError(Exception):
    """An error answer from Kalshi (or no usable answer at all)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: object = None,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.method = method
        self.path = path
        where = f"{method} {path}: " if method else ""
        status_text = f"HTTP {status} " if status is not None else ""
        code_text = f"[{code}] " if code else ""
        super().__init__(f"Kalshi {where}{status_text}{code_text}{message}")


class KalshiAuthError(KalshiError):
    """401/403: the key id, the key or the signature was refused (or the clock is off)."""


class KalshiNotFound(KalshiError):
    """404: no such market, order or path."""


class KalshiConflict(KalshiError):
    """409: e.g. an order with this client_order_id already exists."""


class KalshiRateLimited(KalshiError):
    """429 on every attempt: we asked too often for too long."""


class KalshiUnavailable(KalshiError):
    """5xx, a timeout or a transport error on every attempt."""


class KalshiOrderOutcomeUnknown(KalshiUnavailable):
    """An order POST may or may not have reached the exchange; look it up by client_order_id.

    Never treat this as a rejection: the order may be live or filled.
    """

    def __init__(self, message: str, *, client_order_id: str, **kwargs: object) -> None:
        self.client_order_id = client_order_id
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class KalshiBadResponse(KalshiError):
    """The answer was not the JSON we expected (truncated, an HTML error page, wrong shape)."""
