"""Interactive Brokers through ib_async (or ib_insync): see docs/ibkr.md."""
