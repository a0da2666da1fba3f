"""The four roles of ESS, named as on the command line (``ess worker --roles ...``).

* :mod:`ess.roles.detect`: stream detection (Faust workers, scalable, in two groups).
* :mod:`ess.roles.command`: the command processor, the single writer of ``ess.state``.
* :mod:`ess.roles.execute`: cancels and flattens every configured venue while ACTIVE.
* :mod:`ess.roles.project`: the PolicyStore record, events, ESS's health beat, ``/status``.

:mod:`ess.roles.worker` runs any subset of them in one process.
"""
