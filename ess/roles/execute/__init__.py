"""The ``execute`` role: cancel every order and flatten every position on every configured
venue, verify it with fresh reads, keep it flat while ESS is ACTIVE, and keep the venues' own
dead-man's switches armed while ESS is healthy.

Layers: :mod:`ess.core.flatten` plans (pure); :mod:`ess.venues` holds the venue port and the
ccxt adapters; :mod:`ess.roles.execute.engine` runs the read-plan-act-verify loop per venue;
:mod:`ess.roles.execute.service` follows ``ess.state`` and publishes every step to
``ess.actions``.
"""
