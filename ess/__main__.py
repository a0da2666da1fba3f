"""``python -m ess``: the ``ess`` command, for environments where the script is not on PATH
(a virtualenv that is not activated, a child process started with ``sys.executable``)."""

from ess.operator.cli import main

main()
