"""Venues: the port the flatten engine sees (:mod:`ess.venues.ports`), the ccxt adapters that
implement it, their rate budget, the venues file, and the in-process API's ``ExchangeClient``
over the same adapters. A new venue is a new adapter module here."""
