"""Fixtures shared by the venue tests."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """The test account's API key (one per test run: generating 2048-bit keys is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
