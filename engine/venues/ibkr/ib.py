"""The one import of the Interactive Brokers client library.

`ib_async` (2.x) is the maintained continuation of `ib_insync` with the same API; a machine that
only has `ib_insync` (0.9.x) works too. Everything in `engine/venues/ibkr/` imports the library's
names from here.
"""

from __future__ import annotations

try:  # pragma: no branch - which one is installed decides
    import ib_async as ib_lib
    from ib_async import (
        IB,
        ComboLeg,
        Contract,
        Index,
        LimitOrder,
        Option,
        Stock,
        Ticker,
        Trade,
        util,
    )

    LIBRARY = "ib_async"
except ImportError:  # pragma: no cover - only where ib_async is missing
    import ib_insync as ib_lib  # type: ignore[no-redef]
    from ib_insync import (  # type: ignore[no-redef,assignment]
        IB,
        ComboLeg,
        Contract,
        Index,
        LimitOrder,
        Option,
        Stock,
        Ticker,
        Trade,
        util,
    )

    LIBRARY = "ib_insync"

__all__ = [
    "IB",
    "LIBRARY",
    "ComboLeg",
    "Contract",
    "Index",
    "LimitOrder",
    "Option",
    "Stock",
    "Ticker",
    "Trade",
    "ib_lib",
    "util",
]
