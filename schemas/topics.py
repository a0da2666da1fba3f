"""The topic registry: the single source of topic names, partitions, keys and retention.

Topic creation (embedded broker, deployment scripts, tests) reads this registry and nothing
else. One prefix renames every topic, which is also how tests get unique topics per test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

INFINITE = -1
_LEGAL_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,200}")
DAY_MS = 24 * 60 * 60 * 1000

#: Default partitions for high-volume input topics. Detection tables are co-partitioned with
#: their source topic, so changing this on a live cluster means a migration, not a restart.
DEFAULT_INPUT_PARTITIONS = 4


class TopicRole(StrEnum):
    INPUT = "input"
    COMMAND = "command"
    STATE = "state"
    OUTPUT = "output"


class TopicSpec(BaseModel):
    """One topic: its logical name (``fills``), full name (``ess.fills``) and settings."""

    model_config = ConfigDict(frozen=True)

    logical: str
    name: str
    role: TopicRole
    key: str
    partitions: Annotated[int, Field(ge=1)]
    retention_ms: int
    cleanup_policy: str = "delete"
    records: tuple[str, ...]
    writer: str

    @property
    def configs(self) -> dict[str, str]:
        """Broker-side topic configs for creation."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


@dataclass(frozen=True, slots=True)
class TopicRegistry:
    """All ESS topics under one prefix, one typed attribute per logical topic."""

    prefix: str
    fills: TopicSpec
    pnl: TopicSpec
    orders: TopicSpec
    order_errors: TopicSpec
    health: TopicSpec
    latency: TopicSpec
    market: TopicSpec
    security: TopicSpec
    commands: TopicSpec
    state: TopicSpec
    events: TopicSpec
    actions: TopicSpec
    deadletter: TopicSpec
    liveness: TopicSpec
    outcomes: TopicSpec

    def __post_init__(self) -> None:
        for f in fields(self):
            spec = getattr(self, f.name)
            if isinstance(spec, TopicSpec) and spec.logical != f.name:
                raise ValueError(f"registry slot {f.name} holds topic {spec.logical}")

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        """Every topic, in contract order."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "prefix")

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.topics]

    def by_name(self, name: str) -> TopicSpec:
        """The spec for a full topic name (``"ess.order-errors"``); ``KeyError`` if unknown."""
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def inputs(self) -> list[TopicSpec]:
        return [spec for spec in self.topics if spec.role is TopicRole.INPUT]


def topic_registry(
    prefix: str = "ess", input_partitions: int = DEFAULT_INPUT_PARTITIONS
) -> TopicRegistry:
    """Build the registry. ``ess.commands`` and ``ess.state`` always have exactly 1 partition:
    one partition is what gives the command processor a total order and a single writer."""
    if not _LEGAL_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"topic prefix must be 1-200 of the characters Kafka allows (letters, digits, "
            f"'.', '_', '-'), got {prefix!r}"
        )
    week = 7 * DAY_MS
    month = 30 * DAY_MS

    def spec(
        logical: str,
        suffix: str,
        role: TopicRole,
        key: str,
        partitions: int,
        retention_ms: int,
        records: tuple[str, ...],
        writer: str,
    ) -> TopicSpec:
        return TopicSpec(
            logical=logical,
            name=f"{prefix}.{suffix}",
            role=role,
            key=key,
            partitions=partitions,
            retention_ms=retention_ms,
            records=records,
            writer=writer,
        )

    n = input_partitions
    inp = TopicRole.INPUT
    out = TopicRole.OUTPUT
    return TopicRegistry(
        prefix,
        *(
            spec("fills", "fills", inp, "account_id", n, week, ("Fill",), "trading services"),
            spec("pnl", "pnl", inp, "account_id", n, week, ("PnlTick",), "portfolio"),
            spec("orders", "orders", inp, "account_id", n, week, ("OrderSubmitted",), "gateway"),
            spec(
                "order_errors",
                "order-errors",
                inp,
                "account_id",
                n,
                week,
                ("OrderError",),
                "gateway",
            ),
            spec("health", "health", inp, "component", n, week, ("HealthBeat",), "every service"),
            spec(
                "latency",
                "latency",
                inp,
                "component",
                n,
                week,
                ("LatencySample",),
                "trading services",
            ),
            spec("market", "market", inp, "symbol", n, week, ("MarketTick",), "market data"),
            spec(
                "security",
                "security",
                inp,
                "source",
                1,
                week,
                ("SecurityEvent",),
                "gateways, auth, ESS",
            ),
            spec(
                "commands",
                "commands",
                TopicRole.COMMAND,
                "constant",
                1,
                INFINITE,
                ("TripCommand", "ResetCommand"),
                "detectors, operators",
            ),
            spec(
                "state",
                "state",
                TopicRole.STATE,
                "constant",
                1,
                INFINITE,
                (
                    "ActivatedEntry",
                    "TripRecordedEntry",
                    "ResetApprovalEntry",
                    "ResetEntry",
                    "ResetRejectedEntry",
                ),
                "ESS command processor only",
            ),
            spec(
                "events",
                "events",
                out,
                "constant",
                1,
                month,
                ("EmergencyStopEvent", "EmergencyResetEvent"),
                "ESS event bus",
            ),
            spec(
                "actions",
                "actions",
                out,
                "venue/account",
                1,
                month,
                ("ActionReport",),
                "ESS executor",
            ),
            spec("deadletter", "deadletter", out, "source topic", 1, month, ("DeadLetter",), "ESS"),
            spec(
                "liveness",
                "liveness",
                out,
                "component",
                1,
                DAY_MS,
                ("ProcessorBeat",),
                "ESS command processor",
            ),
            spec(
                "outcomes",
                "outcomes",
                out,
                "command_id",
                1,
                month,
                ("CommandOutcome",),
                "ESS command processor",
            ),
        ),
    )
