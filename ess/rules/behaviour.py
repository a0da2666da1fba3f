"""Trading-behaviour rules, keyed by account: rates of fills, stop-losses, rejects and
execution errors ("more than N in any T", exact sliding windows), and position size.

Count windows (:class:`CountWindowRule`) keep the exact, sorted event times of one account
still reachable by an interval of length T (plus the out-of-order tolerance) and count, on
every record, the densest interval of length T holding it. So six stop-losses at 09:59:00,
09:59:30, 10:00:00, 10:00:20, 10:00:40 and 10:01:00 fire with T = 10 min, although no
calendar 10-minute bucket holds six. Below the limit a window holds at most ``max`` events
per T, so state stays small; once fired the list is dropped until the epoch changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from ess.rules._common import (
    EMPTY_LATCH,
    EMPTY_WINDOW,
    LatchState,
    StateCodec,
    WindowState,
    compound_key,
    detection,
    fire_latch,
    fmt_sec,
    from_us,
    latch_gate,
    sec_to_us,
    to_us,
    window_add,
)
from ess.rules.base import Context, Coordinates, Detection
from ess.rules.config import AccountLimits, DetectionConfig
from schemas import Fill, OrderError, OrderErrorKind, OrderSubmitted, ReasonCode, Side


class _AccountRecord(Protocol):
    @property
    def event_id(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def ts(self) -> datetime: ...


R = TypeVar("R", bound=_AccountRecord)


class CountWindowRule(StateCodec, Generic[R]):
    """ "More than ``max`` matching records of one account in any ``window`` of event time."""

    state_type = WindowState

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        reason: ReasonCode,
        what: str,
        config: DetectionConfig,
        max_field: str,
        window_field: str,
        accept: Callable[[R], bool] | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.reason = reason
        self._what = what
        self._accept = accept
        self._lateness = sec_to_us(config.max_lateness_sec)

        def limits(lim: AccountLimits) -> tuple[int, int]:
            return int(getattr(lim, max_field)), sec_to_us(getattr(lim, window_field))

        # Resolved once: the hot path does one dict lookup, and unknown accounts (the many)
        # share the defaults without growing anything.
        self._default = limits(config.account)
        self._overrides = {
            account: limits(config.limits_for(account)) for account in config.account_overrides
        }

    def key(self, record: R) -> str:
        """The account."""
        return record.account_id

    def initial(self) -> WindowState:
        """An empty window."""
        return EMPTY_WINDOW

    def step(
        self, state: WindowState, record: R, coords: Coordinates, ctx: Context
    ) -> tuple[WindowState, Detection | None]:
        """Count the record if it matches; fire when an interval of the window length holding
        it has more than the limit."""
        if self._accept is not None and not self._accept(record):
            return state, None
        account = record.account_id
        limit, span = self._overrides.get(account, self._default)
        ts = record.ts
        new, count, first = window_add(
            state, to_us(ts), record.event_id, ctx, span=span, lateness=self._lateness, limit=limit
        )
        if count <= limit:
            return new, None
        detail = (
            f"{count} {self._what} for account {account} between {from_us(first).isoformat()} "
            f"and {ts.isoformat()}: more than {limit} in any {fmt_sec(span)}"
        )
        return new, detection(self.name, self.reason, account, detail, (coords, ts))

    def tick(
        self, state: WindowState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[WindowState, Detection | None]:
        """Not a silence rule."""
        return state, None


def trade_rate(config: DetectionConfig) -> CountWindowRule[Fill]:
    """More than ``trade_rate_max`` fills of an account in any ``trade_rate_window_sec``."""
    return CountWindowRule(
        name="trade_rate",
        topic="fills",
        reason=ReasonCode.TRADE_RATE,
        what="fills",
        config=config,
        max_field="trade_rate_max",
        window_field="trade_rate_window_sec",
    )


def _is_stop_loss(fill: Fill) -> bool:
    return fill.is_stop_loss


def stop_loss_cluster(config: DetectionConfig) -> CountWindowRule[Fill]:
    """More than ``stop_loss_max`` stop-loss fills of an account in any window."""
    return CountWindowRule(
        name="stop_loss_cluster",
        topic="fills",
        reason=ReasonCode.STOP_LOSS_CLUSTER,
        what="stop-loss fills",
        config=config,
        max_field="stop_loss_max",
        window_field="stop_loss_window_sec",
        accept=_is_stop_loss,
    )


def _is_reject(error: OrderError) -> bool:
    return error.kind is OrderErrorKind.REJECT


def _is_execution_error(error: OrderError) -> bool:
    return error.kind is not OrderErrorKind.REJECT


def order_rejects(config: DetectionConfig) -> CountWindowRule[OrderError]:
    """More than ``order_rejects_max`` order errors of kind ``reject`` in any window."""
    return CountWindowRule(
        name="order_rejects",
        topic="order_errors",
        reason=ReasonCode.ORDER_REJECTS,
        what="order rejects",
        config=config,
        max_field="order_rejects_max",
        window_field="order_rejects_window_sec",
        accept=_is_reject,
    )


def execution_errors(config: DetectionConfig) -> CountWindowRule[OrderError]:
    """More than ``execution_errors_max`` order errors of kind ``error`` or ``timeout``."""
    return CountWindowRule(
        name="execution_errors",
        topic="order_errors",
        reason=ReasonCode.EXECUTION_ERRORS,
        what="execution errors (error/timeout)",
        config=config,
        max_field="execution_errors_max",
        window_field="execution_errors_window_sec",
        accept=_is_execution_error,
    )


# --------------------------------------------------------------------------- order size


class OrderSizeRule(StateCodec):
    """``position_size_anomaly`` for one order: quantity or notional above the account's
    limits. The notional is the order's own ``notional``, or ``qty * price`` when that is 0
    (a producer that does not compute it must not disable the check)."""

    name = "order_size"
    topic = "orders"
    reason = ReasonCode.POSITION_SIZE_ANOMALY
    state_type = LatchState

    def __init__(self, config: DetectionConfig) -> None:
        def limits(lim: AccountLimits) -> tuple[float | None, float | None]:
            return lim.max_order_qty, lim.max_order_notional

        self._default = limits(config.account)
        self._overrides = {
            account: limits(config.limits_for(account)) for account in config.account_overrides
        }

    def key(self, record: OrderSubmitted) -> str:
        """The account."""
        return record.account_id

    def initial(self) -> LatchState:
        """Armed, nothing seen."""
        return EMPTY_LATCH

    def step(
        self, state: LatchState, record: OrderSubmitted, coords: Coordinates, ctx: Context
    ) -> tuple[LatchState, Detection | None]:
        """Fire on the first order beyond a limit (per account and epoch)."""
        new, armed = latch_gate(state, to_us(record.ts), ctx)
        if not armed:
            return new, None
        max_qty, max_notional = self._overrides.get(record.account_id, self._default)
        qty = record.qty
        notional = record.notional or qty * record.price
        if max_qty is not None and qty > max_qty:
            why = f"quantity {qty:g} above limit {max_qty:g}"
        elif max_notional is not None and notional > max_notional:
            why = f"notional {notional:,.2f} above limit {max_notional:,.2f}"
        else:
            return new, None
        detail = (
            f"order {record.event_id} of account {record.account_id} on {record.venue} "
            f"{record.side} {qty:g} {record.symbol} @ {record.price:g}: {why}"
        )
        return fire_latch(new), detection(
            self.name, self.reason, record.account_id, detail, (coords, record.ts)
        )

    def tick(
        self, state: LatchState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[LatchState, Detection | None]:
        """Not a silence rule."""
        return state, None


# --------------------------------------------------------------------------- position size


@dataclass(frozen=True, slots=True)
class PositionState:
    """Net position of one account in one symbol, from its fills.

    ``net`` is signed (buys minus sells). There is no position snapshot input, so it starts
    at 0 when ESS first sees the key, and again at every reset: while ACTIVE, ESS closes
    every position and keeps it flat until the reset (contract, behaviour 2), and the
    flattening orders need not appear on ``ess.fills``, so the pre-reset sum would be stale.
    Fills at or before ``floor`` (the newest fill time seen before the reset) belong to the
    flattened past and are ignored. The sum is order-independent; ``price`` is the price of
    the newest fill by event time (``price_ts``), used for the notional. ``ids`` are the
    most recent fill ids (bounded by ``position_dedupe_ids``): a running sum has no window
    to dedupe against, and redeliveries come soon after the original.
    """

    epoch: int = 0
    fired: bool = False
    newest: int | None = None
    floor: int | None = None
    net: float = 0.0
    price: float = 0.0
    price_ts: int | None = None
    ids: tuple[str, ...] = ()


_EMPTY_POSITION = PositionState()


class PositionSizeRule(StateCodec):
    """``position_size_anomaly`` for the net position per account and symbol (from fills):
    absolute quantity or notional (``|net| * price of the newest fill``) above the limits."""

    name = "position_size"
    topic = "fills"
    reason = ReasonCode.POSITION_SIZE_ANOMALY
    state_type = PositionState

    def __init__(self, config: DetectionConfig) -> None:
        def limits(lim: AccountLimits) -> tuple[float | None, float | None]:
            return lim.max_position_qty, lim.max_position_notional

        self._default = limits(config.account)
        self._overrides = {
            account: limits(config.limits_for(account)) for account in config.account_overrides
        }
        self._keep = config.position_dedupe_ids

    def key(self, record: Fill) -> str:
        """``account|symbol``."""
        return compound_key(record.account_id, record.symbol)

    def initial(self) -> PositionState:
        """Flat, nothing seen."""
        return _EMPTY_POSITION

    def step(
        self, state: PositionState, record: Fill, coords: Coordinates, ctx: Context
    ) -> tuple[PositionState, Detection | None]:
        """Add the fill to the net position; fire when it exceeds a limit."""
        event_id = record.event_id
        moment = to_us(record.ts)
        epoch, fired, newest, floor = state.epoch, state.fired, state.newest, state.floor
        net, price, price_ts, ids = state.net, state.price, state.price_ts, state.ids
        if ctx.epoch > epoch:
            # Flat at the reset (see PositionState); older fills are the flattened past.
            epoch, fired, floor, net, price, price_ts = ctx.epoch, False, newest, 0.0, 0.0, None
        if newest is None or moment > newest:
            newest = moment
        if event_id in ids or (floor is not None and moment <= floor):
            if epoch == state.epoch and newest == state.newest:
                return state, None
            return PositionState(epoch, fired, newest, floor, net, price, price_ts, ids), None
        qty = record.qty
        net = net + qty if record.side is Side.BUY else net - qty
        if price_ts is None or moment >= price_ts:
            price, price_ts = record.price, moment
        ids = (*ids[1:], event_id) if len(ids) >= self._keep else (*ids, event_id)
        if fired:
            return PositionState(epoch, True, newest, floor, net, price, price_ts, ids), None
        max_qty, max_notional = self._overrides.get(record.account_id, self._default)
        size = abs(net)
        notional = size * price
        if max_qty is not None and size > max_qty:
            why = f"net quantity {net:g} beyond limit {max_qty:g}"
        elif max_notional is not None and notional > max_notional:
            why = (
                f"net notional {notional:,.2f} (qty {net:g} @ {price:g}) above {max_notional:,.2f}"
            )
        else:
            return PositionState(epoch, False, newest, floor, net, price, price_ts, ids), None
        key = self.key(record)
        detail = f"position of account {record.account_id} in {record.symbol}: {why}"
        return PositionState(epoch, True, newest, floor, net, price, price_ts, ids), detection(
            self.name, self.reason, key, detail, (coords, record.ts)
        )

    def tick(
        self, state: PositionState, key: str, watermark: datetime, ctx: Context
    ) -> tuple[PositionState, Detection | None]:
        """Not a silence rule."""
        return state, None
