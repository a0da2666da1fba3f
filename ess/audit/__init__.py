"""Audit tooling: record ESS topics to files and replay them offline through the live
detection and decision code (contract, behaviour 5).

* :mod:`ess.audit.recording`: the recording format and :func:`~ess.audit.recording.record`.
* :mod:`ess.audit.replay`: :func:`~ess.audit.replay.replay`, pure and in process.
* :mod:`ess.audit.compare`: recorded versus replayed trip decisions.
* :mod:`ess.audit.overrides`: the live config and what-if ``--set`` overrides.
* :mod:`ess.audit.report`: the terminal tables, the HTML report and its default path.
* :mod:`ess.audit.export`: the ``ess.replay/1`` JSON document (``ess replay --json``).

``docs/audit.md`` describes the reports and the JSON document.

Nothing is imported here eagerly: the CLI imports what a command needs.
"""
