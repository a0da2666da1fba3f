"""The ``project`` role: the PolicyStore record, ``emergency.stop``/``emergency.reset`` events,
ESS's health beat, metrics and ``/status``, all projected from the state log."""
