"""The Kalshi adapter: signing, the REST client, fixed-point parsing and typed errors."""

from engine.venues.kalshi.auth import KalshiKeyError, KalshiSigner, load_private_key
from engine.venues.kalshi.client import BASE_URLS, KalshiClient
from engine.venues.kalshi.errors import (
    KalshiAuthError,
    KalshiBadResponse,
    KalshiConflict,
    KalshiError,
    KalshiNotFound,
    KalshiOrderOutcomeUnknown,
    KalshiRateLimited,
    KalshiUnavailable,
)
from engine.venues.kalshi.fixed import FixedPointError

__all__ = [
    "BASE_URLS",
    "FixedPointError",
    "KalshiAuthError",
    "KalshiBadResponse",
    "KalshiClient",
    "KalshiConflict",
    "KalshiError",
    "KalshiKeyError",
    "KalshiNotFound",
    "KalshiOrderOutcomeUnknown",
    "KalshiRateLimited",
    "KalshiSigner",
    "KalshiUnavailable",
    "load_private_key",
]
