"""Prometheus metrics of the command processor, in a registry of the caller's (see
:mod:`ess.roles.project.metrics` for why never the global one)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ProcessorMetrics"]


class ProcessorMetrics:
    """The command processor's metrics, registered in ``registry`` (a fresh one when omitted).

    Process counters (this processor's work since it started): commands by kind and outcome,
    entries appended by kind, dead letters, foreign state-log records seen; and gauges of
    where it stands."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.commands = Counter(
            "ess_commands",
            "Commands taken from ess.commands, by command kind and outcome "
            "(applied, duplicate, rejected).",
            labelnames=["kind", "outcome"],
            registry=reg,
        )
        self.entries = Counter(
            "ess_command_processor_entries_appended",
            "Entries this processor appended to ess.state, by entry kind.",
            labelnames=["kind"],
            registry=reg,
        )
        self.dead_letters = Counter(
            "ess_command_processor_dead_letters",
            "Command records dead-lettered (undecodable or not applicable).",
            registry=reg,
        )
        self.foreign = Counter(
            "ess_state_log_foreign_records",
            "Records in ess.state that did not verify (written by someone else): never applied.",
            registry=reg,
        )
        self.owner = Gauge(
            "ess_command_processor_owner",
            "1 while this processor owns the command partition (0: standby or stopped).",
            registry=reg,
        )
        self.next_command = Gauge(
            "ess_command_processor_next_command_offset",
            "Offset in ess.commands of the next command this processor will process.",
            registry=reg,
        )
        self.last_seq = Gauge(
            "ess_command_processor_last_seq",
            "seq of the last entry in this processor's fold of ess.state; -1 for none.",
            registry=reg,
        )
        self.last_seq.set(-1)
        # Liveness as the processor itself sees it (the projector's view of the same beats is
        # ess_command_processor_up): a beat that cannot be published is invisible to the
        # projector, which then stops vouching for INACTIVE.
        self.beats = Counter(
            "ess_command_processor_beats",
            "Signed liveness beats this processor published to ess.liveness.",
            registry=reg,
        )
        self.beat_errors = Counter(
            "ess_command_processor_beat_errors",
            "Liveness beats that could not be published.",
            registry=reg,
        )
        self.last_beat = Gauge(
            "ess_command_processor_last_beat_timestamp_seconds",
            "Unix time of the last liveness beat the broker acknowledged.",
            registry=reg,
        )
        # The lost-log check (ess.core.recovery): a stop re-established from the PolicyStore
        # record is a CRITICAL event worth an alert; an unverified one doubly so.
        self.lost_log = Counter(
            "ess_command_processor_lost_log_reestablished",
            "Stops re-established because the PolicyStore record showed ESS ACTIVE beyond the "
            "state log's end (reason state_log_lost), by whether the record's activation "
            "verified under a trusted processor key.",
            labelnames=["verified"],
            registry=reg,
        )
        self.lost_log_check_errors = Counter(
            "ess_command_processor_lost_log_check_errors",
            "Reads of the PolicyStore record for the lost-log check that failed (retried).",
            registry=reg,
        )
        self.lag = Gauge(
            "ess_command_processor_lag_records",
            "Commands on ess.commands not processed yet (high watermark - next command "
            "offset), while this processor owns the partition.",
            registry=reg,
        )

    def command_outcome(self, kind: str, outcome: str) -> None:
        self.commands.labels(kind=kind, outcome=outcome).inc()

    def entry_appended(self, kind: str) -> None:
        self.entries.labels(kind=kind).inc()

    def dead_lettered(self) -> None:
        self.dead_letters.inc()

    def foreign_records(self, count: int) -> None:
        if count > 0:
            self.foreign.inc(count)

    def observe_owner(self, owner: bool) -> None:
        self.owner.set(1 if owner else 0)
        if not owner:
            self.lag.set(0)  # a standby's old figure would look like a stuck backlog

    def observe_position(self, next_command: int, last_seq: int | None) -> None:
        self.next_command.set(next_command)
        self.last_seq.set(-1 if last_seq is None else last_seq)

    def beat_published(self, at: datetime) -> None:
        self.beats.inc()
        self.last_beat.set(at.timestamp())

    def beat_failed(self) -> None:
        self.beat_errors.inc()

    def observe_lag(self, records: int) -> None:
        self.lag.set(max(records, 0))

    def lost_log_reestablished(self, *, verified: bool) -> None:
        self.lost_log.labels(verified="true" if verified else "false").inc()

    def lost_log_check_failed(self) -> None:
        self.lost_log_check_errors.inc()


#: Buckets of the detection latency histograms, in seconds: about 10 ms at idle on the embedded
#: broker (BENCHMARKS.md), up to seconds while a backlog drains.
