"""The Kalshi adapter: signing, the REST client, fixed-point parsing, typed errors, the venue."""

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
from engine.venues.kalshi.stream import KalshiQuote, KalshiStream
from engine.venues.kalshi.venue import KalshiVenue

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
    "KalshiQuote",
    "KalshiRateLimited",
    "KalshiSigner",
    "KalshiStream",
    "KalshiUnavailable",
    "KalshiVenue",
    "load_private_key",
]
