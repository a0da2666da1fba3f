"""Executor tests: the flatten engine with fakes, the Binance adapters against the simulator."""
