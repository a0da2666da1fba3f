"""The pure ESS core: state machine, signatures and deterministic ids.

Nothing in this package reads the clock, the environment or the network. Imports: ``schemas``,
the standard library and ``cryptography`` (used as pure math for Ed25519 verification).
"""

from ess.core.decider import ResetPolicy, SequenceError, decide, evolve, fold
from ess.core.ids import derive_id
from ess.core.state import INITIAL_STATE, Activation, Approval, EssState, Status

__all__ = [
    "INITIAL_STATE",
    "Activation",
    "Approval",
    "EssState",
    "ResetPolicy",
    "SequenceError",
    "Status",
    "decide",
    "derive_id",
    "evolve",
    "fold",
]
