"""The ``command`` role: the command processor, single writer of the state log."""
