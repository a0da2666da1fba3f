"""Detection thresholds: one frozen, validated model that every rule reads at construction.

Conventions (the same in every rule, so a threshold reads the same way everywhere):

* Ratios are fractions (``0.10`` is 10 %), as in :mod:`ess.api.evaluators`. A loss or drop
  rule fires when the ratio *reaches* its limit (``>=``): "a 10 % daily loss" includes 10 %.
* Count rules mean "more than ``max`` events in any interval of ``window_sec``" (``>``): the
  contract words them that way ("more than 5 stop-loss fills in any 10 minutes"). Two events
  exactly ``window_sec`` apart are in one interval (the interval is closed).
* Durations ("silent for longer than", "down for longer than", "latency above") are strict
  (``>``): exactly at the limit is still fine.
* Every duration is event time in seconds (``*_sec``), like :class:`ess.settings.EssSettings`.

Per-account overrides (:attr:`DetectionConfig.account_overrides`) replace any subset of the
account-keyed thresholds (:class:`AccountLimits`) for one ``account_id``; the others keep the
defaults. The rules resolve them once per account and cache the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Every rule name the catalog knows, in catalog order. Rule names are also the ``<rule>`` in a
#: trip's ``source`` (``detector:<rule>``) and part of derived command ids: never rename one.
ALL_RULES: tuple[str, ...] = (
    # pnl
    "daily_loss",
    "equity_drawdown",
    "flash_crash",
    # fills
    "trade_rate",
    "stop_loss_cluster",
    "position_size",
    # orders
    "order_size",
    # order_errors
    "order_rejects",
    "execution_errors",
    # health
    "system_critical",
    "exchange_disconnected",
    "policy_store_stale",
    "ess_policy_store_failing",
    "heartbeat_lost",
    # latency
    "latency_spike",
    # market
    "data_feed_corrupt",
    "data_feed_stale",
    # security
    "api_key_invalid",
    "api_key_changed",
    "unauthorized_access",
    "environment_modified",
)

Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=100_000)]
Limit = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=256)]

_OFFSET = re.compile(r"^(?:UTC)?([+-])(\d{2}):?(\d{2})$")
_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class AccountLimits(BaseModel):
    """Thresholds of the account-keyed rules (topics ``pnl``, ``fills``, ``orders``,
    ``order_errors``). :class:`DetectionConfig` holds the defaults; an override replaces any
    subset for one account.

    Size limits default to ``None`` (off) for quantity, because a sane quantity depends on the
    instrument (1 BTC versus 1 share); notional limits are on by default and generous. Set
    quantity limits per account where the instruments are known.
    """

    model_config = _FROZEN

    #: ``daily_loss``: loss since the day-start equity reaches this fraction.
    daily_loss: Fraction = 0.10
    #: ``equity_drawdown``: drop from the running peak equity reaches this fraction.
    drawdown: Fraction = 0.25
    #: ``flash_crash``: equity drops by this fraction from the highest equity observed within
    #: the last ``flash_crash_window_sec`` of event time.
    flash_crash: Fraction = 0.05
    flash_crash_window_sec: Seconds = 60.0
    #: ``trade_rate``: more than this many fills in any ``trade_rate_window_sec``.
    trade_rate_max: Count = 100
    trade_rate_window_sec: Seconds = 60.0
    #: ``stop_loss_cluster``: more than this many stop-loss fills in any window.
    stop_loss_max: Count = 5
    stop_loss_window_sec: Seconds = 600.0
    #: ``order_rejects``: more than this many ``reject`` order errors in any window.
    order_rejects_max: Count = 10
    order_rejects_window_sec: Seconds = 60.0
    #: ``execution_errors``: more than this many ``error``/``timeout`` order errors in any window.
    execution_errors_max: Count = 5
    execution_errors_window_sec: Seconds = 60.0
    #: ``order_size``: one order above these (``None`` = no limit).
    max_order_qty: Limit | None = None
    max_order_notional: Limit | None = 1_000_000.0
    #: ``position_size``: net position per account and symbol (from fills) above these.
    max_position_qty: Limit | None = None
    max_position_notional: Limit | None = 5_000_000.0


class AccountOverrides(BaseModel):
    """A partial :class:`AccountLimits`: only the fields given replace the defaults.

    A field explicitly set to ``None`` (for the size limits) switches that limit off for the
    account; a field left out keeps the default.
    """

    model_config = _FROZEN

    daily_loss: Fraction | None = None
    drawdown: Fraction | None = None
    flash_crash: Fraction | None = None
    flash_crash_window_sec: Seconds | None = None
    trade_rate_max: Count | None = None
    trade_rate_window_sec: Seconds | None = None
    stop_loss_max: Count | None = None
    stop_loss_window_sec: Seconds | None = None
    order_rejects_max: Count | None = None
    order_rejects_window_sec: Seconds | None = None
    execution_errors_max: Count | None = None
    execution_errors_window_sec: Seconds | None = None
    max_order_qty: Limit | None = None
    max_order_notional: Limit | None = None
    max_position_qty: Limit | None = None
    max_position_notional: Limit | None = None

    @model_validator(mode="after")
    def _none_only_for_limits(self) -> AccountOverrides:
        # ``None`` means "unset" for thresholds, but "switch off" for the optional size limits;
        # only the latter may be set explicitly to None.
        for name in self.model_fields_set:
            if getattr(self, name) is None and not name.startswith("max_"):
                raise ValueError(f"{name}: only size limits (max_*) may be set to null")
        return self


class DetectionConfig(BaseModel):
    """Every detection threshold, with the defaults of the original brief where it gave one.

    Defaults (and why):

    * daily loss 10 %, drawdown 25 % (the brief); flash crash 5 % within 60 s.
    * trade rate > 100 fills in any 60 s; stop-loss cluster > 5 in any 10 min; order rejects
      > 10 in any 60 s; execution errors (error/timeout) > 5 in any 60 s.
    * heartbeat silence > 15 s (three missed 5 s beats, well above jitter), announced
      maintenance counted for at most 4 h (``max_maintenance_sec``); data feed silence
      > 10 s per symbol; exchange ``down`` and policy store ``stale`` continuously for > 5 s
      (a short outage is noise; five seconds of a stale store means gates are closing).
    * latency > 5 s (the brief) on 3 consecutive samples of one component/operation: one slow
      sample is noise, three in a row is a stuck venue. Optionally a quantile over a window.
    * data feed corrupt: more than 20 % of the last 50 ticks of a symbol corrupt, judged once
      at least 20 ticks are in the window; a tick whose ``last`` jumps more than 20 % from the
      previous good tick is corrupt.
    * out-of-order tolerance 30 s: a record more than this older than the newest one of its
      key is too late to change a window (windows keep that much history beyond their length).
    """

    model_config = _FROZEN

    #: Rule names to run (see :data:`ALL_RULES`); default all.
    enabled_rules: frozenset[str] = frozenset(ALL_RULES)

    #: Account-keyed thresholds (defaults) and per-account partial overrides.
    account: AccountLimits = AccountLimits()
    account_overrides: Mapping[Name, AccountOverrides] = Field(default_factory=dict)

    #: Where a trading day starts for ``daily_loss``: ``"UTC"``, a fixed offset (``"+02:00"``,
    #: ``"-0530"``) or an IANA zone (``"America/New_York"``, daylight saving handled).
    day_boundary: str = "UTC"

    #: Health (topic ``health``, key ``component``).
    #: Components that must beat: ``heartbeat_lost`` also covers them before their first beat.
    required_components: frozenset[Name] = frozenset()
    #: Components every health rule ignores. ESS publishes its own CRITICAL beat while ACTIVE;
    #: reading it back would trip ESS on itself. Operators may add components whose beats
    #: should never trip anything; a component stopping on purpose announces it instead
    #: (``HealthBeat.lifecycle``), which needs no change here.
    ignore_components: frozenset[Name] = frozenset({"ess"})
    heartbeat_timeout_sec: Seconds = 15.0
    #: Longest maintenance one beat can announce (``HealthBeat.lifecycle="maintenance"``): a
    #: later ``maintenance_until`` counts as this long after the beat. A component cannot
    #: disarm its own silence check for longer than this without beating again (4 h covers a
    #: deploy or an exchange's maintenance window; a longer stop is a retirement).
    max_maintenance_sec: Seconds = 4 * 3600.0
    exchange_down_sec: Seconds = 5.0
    policy_store_stale_sec: Seconds = 5.0
    #: ESS's own projector reporting that it cannot write the ``emergency_stop`` record
    #: (``checks["policy_store_writes"] == "failing"``) for longer than this trips
    #: ``policy_store_stale`` (rule ``ess_policy_store_failing``, which watches ESS's beats).
    ess_policy_store_failing_sec: Seconds = 10.0

    #: Latency (topic ``latency``, key ``component`` + ``operation``).
    latency_threshold_ms: Limit = 5_000.0
    #: Fire when this many consecutive samples (in event time) are all above the threshold.
    latency_consecutive: Annotated[int, Field(ge=1, le=1_000)] = 3
    #: Alternatively (when set) fire when this quantile of the samples in the last
    #: ``latency_window_sec`` is above the threshold, once ``latency_min_samples`` are there.
    latency_quantile: Fraction | None = None
    latency_window_sec: Seconds = 60.0
    latency_min_samples: Annotated[int, Field(ge=1, le=10_000)] = 20
    #: Quantile mode keeps at most this many most recent samples per key (state stays small).
    latency_max_samples: Annotated[int, Field(ge=1, le=10_000)] = 200

    #: Market data (topic ``market``, key ``symbol``).
    corrupt_share: Fraction = 0.20
    corrupt_window_ticks: Annotated[int, Field(ge=1, le=10_000)] = 50
    corrupt_min_ticks: Annotated[int, Field(ge=1, le=10_000)] = 20
    max_tick_jump: Limit = 0.20
    data_feed_stale_sec: Seconds = 10.0
    #: Symbols that must tick: ``data_feed_stale`` also covers them before their first tick.
    required_symbols: frozenset[Name] = frozenset()

    #: A record whose event time is this far after its Kafka timestamp is refused (dead-
    #: lettered): a clock in the future would silence time-based rules for its key.
    max_future_skew_sec: Seconds = 300.0
    #: Out-of-order tolerance of the window rules (see the class docstring).
    max_lateness_sec: Annotated[float, Field(ge=0, le=24 * 3600, allow_inf_nan=False)] = 30.0
    #: Fill ids remembered per account and symbol by ``position_size`` (a running sum cannot
    #: use its window as the dedupe set). Redeliveries arrive soon after the original (within
    #: a commit interval); 128 exceeds a minute of fills at the default trade-rate limit, and
    #: each id kept costs a little on every fill (figures: BENCHMARKS.md).
    position_dedupe_ids: Annotated[int, Field(ge=1, le=100_000)] = 128

    #: Physical name of the health and market topics, used only as the trigger ``topic`` of
    #: a silence detection for a required key never seen (there is no record to point at).
    health_topic: Name = "ess.health"
    market_topic: Name = "ess.market"

    @field_validator("enabled_rules")
    @classmethod
    def _known_rules(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - set(ALL_RULES))
        if unknown:
            raise ValueError(f"unknown rules {unknown}; known: {list(ALL_RULES)}")
        return value

    @field_validator("day_boundary")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        parse_day_boundary(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DetectionConfig:
        if self.corrupt_min_ticks > self.corrupt_window_ticks:
            raise ValueError(
                f"corrupt_min_ticks ({self.corrupt_min_ticks}) exceeds corrupt_window_ticks "
                f"({self.corrupt_window_ticks})"
            )
        if self.latency_quantile is not None and (
            self.latency_min_samples > self.latency_max_samples
        ):
            raise ValueError(
                f"latency_min_samples ({self.latency_min_samples}) exceeds "
                f"latency_max_samples ({self.latency_max_samples})"
            )
        both = sorted(self.required_components & self.ignore_components)
        if both:
            raise ValueError(f"components both required and ignored: {both}")
        return self

    @property
    def day_zone(self) -> tzinfo:
        """The parsed :attr:`day_boundary` (parsed on each call, by rule construction only:
        a cached value would go stale through ``model_copy(update=...)``)."""
        return parse_day_boundary(self.day_boundary)

    def limits_for(self, account_id: str) -> AccountLimits:
        """The thresholds of one account: the defaults with its overrides applied."""
        override = self.account_overrides.get(account_id)
        if override is None:
            return self.account
        changes: dict[str, Any] = {
            name: getattr(override, name) for name in override.model_fields_set
        }
        return self.account.model_copy(update=changes)


def parse_day_boundary(value: str) -> tzinfo:
    """``"UTC"``, ``"+HH:MM"`` / ``"-HHMM"`` (optionally prefixed ``UTC``) or an IANA zone."""
    if value.upper() in {"UTC", "Z"}:
        return UTC
    match = _OFFSET.match(value)
    if match:
        sign, hours, minutes = match.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        if offset >= timedelta(hours=24) or int(minutes) >= 60:
            raise ValueError(f"day_boundary offset out of range: {value!r}")
        return timezone(-offset if sign == "-" else offset)
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"day_boundary {value!r} is neither UTC, an offset like +02:00 nor an IANA zone"
        ) from exc


def day_bounds(moment: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of the trading day holding ``moment`` in ``zone``.

    Computed from local midnights, so a daylight-saving day is 23 or 25 hours long. Returned
    in UTC: arithmetic between two datetimes of one zone ignores their offsets.
    """
    local_day = moment.astimezone(zone).date()
    start = datetime.combine(local_day, time(0), tzinfo=zone)
    end = datetime.combine(local_day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)
