"""The operator surface: the ``ess`` command line (:mod:`ess.operator.cli`) and what its
commands do, as plain async functions (:mod:`ess.operator.commands`)."""
