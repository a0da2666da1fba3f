"""Shortened reliability campaigns (the full ones run with ``make chaos``)."""
