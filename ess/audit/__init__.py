"""Audit tooling: record ESS topics to files and replay them offline through the live
detection and decision code (contract, behaviour 5).

* :mod:`ess.audit.recording`: the recording format and :func:`~ess.audit.recording.record`.
* :mod:`ess.audit.replay`: :func:`~ess.audit.replay.replay`, pure and in process.
* :mod:`ess.audit.compare`: recorded versus replayed trip decisions.
* :mod:`ess.audit.overrides`: the live config and what-if ``--set`` overrides.
* :mod:`ess.audit.report`: the terminal table and the HTML report.

Nothing is imported here eagerly: the CLI imports what a command needs.
"""
