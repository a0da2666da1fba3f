"""Pure detection rules: one module per family, each a fold over event-time state."""
