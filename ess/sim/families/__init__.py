"""The exchange API families the simulator serves over its one matching engine
(:mod:`ess.sim.families.base` says what a family is)."""
