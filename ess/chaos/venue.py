"""Venue fault campaign: flatten a realistic book while every simulator fault kind fires.

One *run* is: a fresh, seeded :class:`~ess.sim.ExchangeSimulator` (rate-limit windows of 1 s, so
a 429 or 418 says ``Retry-After: 1``); one account holding futures positions with regular and
conditional orders, and spot balances with resting sells (the demo book plus generated
markets); every fault kind of :mod:`ess.sim.faults` armed at once on the endpoints it applies
to; then the real executor engine (:func:`~ess.roles.execute.engine.enforce_all` over the
account's futures and spot books, through ccxt over HTTP) enforces an activation until the run
is flat or its deadline passes. Runs take turns over the three simulator families
(:data:`FAMILIES`): Binance (USD-M and spot through :class:`~ess.venues.binance.BinanceVenue`),
Bybit v5 and OKX v5 (linear/swap and spot through the generic
:class:`~ess.venues.generic.CcxtVenue`), each with its own exchange's paths, signing, error
codes and rate-limit answers; ``by_family`` has each family's figures.

What "30 % fault rate" means. The simulator matches faults in order, each with its own
probability, and the first one that fires wins. Arming 14 kinds at 0.3 each would fault 99 %
of requests; instead the per-fault probabilities are chosen so that a request to an endpoint
meets *some* fault with probability :data:`FAULT_RATE`, each kind applicable to that endpoint
equally likely (see :func:`_spread`). The two kinds that act *inside* the exchange are drawn
separately, also at :data:`FAULT_RATE`: ``partial_fill`` on every order placement and
``late_fill`` on every cancel (the orders leave the book and fill ``delay_s`` later).

Figures (``run_campaign``):

* ``runs``; ``flat_within_deadline``: runs that ended flat, i.e. every venue's flattener in
  phase ``FLAT`` (it read the venue back as flat) *and* the simulator's own books flat (no
  futures position, no open order in either book, no spot balance but the quote), holding for
  :data:`SETTLE_S` so that a late fill or a slow close still in flight would have shown up;
  ``not_flat``: runs that did not get there within ``deadline_s`` (must be 0).
* ``positions_flipped``: fills of ESS's closes that took a futures position through zero (or
  opened one), found by replaying every fill of the run from the seeded positions (must be 0:
  closes are reduce-only). ``late_fill_flips``: the same done by late fills (the market
  filling an order the venue had reported cancelled): not ESS's doing, shown for context.
* ``time_to_flat_s``: ``{p50, p99, max}`` (nearest rank) over the runs that ended flat, from
  the start of the activation to the moment the flat state that lasted began.
* ``faults_fired``: fault hits by kind, summed over all runs; ``fault_rate``; ``deadline_s``;
  ``duration_s``: wall time of the whole campaign.

Multi-entry runs. The executor service (:class:`~ess.roles.execute.service.Executor`, over the same
faulty simulator and adapters) is handed a signed state log several entries per fetch, the way
its follower hands it a fetch: through its verified reader (``_reader.feed`` then
``_apply``), with no broker. A run's fetches come from :data:`MULTI_SCENARIOS` (``T`` a trip,
``R`` a reset; e.g. ``TRT``: trip, reset and trip in one fetch; ``T`` then ``RT``: a reset and
the next activation together while the first flatten is under way, ``!RT`` while it is still
opening the venue) or are drawn from the seed (two to four fetches of two to five entries,
resets included where they are refused, a third of the later fetches at once). Before
every fetch after the first the account trades again (fresh positions and an order), so a
later activation has something of its own to flatten. After every fetch, and while the event
loop runs the executor's own tasks, the invariant must hold: ACTIVE means an enforcement of the
current activation is running (not stopped, not ended); INACTIVE means none. At the end: the
executor's folded state is the log's; every enforcement of an earlier activation has ended;
ACTIVE means every venue verified flat (and the simulator's books flat) for ``SETTLE_S``
within ``deadline_s``. The executor's watchdog is not running, so nothing repairs a lapse.

* ``multi_entry_runs``, ``multi_entry_scenarios``; ``multi_entry_entries``: state entries
  delivered; ``multi_entry_max_per_fetch``; ``multi_entry_active_at_end``.
* ``multi_entry_lapses``: invariant checks that failed, earlier enforcements still running at
  the end, and runs whose folded state differs from the log's (must be 0).
* ``multi_entry_not_flat``: runs ACTIVE at the end but not flat within the deadline (must be
  0). ``multi_entry_time_to_flat_s``: ``{p50, p99, max}`` from the last fetch to the lasting
  flat state, over the runs ACTIVE at the end. ``multi_entry_examples``: the first lapses and
  not-flat runs, with each venue's phase and rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from loguru import logger
from pydantic import SecretStr

from ess.chaos.support import percentile, rounded
from ess.clock import SystemClock
from ess.core import INITIAL_STATE, Activation, EssState, ResetPolicy, decide, evolve
from ess.core.attestation import SigningKey, trusted_keys
from ess.core.reader import RawRecord, Trust, digest, seal_entry
from ess.core.signing import generate_private_key, public_bytes, sign_reset
from ess.roles.execute.engine import Phase, VenueFlattener, enforce_all
from ess.roles.execute.service import Executor
from ess.settings import ExecuteSettings
from ess.sim import ExchangeSimulator, FaultKind, Market, RateLimits, Venue, default_markets
from ess.sim.demo import seed_demo_book, seed_many
from ess.sim.families.bybit import BybitFamily
from ess.sim.families.okx import ENDPOINT_LIMITS, OkxFamily
from ess.venues.binance import BinanceVenue
from ess.venues.budget import RateBudget
from ess.venues.config import VenueConfig, VenueCredentials
from ess.venues.generic import CcxtVenue
from ess.venues.ports import VenuePort
from schemas import (
    ActionReport,
    ReasonCode,
    ResetCommand,
    TopicRegistry,
    TripCommand,
    topic_registry,
)

__all__ = ["FAILURES", "FAULT_RATE", "MULTI_SCENARIOS", "fast_simulator", "run_campaign"]

#: Figures that must be 0.
FAILURES: Final = ("not_flat", "positions_flipped", "multi_entry_lapses", "multi_entry_not_flat")

#: Probability that a request meets a fault (and, separately, that an order fills partially
#: and that a cancel turns into a late fill).
FAULT_RATE: Final = 0.3
#: Per-run deadline: a run not flat by then counts in ``not_flat``.
DEADLINE_S: Final = 30.0
#: How long the flat state must hold before a run counts as flat: longer than every delayed
#: effect below (a late fill, a slow close), so none of them can land after the verdict.
SETTLE_S: Final = 1.0
#: ``late_fill``: the cancelled orders fill this long after the cancel answered.
LATE_FILL_DELAY_S: Final = 0.2
#: ``hang``: the answer comes (and the request is executed) only after this long, beyond the
#: client's timeout, so the client has given up on a request that still executes.
HANG_DELAY_S: Final = 0.5
#: Runs in flight at once (each with its own simulator, adapters and budgets).
CONCURRENCY: Final = 6
#: The adapters' per-request timeout.
TIMEOUT_MS: Final = 300

_API_KEY: Final = "chaos-venue-key"
_SECRET: Final = "chaos-venue-secret"  # noqa: S105 - a simulator-only credential
_PASSPHRASE: Final = "chaos-venue-pass"  # noqa: S105 - a simulator-only credential
_ACCOUNT: Final = "chaos"
_QUOTE: Final = "USDT"
_EXTRA_FUTURES: Final = 5
_EXTRA_SPOT: Final = 3

#: Short backoffs, as in the executor's simulator tests; the deadline for "stalled" reports is
#: shorter than the run's so the campaign also exercises the stall watchdog.
SETTINGS: Final = ExecuteSettings(
    flatten_deadline_sec=5.0,
    stalled_report_interval_sec=1.0,
    enforce_interval_sec=0.05,
    backoff_initial_sec=0.01,
    backoff_max_sec=0.2,
    status_port=-1,
)

#: Kinds that stand in for (or mangle) the exchange's answer on any endpoint.
_ANYWHERE: Final = (
    FaultKind.HTTP_429,
    FaultKind.HTTP_418,
    FaultKind.HTTP_500,
    FaultKind.HTTP_502,
    FaultKind.HTTP_503,
    FaultKind.RATE_LIMIT_CODE,
    FaultKind.HANG,
    FaultKind.EXEC_THEN_HANG,
    FaultKind.EMPTY,
    FaultKind.BAD_JSON,
    FaultKind.INVALID_KEY,
    FaultKind.ERROR,
)


@dataclass(frozen=True)
class _Endpoints:
    """A group of endpoints and the kinds that apply to it (``params``: only requests
    carrying these, e.g. the derivatives category of an order route shared with spot)."""

    method: str
    paths: tuple[str, ...]
    kinds: tuple[FaultKind, ...]
    inside: FaultKind | None = None  # partial_fill or late_fill, drawn separately
    params: tuple[tuple[str, str], ...] = ()


#: The endpoint groups of each simulator family (their paths never overlap, so arming every
#: family's faults at once leaves each client only its own exchange's).
_GROUPS: Final[dict[str, tuple[_Endpoints, ...]]] = {
    "binance": (
        # Reads: positions, account, open orders of both books, exchangeInfo.
        _Endpoints("GET", ("/fapi/*", "/dapi/*", "/api/v3/*"), _ANYWHERE),
        # Cancels; -2011 on a cancel reads as "nothing was open": a lie the next read must
        # catch.
        _Endpoints(
            "DELETE",
            (
                "/fapi/v1/allOpenOrders",
                "/fapi/v1/algoOpenOrders",
                "/dapi/v1/allOpenOrders",
                "/dapi/v1/algoOpenOrders",
                "/api/v3/openOrders",
            ),
            (*_ANYWHERE, FaultKind.UNKNOWN_ORDER),
            inside=FaultKind.LATE_FILL,
        ),
        # Closes; -2022 only where reduce-only exists.
        _Endpoints(
            "POST",
            ("/fapi/v1/order", "/dapi/v1/order"),
            (*_ANYWHERE, FaultKind.REDUCE_ONLY_REJECTED),
            inside=FaultKind.PARTIAL_FILL,
        ),
        _Endpoints("POST", ("/api/v3/order",), _ANYWHERE, inside=FaultKind.PARTIAL_FILL),
    ),
    "bybit": (
        _Endpoints("GET", ("/v5/*",), _ANYWHERE),
        _Endpoints(
            "POST",
            ("/v5/order/cancel-all", "/v5/order/cancel", "/v5/order/cancel-batch"),
            (*_ANYWHERE, FaultKind.UNKNOWN_ORDER),
            inside=FaultKind.LATE_FILL,
        ),
        _Endpoints(
            "POST",
            ("/v5/order/create",),
            (*_ANYWHERE, FaultKind.REDUCE_ONLY_REJECTED),
            inside=FaultKind.PARTIAL_FILL,
            params=(("category", "linear"),),
        ),
        _Endpoints(
            "POST",
            ("/v5/order/create",),
            _ANYWHERE,
            inside=FaultKind.PARTIAL_FILL,
            params=(("category", "spot"),),
        ),
    ),
    "okx": (
        _Endpoints("GET", ("/api/v5/*",), _ANYWHERE),
        _Endpoints(
            "POST",
            (
                "/api/v5/trade/cancel-batch-orders",
                "/api/v5/trade/cancel-order",
                "/api/v5/trade/cancel-algos",
            ),
            (*_ANYWHERE, FaultKind.UNKNOWN_ORDER),
            inside=FaultKind.LATE_FILL,
        ),
        _Endpoints(
            "POST",
            # ccxt places single orders through batch-orders too.
            ("/api/v5/trade/order", "/api/v5/trade/batch-orders"),
            (*_ANYWHERE, FaultKind.REDUCE_ONLY_REJECTED),
            inside=FaultKind.PARTIAL_FILL,
            params=(("tdMode", "cross"),),
        ),
        _Endpoints(
            "POST",
            # ccxt places single orders through batch-orders too.
            ("/api/v5/trade/order", "/api/v5/trade/batch-orders"),
            _ANYWHERE,
            inside=FaultKind.PARTIAL_FILL,
            params=(("tdMode", "cash"),),
        ),
    ),
}
#: The families the campaign flattens through, and how: Binance through its tuned adapter,
#: the others through the generic ccxt adapter (as a venues file with ``adapter = "auto"``).
FAMILIES: Final = ("binance", "bybit", "okx")
_EXCHANGE_IDS: Final[dict[str, tuple[str, str]]] = {
    "binance": ("binanceusdm", "binance"),
    "bybit": ("bybit", "bybit"),
    "okx": ("okx", "okx"),
}


def _spread(rate: float, count: int) -> list[float]:
    """Probabilities for ``count`` faults matched in order (first to fire wins) so that each
    fires on a share ``rate / count`` of requests and some fault on a share ``rate``.

    With ``q = rate / count``, fault ``i`` is reached when none of the ``i`` before fired,
    which happens with probability ``1 - i*q`` (telescoping product), so it needs
    ``q / (1 - i*q)``.
    """
    share = rate / count
    return [share / (1 - index * share) for index in range(count)]


def arm_faults(sim: ExchangeSimulator, rate: float = FAULT_RATE) -> None:
    """Every fault kind, forever, on the endpoints it applies to in every family, at ``rate``
    (see module)."""
    for groups in _GROUPS.values():
        for group in groups:
            _arm_group(sim, group, rate)


def _arm_group(sim: ExchangeSimulator, group: _Endpoints, rate: float) -> None:
    params = dict(group.params)
    for path in group.paths:
        for kind, probability in zip(group.kinds, _spread(rate, len(group.kinds)), strict=True):
            extra: dict[str, Any] = {}
            if kind is FaultKind.HANG:
                extra["delay_s"] = HANG_DELAY_S
            sim.add_fault(
                group.method,
                path,
                kind,
                times=None,
                probability=probability,
                params=params,
                **extra,
            )
        if group.inside is not None:
            extra = {"delay_s": LATE_FILL_DELAY_S} if group.inside is FaultKind.LATE_FILL else {}
            sim.add_fault(
                group.method,
                path,
                group.inside,
                times=None,
                probability=rate,
                params=params,
                **extra,
            )


def seed_book(sim: ExchangeSimulator, account: str, seed: int) -> dict[str, Decimal]:
    """The demo book (BTC/ETH/SOL positions, a limit buy, a reduce-only buy, a reduce-only
    stop in the algo book; spot BTC and ETH with a resting sell) plus generated futures
    positions and spot balances with resting orders. Returns the futures positions."""
    sim.seed_balance(account, "BTC", "0.2")
    sim.seed_balance(account, "ETH", "1.5")
    seed_demo_book(sim, account)
    seed_many(sim, account, futures=_EXTRA_FUTURES, spot=_EXTRA_SPOT, seed=seed)
    return {symbol: position.qty for symbol, position in sim.positions(account).items()}


def really_flat(sim: ExchangeSimulator, account: str) -> bool:
    """The simulator's own books, not what any client read: no position (either mode), no
    open order in either book, no spot balance but the quote currency."""
    if sim.positions(account) or sim.hedge_positions(account) or sim.open_orders(account):
        return False
    state = sim.account(account)
    assets = set(state.spot_free) | set(state.spot_locked)
    return all(sum(sim.spot_balance(account, a)) == 0 for a in assets if a != _QUOTE)


def count_flips(sim: ExchangeSimulator, account: str, start: dict[str, Decimal]) -> tuple[int, int]:
    """Futures fills that took a position through zero (or opened one from flat), replaying
    every fill of the run: ``(by ESS's closes, by late fills)``.

    Only late fills fill a resting order in this campaign, so every other futures fill is one
    of ESS's reduce-only closes. A late fill is the market trading against an order the venue
    said it had cancelled: it may open or flip a position without ESS doing anything wrong
    (the engine must then close that too), so it is counted apart.
    """
    running = dict(start)
    ours = late = 0
    for fill in sim.fills(account):
        if fill.venue is not Venue.FUTURES:
            continue
        before = running.get(fill.symbol, Decimal(0))
        after = before + (fill.qty if fill.side == "BUY" else -fill.qty)
        if before * after < 0 or (before == 0 and after != 0):
            if fill.late:
                late += 1
            else:
                ours += 1
        running[fill.symbol] = after
    return ours, late


@dataclass(frozen=True)
class RunResult:
    """One run: seconds to a lasting flat state (``None``: not within the deadline)."""

    time_to_flat_s: float | None
    flips: int
    late_fill_flips: int
    faults: dict[str, int]
    reports: int
    family: str = "binance"


def _activation(seed: int) -> Activation:
    return Activation(
        seq=seed,
        command_id=f"chaos-venue-{seed}",
        reason=ReasonCode.MANUAL,
        detail="venue fault campaign",
        source="operator:chaos",
        trigger=None,
        ts=datetime.now(UTC),
    )


def _venue(sim: ExchangeSimulator, exchange: str, market: str = "") -> VenuePort:
    """The adapter a venues file naming ``exchange`` (and ``market``) gets: the Binance
    adapter for Binance's ids, the generic ccxt adapter for the others."""
    generic = exchange not in {"binanceusdm", "binance"}
    config = VenueConfig.model_validate(
        {
            "name": f"chaos-{exchange}-{market}" if market else f"chaos-{exchange}",
            "exchange": exchange,
            "account": _ACCOUNT,
            "base_url": sim.url,
            # The generic adapter's futures read is two requests (ccxt's position and market
            # reads): 300 ms each is too tight for both on a busy 2-core machine.
            "timeout_ms": TIMEOUT_MS * 3 if generic else TIMEOUT_MS,
            **({"market": market} if market else {}),
        }
    )
    credentials = VenueCredentials(
        api_key=SecretStr(_API_KEY), secret=SecretStr(_SECRET), passphrase=SecretStr(_PASSPHRASE)
    )
    # The simulator counts weight over 1 s windows (so a 429 costs 1 s, not a minute); the
    # client budget keeps its per-window figures over the same 1 s, or it would throttle a
    # run with many retries to a handful of reads per minute.
    budget = RateBudget(
        config.weight_per_minute,
        config.orders_per_10s,
        config.max_in_flight,
        weight_window_s=1.0,
        orders_window_s=1.0,
    )
    if generic:
        return CcxtVenue(config, credentials, budget=budget)
    return BinanceVenue(config, credentials, budget=budget)


def _venues(sim: ExchangeSimulator, family: str) -> list[VenuePort]:
    """The family's futures and spot books."""
    if family == "binance":
        return [_venue(sim, "binanceusdm"), _venue(sim, "binance")]
    futures, spot = _EXCHANGE_IDS[family]
    return [_venue(sim, futures, "futures"), _venue(sim, spot, "spot")]


def _add_account(sim: ExchangeSimulator) -> str:
    return sim.add_account(
        _API_KEY, _SECRET, name=_ACCOUNT, spot={_QUOTE: "1000"}, passphrase=_PASSPHRASE
    )


#: Binance's budgets over 1 s windows, so a 429/418 says ``Retry-After: 1``.
_BINANCE_LIMITS: Final[Mapping[Venue, RateLimits]] = {
    Venue.FUTURES: RateLimits(weight_window_s=1.0, orders_10s_window_s=1.0),
    Venue.SPOT: RateLimits(weight_per_window=6000, weight_window_s=1.0, orders_per_minute=None),
    Venue.COINM: RateLimits(weight_window_s=1.0, orders_per_10s=None),
}


def fast_simulator(*, markets: Iterable[Market], seed: int) -> ExchangeSimulator:
    """A seeded simulator (not started) whose budgets suit an engine re-reading every 50 ms:
    Binance's and Bybit's published budgets over 1 s windows (a 429 costs a second, not a
    minute), OKX's per-endpoint limits x 50 over 1 s (its real ones allow 10 position or
    balance reads per 2 s). Rate limiting itself is still exercised by the 429/418 faults,
    and at each exchange's real limits by the simulator's own tests (``tests/sim``)."""
    bybit = {
        venue: dataclasses.replace(rule, weight_window_s=1.0)
        for venue, rule in BybitFamily.default_limits.items()
    }
    simulator = ExchangeSimulator(
        markets=markets,
        rate_limits=_BINANCE_LIMITS,
        family_limits={BybitFamily.name: bybit},
        seed=seed,
    )
    okx = simulator.family(OkxFamily.name)
    okx.limiter = OkxFamily.make_limiter(
        endpoint_limits={
            key: dataclasses.replace(rule, count=rule.count * 50, window_s=1.0)
            for key, rule in ENDPOINT_LIMITS.items()
        }
    )
    return simulator


def _simulator(seed: int) -> ExchangeSimulator:
    return fast_simulator(
        markets=default_markets(extra_futures=_EXTRA_FUTURES, extra_spot=_EXTRA_SPOT), seed=seed
    )


async def run_once(
    seed: int, *, family: str = "binance", deadline_s: float = DEADLINE_S
) -> RunResult:
    """One run through ``family`` (see the module docstring), cleaned up whatever happens."""
    sim = _simulator(seed)
    await sim.start()
    venues: list[VenuePort] = []
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    reports: list[ActionReport] = []
    try:
        account = _add_account(sim)
        start_book = seed_book(sim, account, seed)
        arm_faults(sim)
        venues = _venues(sim, family)
        flatteners = [
            VenueFlattener(venue, SETTINGS, clock=SystemClock(), report=reports.append)
            for venue in venues
        ]
        started = time.monotonic()
        task = asyncio.create_task(enforce_all(flatteners, _activation(seed), stop))
        flat_since: float | None = None
        result_time: float | None = None
        while True:
            now = time.monotonic()
            flat = all(f.progress.phase is Phase.FLAT for f in flatteners) and really_flat(
                sim, account
            )
            if not flat:
                flat_since = None
            elif flat_since is None:
                flat_since = now
            elif now - flat_since >= SETTLE_S:
                result_time = flat_since - started
                break
            # A flat state that began by the deadline may finish settling after it.
            if now - started > deadline_s and flat_since is None:
                break
            await asyncio.sleep(0.02)
        flips, late_flips = count_flips(sim, account, start_book)
        return RunResult(
            time_to_flat_s=result_time,
            flips=flips,
            late_fill_flips=late_flips,
            faults=_fault_hits(sim),
            reports=len(reports),
            family=family,
        )
    finally:
        stop.set()
        if task is not None:
            try:
                async with asyncio.timeout(10.0):
                    await task
            except TimeoutError:
                logger.error("venue campaign: enforce_all did not stop within 10 s")
        for venue in venues:
            await venue.aclose()
        await sim.stop()


# --------------------------------------------------------------------------- multi-entry runs

#: Fixed multi-entry runs: the fetches, each a string of entries (``T`` trip, ``R`` reset); a
#: fetch marked ``!`` lands at once after the previous one (its flatten has barely started:
#: the venue is still being opened), the others :data:`BETWEEN_FETCHES_S` later.
MULTI_SCENARIOS: Final[dict[str, tuple[str, ...]]] = {
    "trip_reset_trip": ("TRT",),
    "trip_reset": ("TR",),
    "then_reset_trip": ("T", "RT"),
    "then_reset_trip_at_once": ("T", "!RT"),
    "then_reset_trip_reset": ("T", "RTR"),
    "trips_and_resets": ("TTRTT", "RTRT"),
}
#: Between fetches: how long the previous one's flatten runs before the next fetch lands.
BETWEEN_FETCHES_S: Final = 0.3
#: A fetch marked ``!``: a few event-loop turns, less than any venue round trip.
AT_ONCE_S: Final = 0.005
#: How long an enforcement a fetch ended may take to finish stopping.
ENDED_WITHIN_S: Final = 10.0
_OPERATOR: Final = "chaos-venue-operator"


class SignedLog:
    """A state log as the command processor writes it: trips and resets decided by the real
    core, each entry chained and sealed with a processor key of this log; resets signed by
    this log's operator for the activation they clear."""

    def __init__(self, registry: TopicRegistry) -> None:
        self.scope = registry.state.name
        self._processor = SigningKey(generate_private_key())
        self._operator = generate_private_key()
        self._policy = ResetPolicy(operators={_OPERATOR: public_bytes(self._operator)})
        self.state: EssState = INITIAL_STATE
        self._head: str | None = None
        self.values: list[bytes] = []

    def trust(self) -> Trust:
        """What the executor trusts: this log's processor and operator keys."""
        return Trust(
            scope=self.scope,
            processor_keys=trusted_keys([self._processor.public]),
            operator_keys={_OPERATOR: public_bytes(self._operator)},
        )

    def add(self, operation: str) -> None:
        """Append what the processor appends for a trip (``T``) or a reset (``R``; refused,
        and recorded as such, while INACTIVE)."""
        now = datetime.now(UTC)
        nonce = secrets.token_hex(8)
        command: TripCommand | ResetCommand
        if operation == "T":
            command = TripCommand(
                command_id=f"chaos-trip-{nonce}",
                reason=ReasonCode.MANUAL,
                detail="venue campaign multi-entry trip",
                source="operator:chaos",
                ts=now,
            )
        else:
            activation = self.state.activation
            command = sign_reset(
                self._operator,
                command_id=f"chaos-reset-{nonce}",
                operator=_OPERATOR,
                ts=now,
                nonce=nonce,
                activation_seq=activation.seq if activation else None,
                activation_command_id=activation.command_id if activation else None,
            )
        for entry in decide(self.state, command, now=now, policy=self._policy):
            sealed, value = seal_entry(entry, self._processor, scope=self.scope, prev=self._head)
            self.state = evolve(self.state, sealed)
            self._head = digest(value)
            self.values.append(value)

    def records(self, start: int) -> list[RawRecord]:
        return [RawRecord(offset, self.values[offset]) for offset in range(start, len(self.values))]


def _holds(executor: Executor) -> bool:
    """The executor's invariant right now: ACTIVE means an enforcement of the current
    activation is running; INACTIVE means none."""
    state, current = executor.state, executor._enforcement
    if state.active:
        return (
            current is not None
            and state.activation is not None
            and current.activation.seq == state.activation.seq
            and not current.stop.is_set()
            and not current.task.done()
        )
    return current is None


def random_fetches(rng: random.Random) -> tuple[str, ...]:
    """Two to four fetches of two to five entries, trips and resets alike; a later fetch
    lands at once (``!``) one time in three."""
    fetches = []
    for number in range(rng.randint(2, 4)):
        mark = "!" if number and rng.random() < 1 / 3 else ""
        fetches.append(mark + "".join(rng.choice("TR") for _ in range(rng.randint(2, 5))))
    return tuple(fetches)


def _trade_again(sim: ExchangeSimulator, account: str, round_: int) -> None:
    """The account trades while the log is in flight: positions and a resting order."""
    sim.seed_position(account, "BTCUSDT", "0.05" if round_ % 2 else "-0.04", "60000")
    sim.seed_position(account, "ETHUSDT", str(Decimal("0.5") + round_), "3000")
    sim.seed_order(account, "SOLUSDT", "BUY", "1", "90")


@dataclass(frozen=True)
class MultiResult:
    """One multi-entry run."""

    scenario: str
    entries: int
    max_per_fetch: int
    lapses: int
    active: bool
    time_to_flat_s: float | None
    examples: tuple[str, ...]


async def run_multi(
    seed: int, scenario: str, fetches: Sequence[str], *, deadline_s: float = DEADLINE_S
) -> MultiResult:
    """One multi-entry run (see the module docstring), cleaned up whatever happens."""
    sim = _simulator(seed)
    await sim.start()
    venues: list[VenuePort] = []
    executor: Executor | None = None
    try:
        account = _add_account(sim)
        seed_book(sim, account, seed)
        arm_faults(sim)
        venues = _venues(sim, "binance")
        registry = topic_registry(f"chaos-venue-{seed}")
        log = SignedLog(registry)
        executor = Executor(
            "unused:9092", registry, venues, SETTINGS, trust=log.trust(), clock=SystemClock()
        )
        lapses, seen = await _deliver(executor, log, sim, account, fetches)
        landed = time.monotonic()
        await _bounded_gather(executor._background)
        if (executor.state.active, executor.state.activation) != (
            log.state.active,
            log.state.activation,
        ):
            lapses.append("folded state differs from the log's")
        for earlier in seen:
            if earlier is not executor._enforcement and not await _ended(earlier.task):
                lapses.append(f"enforcement of seq {earlier.activation.seq} still running")
        flat_after: float | None = None
        notes = [f"{scenario} {list(fetches)}: {what}" for what in lapses[:3]]
        if log.state.active:
            flat_after = await _lasting_flat(sim, account, executor, landed, deadline_s)
            if flat_after is None:
                notes += [
                    f"{scenario} {list(fetches)}: not flat; {p.venue} phase {p.phase.value}, "
                    f"{p.rounds} rounds for seq {p.activation_seq}"
                    for p in (f.progress for f in executor.flatteners)
                ]
        if not _holds(executor):
            lapses.append("at the end")
        return MultiResult(
            scenario=scenario,
            entries=len(log.values),
            max_per_fetch=max(len(fetch.lstrip("!")) for fetch in fetches),
            lapses=len(lapses),
            active=log.state.active,
            time_to_flat_s=flat_after,
            examples=tuple(notes),
        )
    finally:
        if executor is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10.0):
                    await executor._stop_enforcement("campaign over")
            await _bounded_gather(executor._background)
        for venue in venues:
            await venue.aclose()
        await sim.stop()


async def _deliver(
    executor: Executor,
    log: SignedLog,
    sim: ExchangeSimulator,
    account: str,
    fetches: Sequence[str],
) -> tuple[list[str], list[Any]]:
    """Hand the executor each fetch as its follower would, checking the invariant after it
    and while the executor's own tasks run. Returns the lapses and every enforcement seen."""
    lapses: list[str] = []
    seen: list[Any] = []
    delivered = 0
    for number, fetch in enumerate(fetches):
        if number:
            # The previous flatten is under way (or, at once, still opening the venue).
            await asyncio.sleep(AT_ONCE_S if fetch.startswith("!") else BETWEEN_FETCHES_S)
            _trade_again(sim, account, number)
        for operation in fetch.lstrip("!"):
            log.add(operation)
        records = log.records(delivered)
        delivered = len(log.values)
        executor._reader.feed(records)
        executor._apply()
        if executor._enforcement is not None:
            seen.append(executor._enforcement)
        if not _holds(executor):
            lapses.append(f"after fetch {number} ({fetch})")
        for turn in range(3):  # the executor's own tasks (a reset's stop) run
            await asyncio.sleep(0)
            if not _holds(executor):
                lapses.append(f"turn {turn} after fetch {number} ({fetch})")
    return lapses, seen


async def _bounded_gather(tasks: set[asyncio.Task[None]]) -> None:
    if tasks:
        await asyncio.wait(set(tasks), timeout=ENDED_WITHIN_S)


async def _ended(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` ends within :data:`ENDED_WITHIN_S`."""
    done, _ = await asyncio.wait({task}, timeout=ENDED_WITHIN_S)
    return bool(done)


async def _lasting_flat(
    sim: ExchangeSimulator, account: str, executor: Executor, since: float, deadline_s: float
) -> float | None:
    """Seconds from ``since`` to a flat state that lasted ``SETTLE_S`` (every venue verified
    flat for the current activation, the simulator's books flat), or ``None``."""
    activation = executor.state.activation
    seq = activation.seq if activation else None
    flat_since: float | None = None
    while True:
        now = time.monotonic()
        flat = all(
            f.progress.phase is Phase.FLAT and f.progress.activation_seq == seq
            for f in executor.flatteners
        ) and really_flat(sim, account)
        if not flat:
            flat_since = None
        elif flat_since is None:
            flat_since = now
        elif now - flat_since >= SETTLE_S:
            return flat_since - since
        if now - since > deadline_s and flat_since is None:
            return None
        await asyncio.sleep(0.02)


def _fault_hits(sim: ExchangeSimulator) -> dict[str, int]:
    hits: Counter[str] = Counter()
    for fault in sim.faults:
        hits[fault.kind.value] += fault.hits
    return dict(hits)


def _family_figures(results: Sequence[RunResult], family: str) -> dict[str, Any]:
    """The single-activation figures of the runs through ``family``."""
    mine = [r for r in results if r.family == family]
    times = [r.time_to_flat_s for r in mine if r.time_to_flat_s is not None]
    return {
        "runs": len(mine),
        "not_flat": len(mine) - len(times),
        "positions_flipped": sum(r.flips for r in mine),
        "faults_fired": sum(sum(r.faults.values()) for r in mine),
        "time_to_flat_s": {
            "p50": rounded(percentile(times, 0.5)),
            "max": rounded(max(times, default=None)),
        },
    }


async def run_campaign(*, quick: bool, seed: int = 0) -> dict[str, Any]:
    """Run the campaign (quick: 3 runs, and one multi-entry run per scenario plus one drawn
    from the seed; full: 30, and every scenario twice plus 10 drawn) and return its figures
    (module docstring).

    Each run has its own simulator seeded ``seed + run`` (reproducible up to scheduling:
    timeouts race the event loop). Up to :data:`CONCURRENCY` runs share the event loop at
    once: a run spends nearly all its time waiting (backoffs, ``Retry-After``, timeouts), and
    one after another the full campaign would take over five minutes.
    """
    runs = 3 if quick else 30
    began = time.monotonic()
    gate = asyncio.Semaphore(CONCURRENCY)
    rng = random.Random(seed)  # noqa: S311 - reproducible scenarios, not crypto
    scenarios = [*MULTI_SCENARIOS.items()] * (1 if quick else 2)
    scenarios += [(f"random_{n}", random_fetches(rng)) for n in range(1 if quick else 10)]

    async def one(index: int) -> RunResult:
        family = FAMILIES[index % len(FAMILIES)]
        async with gate:
            result = await run_once(seed + index, family=family)
        logger.bind(
            run=index,
            family=family,
            time_to_flat_s=result.time_to_flat_s,
            flips=result.flips,
            faults=sum(result.faults.values()),
        ).info("venue campaign run done")
        return result

    async def multi(index: int, scenario: str, fetches: Sequence[str]) -> MultiResult:
        async with gate:
            result = await run_multi(seed + runs + index, scenario, fetches)
        logger.bind(
            scenario=scenario,
            fetches=list(fetches),
            lapses=result.lapses,
            time_to_flat_s=result.time_to_flat_s,
        ).info("venue campaign multi-entry run done")
        return result

    results, multis = await asyncio.gather(
        asyncio.gather(*(one(index) for index in range(runs))),
        asyncio.gather(*(multi(i, name, fetches) for i, (name, fetches) in enumerate(scenarios))),
    )
    times = [r.time_to_flat_s for r in results if r.time_to_flat_s is not None]
    fired: Counter[str] = Counter()
    for result in results:
        fired.update(result.faults)
    multi_times = [m.time_to_flat_s for m in multis if m.time_to_flat_s is not None]
    return {
        "runs": runs,
        "flat_within_deadline": len(times),
        "not_flat": runs - len(times),
        "positions_flipped": sum(r.flips for r in results),
        "late_fill_flips": sum(r.late_fill_flips for r in results),
        "time_to_flat_s": {
            "p50": rounded(percentile(times, 0.5)),
            "p99": rounded(percentile(times, 0.99)),
            "max": rounded(max(times, default=None)),
        },
        "faults_fired": dict(sorted(fired.items())),
        "by_family": {family: _family_figures(results, family) for family in FAMILIES},
        "fault_rate": FAULT_RATE,
        "deadline_s": DEADLINE_S,
        "settle_s": SETTLE_S,
        "concurrency": CONCURRENCY,
        "reports": sum(r.reports for r in results),
        "multi_entry_runs": len(multis),
        "multi_entry_scenarios": sorted({m.scenario for m in multis}),
        "multi_entry_entries": sum(m.entries for m in multis),
        "multi_entry_max_per_fetch": max((m.max_per_fetch for m in multis), default=0),
        "multi_entry_active_at_end": sum(m.active for m in multis),
        "multi_entry_lapses": sum(m.lapses for m in multis),
        "multi_entry_not_flat": sum(m.active and m.time_to_flat_s is None for m in multis),
        "multi_entry_time_to_flat_s": {
            "p50": rounded(percentile(multi_times, 0.5)),
            "p99": rounded(percentile(multi_times, 0.99)),
            "max": rounded(max(multi_times, default=None)),
        },
        "multi_entry_examples": [e for m in multis for e in m.examples][:6],
        "duration_s": round(time.monotonic() - began, 1),
    }


if __name__ == "__main__":  # pragma: no cover - manual use: python -m ess.chaos.venue
    import json

    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(run_campaign(quick=True)), indent=2))  # noqa: T201
