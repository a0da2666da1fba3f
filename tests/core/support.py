"""Real keys, commands and a tiny driver shared by the core unit tests (no mocks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ess.core import Activation, EssState, ResetPolicy, decide, evolve
from ess.core.signing import public_bytes, sign_reset
from schemas import ReasonCode, ResetCommand, StateEntry, TriggerRef, TripCommand

T0 = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
SECOND = timedelta(seconds=1)

# Fixed seeds: Ed25519 is deterministic, so every run signs the same bytes.
ALICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
BOB_KEY = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
CAROL_KEY = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
MALLORY_KEY = Ed25519PrivateKey.from_private_bytes(bytes([66]) * 32)

KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY, "carol": CAROL_KEY, "mallory": MALLORY_KEY}
REGISTERED = {"alice": public_bytes(ALICE_KEY), "bob": public_bytes(BOB_KEY)}

TRIGGER = TriggerRef(topic="ess.pnl", partition=3, offset=1234, event_ts=T0 - 2 * SECOND)


def policy(quorum: int = 1, **kwargs: object) -> ResetPolicy:
    return ResetPolicy(operators=REGISTERED, quorum=quorum, **kwargs)  # type: ignore[arg-type]


def trip(
    command_id: str = "trip-1",
    *,
    reason: ReasonCode = ReasonCode.DAILY_LOSS,
    detail: str = "daily loss 5.3% > 5%",
    source: str = "detector:daily_loss",
    trigger: TriggerRef | None = TRIGGER,
    ts: datetime = T0,
) -> TripCommand:
    return TripCommand(
        command_id=command_id, reason=reason, detail=detail, source=source, trigger=trigger, ts=ts
    )


def reset(
    command_id: str = "reset-1",
    *,
    of: EssState | Activation | None,
    operator: str = "alice",
    nonce: str = "nonce-1",
    ts: datetime = T0,
    detail: str = "root cause fixed",
    signer: str | None = None,
) -> ResetCommand:
    """A reset by ``operator``, signed with ``signer``'s key (default: the operator's own),
    for the activation ``of`` (a state's current activation, or an activation itself).
    ``of=None``, or a state without an activation, signs an unbound reset (no activation)."""
    activation = of.activation if isinstance(of, EssState) else of
    key = KEYS[signer or operator]
    return sign_reset(
        key,
        command_id=command_id,
        operator=operator,
        ts=ts,
        nonce=nonce,
        detail=detail,
        activation_seq=activation.seq if activation else None,
        activation_command_id=activation.command_id if activation else None,
    )


def apply(
    state: EssState,
    command: TripCommand | ResetCommand,
    *,
    now: datetime = T0,
    reset_policy: ResetPolicy | None = None,
) -> tuple[list[StateEntry], EssState]:
    """Decide, then evolve with every produced entry."""
    entries = decide(state, command, now=now, policy=reset_policy or policy())
    for entry in entries:
        state = evolve(state, entry)
    return entries, state


def only(entries: list[StateEntry]) -> StateEntry:
    assert len(entries) == 1, entries
    return entries[0]
