"""Which record becomes which alert: pure functions over ESS's own records. No I/O, no clock.

The notifier (:mod:`ess.roles.notify`) reads ``ess.state`` (through the verifying reader),
``ess.actions``, ``ess.deadletter`` and ``ess.liveness`` and hands each record to the function
here that knows its kind; what comes back is a tuple of :class:`Alert` values (usually zero or
one) that the dispatcher (:mod:`ess.notify.delivery`) sends to every receiver. Keeping the
decision here, away from Kafka and HTTP, is what lets it be tested record by record and makes
a replay of the same records decide the same alerts.

Two keys per alert
------------------
``key`` identifies the *event*: one key per thing that happened, derived from where the record
sits (the state log's ``seq`` and command id, a topic's coordinates, a liveness beat's run and
number), never from the time the notifier saw it. A restart or a replay that reads the record
again computes the same key, so receivers that deduplicate (PagerDuty, a webhook honouring
``Idempotency-Key``) drop the second copy, and the notifier's own in-process set of delivered
keys drops it before it is sent.

``incident`` groups a trigger with what ends it: a trip and the reset that clears it share the
incident of the activation (its ``seq`` and command id), a stalled flatten and the venue's
verified-flat report share the incident of (activation, venue, account), the processor going
and coming back share one incident per deployment. It is PagerDuty's ``dedup_key``.

What is delivered
-----------------
============================  ==========  =========  =====================================
record                        alert       severity   PagerDuty
============================  ==========  =========  =====================================
``activated`` entry           trip        critical   trigger (activation incident)
``reset`` entry               reset       info       resolve (activation incident)
``reset_rejected`` entry      rejected    warning    trigger (its own incident)
``flatten/stalled`` report    stalled     critical   trigger (flatten incident); once per
                                                     stall until the venue is flat again
``flatten/verified_flat``     flat        info       resolve (flatten incident)
no owner beat for the bound   gone        critical   trigger (processor incident)
owner beat after "gone"       back        info       resolve (processor incident)
dead letter of a command      dead letter error      trigger (its own incident)
============================  ==========  =========  =====================================

Further trips while ACTIVE (``trip_recorded``), reset approvals and every other action report
are not alerts: the first is bounded by the activation already alerted, the others are in the
logs and metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from ess.core import EssState, derive_id
from ess.core.reader import LoggedEntry
from schemas import (
    ActionReport,
    ActivatedEntry,
    DeadLetter,
    ProcessorBeat,
    ResetEntry,
    ResetRejectedEntry,
)

__all__ = [
    "Alert",
    "AlertKind",
    "FlattenEpisodes",
    "Page",
    "ProcessorWatch",
    "Severity",
    "activation_incident",
    "alerts_for_action",
    "alerts_for_dead_letter",
    "alerts_for_entry",
]

#: First part of every derived key: the notifier's keys never collide with command ids.
_NS: Final = "ess-notify"
#: Characters of a dead letter's raw record shown in its alert (it may be 64 KiB).
_RAW_EXCERPT: Final = 300
#: Characters of any one field's value in an alert (detail and error texts are up to 4 KiB).
_FIELD_MAX: Final = 1000
#: A beat stamped further than this from the notifier's clock is not taken (an old beat
#: replayed under a run the notifier has not seen), as the projector does.
_BEAT_CLOCK_SKEW: Final = timedelta(seconds=60)


class AlertKind(StrEnum):
    """What happened. The value is what receivers see (``kind`` in the webhook's JSON)."""

    TRIP = "trip"
    RESET = "reset"
    RESET_REJECTED = "reset_rejected"
    FLATTEN_STALLED = "flatten_stalled"
    FLATTEN_FLAT = "flatten_verified_flat"
    PROCESSOR_GONE = "processor_gone"
    PROCESSOR_BACK = "processor_back"
    COMMAND_DEAD_LETTERED = "command_dead_lettered"


class Severity(StrEnum):
    """PagerDuty's four severities, which every receiver shows as they are."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Page(StrEnum):
    """What an alert does to its incident on a paging receiver."""

    TRIGGER = "trigger"
    RESOLVE = "resolve"


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification, the same for every receiver (each renders it its own way).

    ``fields`` are ordered ``(name, value)`` pairs, values already cut to a readable size;
    ``origin`` says which record it came from (``ess.state@12``); ``ts`` is when the event
    happened by its record, not when it was noticed.
    """

    kind: AlertKind
    severity: Severity
    key: str
    incident: str
    page: Page | None
    title: str
    ts: datetime
    origin: str
    fields: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        """Plain text: the title, then one ``name: value`` line per field."""
        lines = [self.title, *(f"{name}: {value}" for name, value in self.fields)]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """The alert as a JSON object (the generic webhook's body)."""
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "key": self.key,
            "incident": self.incident,
            "page": self.page.value if self.page is not None else None,
            "title": self.title,
            "text": self.text(),
            "ts": self.ts.isoformat(),
            "origin": self.origin,
            "fields": dict(self.fields),
        }


def _fields(**values: object) -> tuple[tuple[str, str], ...]:
    """Named values as alert fields, in the order given; ``None`` and ``""`` are left out."""
    pairs = []
    for name, value in values.items():
        if value is None or value == "":
            continue
        text = str(value)
        if len(text) > _FIELD_MAX:
            text = text[: _FIELD_MAX - 3] + "..."
        pairs.append((name, text))
    return tuple(pairs)


# --------------------------------------------------------------------------- the state log


def activation_incident(scope: str, seq: int, command_id: str) -> str:
    """The incident of one activation: what its trip triggers and its reset resolves."""
    return derive_id(_NS, scope, "activation", seq, command_id)


def _rule(source: str) -> str | None:
    """The detection rule of a trip's ``source`` (``detector:<rule>``), if a rule sent it."""
    prefix = "detector:"
    return source[len(prefix) :] if source.startswith(prefix) else None


def alerts_for_entry(logged: LoggedEntry, before: EssState, *, scope: str) -> tuple[Alert, ...]:
    """The alerts of one authentic state-log entry; ``before`` is the state just before it
    (a reset's incident is the activation it cleared), ``scope`` the state topic's name."""
    entry = logged.entry
    origin = f"{scope}@{logged.offset}"
    key = derive_id(_NS, scope, entry.kind, entry.seq, entry.command_id)
    if isinstance(entry, ActivatedEntry):
        trigger = entry.trigger
        where = (
            f"{trigger.topic}[{trigger.partition}]@{trigger.offset} "
            f"({trigger.event_ts.isoformat()})"
            if trigger is not None
            else None
        )
        return (
            Alert(
                kind=AlertKind.TRIP,
                severity=Severity.CRITICAL,
                key=key,
                incident=activation_incident(scope, entry.seq, entry.command_id),
                page=Page.TRIGGER,
                title=f"ESS TRIPPED ({entry.reason.value}): trading is stopped",
                ts=entry.ts,
                origin=origin,
                fields=_fields(
                    reason=entry.reason.value,
                    rule=_rule(entry.source),
                    detail=entry.detail,
                    who=entry.source,
                    trigger=where,
                    seq=entry.seq,
                    command_id=entry.command_id,
                    at=entry.ts.isoformat(),
                ),
            ),
        )
    if isinstance(entry, ResetEntry):
        cleared = before.activation
        incident = (
            activation_incident(scope, cleared.seq, cleared.command_id)
            if cleared is not None
            else derive_id(_NS, scope, "activation", "none")
        )
        return (
            Alert(
                kind=AlertKind.RESET,
                severity=Severity.INFO,
                key=key,
                incident=incident,
                page=Page.RESOLVE,
                title="ESS RESET: trading is allowed again",
                ts=entry.ts,
                origin=origin,
                fields=_fields(
                    by=", ".join(entry.operators),
                    detail=entry.detail,
                    cleared=(
                        f"{cleared.reason.value} (seq {cleared.seq}): {cleared.detail}"
                        if cleared is not None
                        else None
                    ),
                    seq=entry.seq,
                    at=entry.ts.isoformat(),
                ),
            ),
        )
    if isinstance(entry, ResetRejectedEntry):
        stays = "ACTIVE" if before.active else "INACTIVE"
        return (
            Alert(
                kind=AlertKind.RESET_REJECTED,
                severity=Severity.WARNING,
                key=key,
                incident=key,
                page=Page.TRIGGER,
                title=f"Reset REJECTED ({entry.why.value}): ESS stays {stays}",
                ts=entry.ts,
                origin=origin,
                fields=_fields(
                    why=entry.why.value,
                    operator=entry.operator,
                    detail=entry.detail,
                    seq=entry.seq,
                    command_id=entry.command_id,
                    at=entry.ts.isoformat(),
                ),
            ),
        )
    return ()  # trip_recorded, reset_approval


# --------------------------------------------------------------------------- ess.actions

#: An open stall: (activation seq, venue, account) -> offset of its first ``stalled`` report.
_Episode = tuple[int | None, str, str]


@dataclass(frozen=True, slots=True)
class FlattenEpisodes:
    """Which venues have a stall already alerted, so that the executor's repeated
    ``stalled`` reports (one every ``ESS_EXECUTOR_STALLED_REPORT_INTERVAL_SEC``) make one
    alert per stall, not one every ten seconds. A value: :func:`alerts_for_action` returns
    the next one."""

    open: Mapping[_Episode, int] = field(default_factory=dict)

    def closing(self, episode: _Episode) -> FlattenEpisodes:
        if episode not in self.open:
            return self
        return replace(self, open={k: v for k, v in self.open.items() if k != episode})

    def opening(self, episode: _Episode, offset: int) -> FlattenEpisodes:
        return replace(self, open={**self.open, episode: offset})


def flatten_incident(topic: str, episode: _Episode) -> str:
    """The incident of a venue's flatten in one activation: stalled triggers, flat resolves."""
    activation, venue, account = episode
    return derive_id(_NS, topic, "flatten", activation, venue, account)


def _detail(report: ActionReport) -> dict[str, Any]:
    """The report's ``detail`` JSON object (empty when it is not one: it may be cut)."""
    try:
        value = json.loads(report.detail or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def alerts_for_action(
    report: ActionReport,
    episodes: FlattenEpisodes,
    *,
    topic: str,
    partition: int,
    offset: int,
) -> tuple[FlattenEpisodes, tuple[Alert, ...]]:
    """The alerts of one executor report at ``topic[partition]@offset``, and the episodes
    after it. ``flatten/stalled`` alerts once per stall (the first report's coordinates are
    its key); ``flatten/verified_flat`` always alerts (it resolves the stall's incident, if
    there was one); ``flatten/started`` and ``flatten/stopped`` end a stall silently (a reset
    or a new activation: what was stalled is no longer this flatten)."""
    if report.action != "flatten":
        return episodes, ()
    episode: _Episode = (report.activation_seq, report.venue, report.account)
    incident = flatten_incident(topic, episode)
    origin = f"{topic}[{partition}]@{offset}"
    detail = _detail(report)
    activation = "-" if report.activation_seq is None else str(report.activation_seq)
    if report.outcome == "stalled":
        if episode in episodes.open:
            return episodes, ()
        alert = Alert(
            kind=AlertKind.FLATTEN_STALLED,
            severity=Severity.CRITICAL,
            key=derive_id(_NS, topic, partition, offset),
            incident=incident,
            page=Page.TRIGGER,
            title=f"Flatten STALLED on venue {report.venue} (account {report.account})",
            ts=report.ts,
            origin=origin,
            fields=_fields(
                venue=report.venue,
                account=report.account,
                why=detail.get("last_error") or "not verified flat within the deadline",
                elapsed_ms=detail.get("elapsed_ms"),
                rounds=detail.get("rounds"),
                activation_seq=activation,
                at=report.ts.isoformat(),
            ),
        )
        return episodes.opening(episode, offset), (alert,)
    if report.outcome == "verified_flat":
        alert = Alert(
            kind=AlertKind.FLATTEN_FLAT,
            severity=Severity.INFO,
            key=derive_id(_NS, topic, partition, offset),
            incident=incident,
            page=Page.RESOLVE,
            title=f"Venue {report.venue} (account {report.account}) verified flat",
            ts=report.ts,
            origin=origin,
            fields=_fields(
                venue=report.venue,
                account=report.account,
                elapsed_ms=detail.get("elapsed_ms"),
                rounds=detail.get("rounds"),
                activation_seq=activation,
                at=report.ts.isoformat(),
            ),
        )
        return episodes.closing(episode), (alert,)
    if report.outcome in {"started", "stopped"}:
        return episodes.closing(episode), ()
    return episodes, ()


# --------------------------------------------------------------------------- ess.deadletter


def alerts_for_dead_letter(
    letter: DeadLetter, *, commands_topic: str, topic: str, partition: int, offset: int
) -> tuple[Alert, ...]:
    """An alert for a dead letter of the command topic (the processor recorded it as a
    ``manual`` stop); dead letters of the input topics are the detectors' business (their
    metrics and the ``EssDeadLetterSpike`` rule). The key is the *dead-lettered* record's
    coordinates, so a dead letter written twice (a crash) is one event."""
    if letter.source_topic != commands_topic:
        return ()
    key = derive_id(_NS, "dead_letter", letter.source_topic, letter.partition, letter.offset)
    raw = letter.raw if len(letter.raw) <= _RAW_EXCERPT else letter.raw[:_RAW_EXCERPT] + "..."
    return (
        Alert(
            kind=AlertKind.COMMAND_DEAD_LETTERED,
            severity=Severity.ERROR,
            key=key,
            incident=key,
            page=Page.TRIGGER,
            title="Undecodable command dead-lettered (recorded as a manual stop)",
            ts=letter.ts,
            origin=f"{topic}[{partition}]@{offset}",
            fields=_fields(
                command=f"{letter.source_topic}[{letter.partition}]@{letter.offset}",
                error=letter.error,
                raw=raw if letter.raw_encoding == "utf-8" else f"(base64) {raw}",
                at=letter.ts.isoformat(),
            ),
        ),
    )


# --------------------------------------------------------------------------- ess.liveness


@dataclass(slots=True)
class ProcessorWatch:
    """Is the command processor beating? Fed verified beats with their arrival time (a
    monotonic reading) and asked with the time now: does no I/O and reads no clock.

    Only beats of a processor that *owns* the command partition count (a standby processes
    nothing), and only beats newer than any seen of their run (a replayed beat proves
    nothing). "Gone" is alerted once when no such beat arrived for ``gone_after`` seconds
    (counted from ``started`` before the first one), "back" on the next one after that.

    The gone alert's key is the last beat seen (run and number): a notifier restarted while
    the processor is still gone finds the same last beat on ``ess.liveness`` and derives the
    same key, which receivers that deduplicate drop.
    """

    scope: str
    gone_after: float
    started: float
    last: ProcessorBeat | None = None
    last_arrival: float | None = None
    gone: bool = False
    _latest: dict[str, int] = field(default_factory=dict)

    @property
    def incident(self) -> str:
        return derive_id(_NS, self.scope, "processor")

    def seen(self, beat: ProcessorBeat) -> None:
        """A beat published before the notifier started: it names the last beat (for the
        key) but proves nothing about now."""
        self._latest[beat.run_id] = max(self._latest.get(beat.run_id, -1), beat.beat_no)
        if beat.owner:
            self.last = beat

    def beat(self, beat: ProcessorBeat, *, arrived: float, wall: datetime) -> Alert | None:
        """Take a verified live beat; returns the "back" alert when it ends a "gone"."""
        if abs(beat.ts - wall) > _BEAT_CLOCK_SKEW:
            return None
        if beat.beat_no <= self._latest.get(beat.run_id, -1):
            return None
        self._latest[beat.run_id] = beat.beat_no
        if not beat.owner:
            return None
        silent = arrived - (self.last_arrival if self.last_arrival is not None else self.started)
        self.last = beat
        self.last_arrival = arrived
        if not self.gone:
            return None
        self.gone = False
        return Alert(
            kind=AlertKind.PROCESSOR_BACK,
            severity=Severity.INFO,
            key=derive_id(_NS, self.scope, "processor_back", beat.run_id, beat.beat_no),
            incident=self.incident,
            page=Page.RESOLVE,
            title="Command processor BACK: trips are recorded again",
            ts=wall,
            origin=f"{self.scope}: run {beat.run_id} beat {beat.beat_no}",
            fields=_fields(run=beat.run_id, beat=beat.beat_no, silent_sec=f"{silent:.1f}"),
        )

    def check(self, now: float, *, wall: datetime) -> Alert | None:
        """The "gone" alert, once, when the last owner beat is older than ``gone_after``."""
        since = self.last_arrival if self.last_arrival is not None else self.started
        silent = now - since
        if self.gone or silent <= self.gone_after:
            return None
        self.gone = True
        last = self.last
        run, number = (last.run_id, last.beat_no) if last is not None else ("none", -1)
        return Alert(
            kind=AlertKind.PROCESSOR_GONE,
            severity=Severity.CRITICAL,
            key=derive_id(_NS, self.scope, "processor_gone", run, number),
            incident=self.incident,
            page=Page.TRIGGER,
            title=(
                f"Command processor GONE: no beat for {silent:.0f}s; trips are not being "
                "recorded and gates are closing"
            ),
            ts=wall,
            origin=f"{self.scope}: last run {run} beat {number}",
            fields=_fields(
                silent_sec=f"{silent:.1f}",
                threshold_sec=f"{self.gone_after:g}",
                last_beat_at=last.ts.isoformat() if last is not None else "never seen",
                last_run=run if last is not None else None,
            ),
        )
