"""The executor role: cancel every order and flatten every position on every configured venue,
verify it with fresh reads, keep it flat while ESS is ACTIVE, and keep the venues' own
dead-man's switches armed while ESS is healthy.

Layers: :mod:`ess.core.flatten` plans (pure); :mod:`ess.executor.ports` is the venue port;
:mod:`ess.executor.binance` adapts ccxt to it; :mod:`ess.executor.engine` runs the
read-plan-act-verify loop per venue; :mod:`ess.executor.service` follows ``ess.state`` and
publishes every step to ``ess.actions``; :mod:`ess.executor.client` offers the in-process
API's ``ExchangeClient`` port over the same venues.
"""
