"""The venue contract (:mod:`tests.venues.contract`) on OKX: the generic adapter
(:class:`~ess.venues.generic.CcxtVenue`, ccxt's unified API with NO simulator-specific
options) against the simulator's OKX v5 family, on USDT swaps (``futures``) and spot.

Four cases of the contract read the simulator's request log through Binance's paths and
parameter names (``ORDER_PATH``, ``CANCEL_PATH``, ``newClientOrderId``, ``symbol``, the
Binance endpoints of ``arm_faults``): run as they are, they would look for requests OKX never
receives and fail, or (the fault campaign) fire no fault on an order or a cancel. They are
ported here case for case, every assertion kept, with OKX's endpoints and parameters:
``create_order`` is ``POST /api/v5/trade/batch-orders`` (``instId``, ``clOrdId``,
``ordType``, ``sz`` in contracts, ``reduceOnly``), the generic adapter's cancel is
``cancel_orders`` (``cancel-batch-orders``, ``cancel-algos``). Swap closes are also checked
to be sized in contracts (``sz x ctVal`` = the base quantity closed).

The simulator of these tests gives OKX's per-endpoint limits the room the contract gives
Binance's budgets (its ``sim`` fixture runs Binance's over 1 s windows): the engine here
re-reads every 50 ms and the cases open many fresh adapters (each loads markets), far above
OKX's 10 balance or position reads per 2 s. Rate limiting itself is still exercised by the
429 faults of the campaign, and at OKX's real limits in ``tests/sim/test_okx.py``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, cast

import pytest
from pydantic import SecretStr

from ess.chaos import venue as chaos
from ess.chaos.venue import FAULT_RATE, HANG_DELAY_S, count_flips
from ess.core.flatten import MarketKind, PositionView
from ess.roles.execute.engine import Phase
from ess.sim import ExchangeSimulator, FaultKind, Venue, default_markets
from ess.sim.families.okx import ENDPOINT_LIMITS, OkxFamily
from ess.venues.config import VenueCredentials
from ess.venues.generic import CcxtVenue
from ess.venues.ports import VenuePort
from tests.fixtures.venues import ACCOUNT, API_KEY, SECRET, venue_config
from tests.helpers import eventually
from tests.venues.contract import (
    EXTRA_FUTURES,
    EXTRA_SPOT,
    FAULT_SEED,
    FAULTY_FLAT_WITHIN_S,
    FAULTY_RUNS,
    FLAT_WITHIN_S,
    LATE_FILL_DELAY_S,
    QUOTE,
    OpenPair,
    Pair,
    Start,
    VenueContract,
    add_account,
    closed_by_symbol,
    exposure,
    fresh_snapshot,
    opening,
    pending_late_fills,
    seed_book,
    short_budget,
    unified_symbol,
)

D = Decimal

#: The simulator-only API passphrase of every account these tests trade.
PASSPHRASE = "contract-Passphrase-1"
NO_SPOT_BALANCES = "futures hold positions, not balances: no asset can lack a market"

#: What ccxt's ``create_order`` and the generic adapter's cancel call on OKX.
ORDER_PATH = "/api/v5/trade/batch-orders"
CANCEL_PATH = "/api/v5/trade/cancel-batch-orders"
#: OKX's ``clOrdId`` alphabet: ESS's derived id is sent as ``ess<29 hex>``.
OKX_CLIENT_ID = re.compile(r"^ess[0-9a-f]{29}$")
#: OKX's limits x 50 over 1 s windows: room for the engine's 50 ms re-reads.
RELAXED_LIMITS = {
    key: dataclasses.replace(rule, count=rule.count * 50, window_s=1.0)
    for key, rule in ENDPOINT_LIMITS.items()
}

# The contract's fault campaign on OKX's endpoints (``ess.chaos.venue.arm_faults`` arms
# Binance's): the same kinds, spread the same way.
_ANYWHERE = (
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
_CANCELS = ("/api/v5/trade/cancel-batch-orders", "/api/v5/trade/cancel-algos")
#: method, path, parameters to match, the kinds spread over it, the engine-side kind.
_Group = tuple[str, str, dict[str, str], tuple[FaultKind, ...], FaultKind | None]


def _spread(rate: float, count: int) -> list[float]:
    share = rate / count
    return [share / (1 - index * share) for index in range(count)]


def arm_okx_faults(sim: ExchangeSimulator, rate: float = FAULT_RATE) -> None:
    """Every fault kind, forever, on the OKX endpoints it applies to (reads, cancels of both
    books, orders; reduce-only refusals only where reduce-only exists: swap orders, told from
    spot ones on the shared order endpoint by their ``tdMode``), at ``rate``."""
    groups: list[_Group] = [
        ("GET", "/api/v5/*", {}, _ANYWHERE, None),
        *(
            ("POST", path, {}, (*_ANYWHERE, FaultKind.UNKNOWN_ORDER), FaultKind.LATE_FILL)
            for path in _CANCELS
        ),
        (
            "POST",
            ORDER_PATH,
            {"tdMode": "cross"},
            (*_ANYWHERE, FaultKind.REDUCE_ONLY_REJECTED),
            FaultKind.PARTIAL_FILL,
        ),
        ("POST", ORDER_PATH, {"tdMode": "cash"}, _ANYWHERE, FaultKind.PARTIAL_FILL),
    ]
    for method, path, params, kinds, inside in groups:
        for kind, probability in zip(kinds, _spread(rate, len(kinds)), strict=True):
            extra: dict[str, Any] = {"delay_s": HANG_DELAY_S} if kind is FaultKind.HANG else {}
            sim.add_fault(
                method, path, kind, times=None, probability=probability, params=params, **extra
            )
        if inside is not None:
            delay = {"delay_s": chaos.LATE_FILL_DELAY_S} if inside is FaultKind.LATE_FILL else {}
            sim.add_fault(
                method, path, inside, times=None, probability=rate, params=params, **delay
            )


def _okx(sim: ExchangeSimulator) -> OkxFamily:
    return cast(OkxFamily, sim.family("okx"))


def _with_passphrase(keys: VenueCredentials) -> VenueCredentials:
    if keys.passphrase is not None:
        return keys
    return keys.model_copy(update={"passphrase": SecretStr(PASSPHRASE)})


def assert_never_flipped(pair: Pair, start: dict[str, Decimal]) -> None:
    """``contract.assert_never_flipped`` with OKX's order parameters."""
    if pair.kind is MarketKind.FUTURES:
        ours, _late = count_flips(pair.sim, pair.account, start)
        assert ours == 0, f"{ours} close(s) of ESS flipped or opened a position"
        return
    orders = pair.sim.requests("POST", ORDER_PATH, account=pair.account)
    assert {request.params.get("side") for request in orders} <= {"sell"}
    assert all(fill.side == "SELL" for fill in pair.sim.fills(pair.account) if not fill.late)
    state = pair.sim.account(pair.account)
    assert all(amount >= 0 for amount in (*state.spot_free.values(), *state.spot_locked.values()))


class OkxPairs(VenueContract):
    """The generic adapter on ccxt's ``okx`` (accounts and credentials with a passphrase)."""

    exchange = "okx"

    @pytest.fixture
    async def sim(self) -> AsyncIterator[ExchangeSimulator]:
        """The contract's simulator (markets, seed), OKX's limits relaxed (module docstring)."""
        simulator = ExchangeSimulator(
            markets=default_markets(extra_futures=EXTRA_FUTURES, extra_spot=EXTRA_SPOT),
            seed=FAULT_SEED,
        )
        _okx(simulator).limiter = OkxFamily.make_limiter(endpoint_limits=RELAXED_LIMITS)
        async with simulator:
            yield simulator

    @pytest.fixture
    def account(self, sim: ExchangeSimulator) -> str:
        return sim.add_account(
            API_KEY, SECRET, name=ACCOUNT, spot={QUOTE: "1000"}, passphrase=PASSPHRASE
        )

    @pytest.fixture
    def credentials(self) -> VenueCredentials:
        return VenueCredentials(
            api_key=SecretStr(API_KEY),
            secret=SecretStr(SECRET),
            passphrase=SecretStr(PASSPHRASE),
        )

    @pytest.fixture
    async def open_pair(
        self, sim: ExchangeSimulator, account: str, credentials: VenueCredentials
    ) -> AsyncIterator[OpenPair]:
        def build(overrides: dict[str, Any], keys: VenueCredentials) -> VenuePort:
            other = overrides.get("account")
            if other is not None and sim.account(other).passphrase is None:
                # contract.add_account knows no passphrase: the account gets the one its
                # credentials get below.
                sim.account(other).passphrase = PASSPHRASE
            config = venue_config(
                sim,
                self.exchange,
                adapter="generic",
                market=self.kind.value,
                name=f"gen-okx-{self.kind.value}",
                **{"timeout_ms": 1000, **overrides},
            )
            return CcxtVenue(config, _with_passphrase(keys), budget=short_budget(config))

        symbol = unified_symbol(sim, self.kind)
        async with opening(sim, account, credentials, build, symbol) as open_pair:
            yield open_pair

    # 2 (ported) --------------------------------------------------------------------------

    async def test_every_position_is_closed_and_verified_by_fresh_reads(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Futures: reduce-only market closes for exactly the position, sized in contracts.
        Spot: every balance with a market is sold into the quote, ``keep_assets`` is left
        alone. Both: exposure below the lot size is reported as dust and does not block
        "flat"."""
        keep = {"keep_assets": ("SIM002",)} if self.kind is MarketKind.SPOT else {}
        pair = await open_pair(**keep)
        start_exposure = seed_book(pair.sim, pair.account, pair.kind)
        if pair.kind is MarketKind.FUTURES:
            dust_symbol, dust_qty = "SIM002USDT", D("0.0004")  # 0.4 of a 0.001 contract
            pair.sim.seed_position(pair.account, dust_symbol, dust_qty, "75")
        else:
            dust_symbol, dust_qty = "SIM003USDT", D("0.0004")  # step 0.001
            pair.sim.seed_balance(pair.account, "SIM003", dust_qty)
            pair.sim.seed_balance(pair.account, "SIM002", "7")
        usdt_before = sum(pair.sim.spot_balance(pair.account, QUOTE), D(0))

        run = start(pair.venue)
        await run.until("flatten", "verified_flat")

        left = exposure(pair.sim, pair.account, pair.kind)
        if pair.kind is MarketKind.SPOT:
            assert left == {"SIM002USDT": D(7), dust_symbol: dust_qty}
            assert sum(pair.sim.spot_balance(pair.account, QUOTE), D(0)) > usdt_before
        else:
            assert left == {dust_symbol: dust_qty}
        assert closed_by_symbol(pair.sim, pair.account, pair.kind) == {
            symbol: abs(size) for symbol, size in start_exposure.items()
        }
        orders = pair.sim.requests("POST", ORDER_PATH, account=pair.account)
        assert len(orders) == len(start_exposure)
        assert all(OKX_CLIENT_ID.match(o.params["clOrdId"]) for o in orders)
        assert all(o.params["ordType"] == "market" for o in orders)
        okx = _okx(pair.sim)
        if pair.kind is MarketKind.FUTURES:
            assert all(o.params.get("reduceOnly") == "true" for o in orders)
            by_inst = {okx.inst_id(symbol): symbol for symbol in start_exposure}
            sizes = {
                by_inst[o.params["instId"]]: D(o.params["sz"])
                * okx.contract_value(by_inst[o.params["instId"]])
                for o in orders
            }
            assert sizes == {symbol: abs(size) for symbol, size in start_exposure.items()}
            assert all(D(o.params["sz"]) == D(o.params["sz"]).to_integral() for o in orders)
        else:
            # Spot has no reduce-only (OKX refuses it in cash mode): only sells.
            assert all("reduceOnly" not in o.params for o in orders)
            assert {o.params["side"] for o in orders} == {"sell"}
        assert_never_flipped(pair, start_exposure)
        await run.until("flatten", "dust")
        (dust,) = run.details("flatten", "dust")
        assert dust["dust"] == {pair.symbol(dust_symbol): str(dust_qty)}
        fresh = await fresh_snapshot(open_pair, **keep)
        assert fresh.flat
        assert fresh.positions == ()
        assert fresh.dust == (PositionView(pair.symbol(dust_symbol), dust_qty),)

    # 4 (ported) --------------------------------------------------------------------------

    async def test_a_restarted_flatten_closes_each_contract_exactly_once(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """The first engine dies mid-flatten: one close executed but unanswered, one never
        executed (the request hangs), one done. A fresh engine with a fresh adapter finishes;
        the simulator's fills show every contract closed exactly once, nothing flipped."""
        first = await open_pair()
        start_exposure = seed_book(first.sim, first.account, first.kind)
        done, unanswered, never = sorted(start_exposure)
        sim = first.sim
        venue = Venue.FUTURES if first.kind is MarketKind.FUTURES else Venue.SPOT
        okx = _okx(sim)
        unanswered_id, never_id = okx.inst_id(unanswered, venue), okx.inst_id(never, venue)
        sim.add_fault(
            "POST", ORDER_PATH, "exec_then_hang", times=None, params={"instId": unanswered_id}
        )
        sim.add_fault("POST", ORDER_PATH, "hang", times=None, params={"instId": never_id})
        first_run = start(first.venue)

        def cut_short() -> bool:
            closed = closed_by_symbol(sim, first.account, first.kind)
            assert closed.get(done) == abs(start_exposure[done])
            assert closed.get(unanswered) == abs(start_exposure[unanswered])
            hung = sim.requests("POST", ORDER_PATH, account=first.account)
            assert any(r.params.get("instId") == never_id for r in hung)
            return True

        await eventually(cut_short, timeout=FLAT_WITHIN_S)
        await first_run.halt()
        assert first_run.count("flatten", "verified_flat") == 0
        assert exposure(sim, first.account, first.kind) == {never: start_exposure[never]}

        sim.clear_faults()
        second = await open_pair()
        second_run = start(second.venue, seq=0)  # the same activation, resumed
        await second_run.until("flatten", "verified_flat")

        assert exposure(sim, first.account, first.kind) == {}
        assert closed_by_symbol(sim, first.account, first.kind) == {
            symbol: abs(size) for symbol, size in start_exposure.items()
        }
        assert_never_flipped(first, start_exposure)
        assert (await fresh_snapshot(open_pair)).flat

    # 5 (ported) --------------------------------------------------------------------------

    async def test_a_fill_after_the_cancel_is_closed_again_while_active(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """A resting buy leaves the book as cancelled and fills later (a position, or a spot
        balance, appears after the venue was verified flat): the keep-flat loop finds it and
        flattens again."""
        pair = await open_pair()
        sim, account = pair.sim, pair.account
        if pair.kind is MarketKind.FUTURES:
            sim.seed_position(account, "BTCUSDT", "0.5", sim.mark_price("BTCUSDT"))
        else:
            sim.seed_balance(account, "BTC", "0.2")
            sim.seed_balance(account, QUOTE, "10000")
        order_id = sim.seed_order(account, "ETHUSDT", "BUY", "1", "2800", venue=pair.sim_venue)
        sim.add_fault("POST", CANCEL_PATH, "late_fill", delay_s=LATE_FILL_DELAY_S)
        run = start(pair.venue)

        await run.until("enforce", "exposure_found")
        await run.until("flatten", "verified_flat", times=2)

        (late,) = [fill for fill in sim.fills(account) if fill.late]
        assert (late.order_id, late.symbol, late.qty) == (order_id, "ETHUSDT", D(1))
        assert exposure(sim, account, pair.kind) == {}
        found = run.details("enforce", "exposure_found")
        assert pair.symbol("ETHUSDT") in found[0]["positions"]
        closed = closed_by_symbol(sim, account, pair.kind)
        assert closed == {
            "BTCUSDT": D("0.5") if self.kind is MarketKind.FUTURES else D("0.2"),
            "ETHUSDT": D(1),
        }
        assert (await fresh_snapshot(open_pair)).flat

    # 6 (ported) --------------------------------------------------------------------------

    async def test_thirty_percent_mixed_faults_end_flat_and_never_flip(
        self, sim: ExchangeSimulator, open_pair: OpenPair, start: Start
    ) -> None:
        """Every fault kind the simulator has, on every OKX endpoint it applies to, on 30 %
        of requests (plus partial fills and late fills on 30 % of orders and cancels), in
        :data:`FAULTY_RUNS` runs side by side: each ends flat within the deadline (its engine
        verified it and the simulator agrees, with no late fill pending), and no close of ESS
        flipped a position."""
        pairs = [
            await open_pair(account=add_account(sim, f"chaos{index}"))
            for index in range(FAULTY_RUNS)
        ]
        books = [seed_book(sim, pair.account, pair.kind) for pair in pairs]
        arm_okx_faults(sim)
        runs = [start(pair.venue) for pair in pairs]

        def flat() -> bool:
            for pair, run in zip(pairs, runs, strict=True):
                assert run.flattener.progress.phase is Phase.FLAT, (
                    pair.account,
                    run.outcomes()[-4:],
                )
                assert not pending_late_fills(sim, pair.account)
                assert exposure(sim, pair.account, pair.kind) == {}, pair.account
                assert sim.open_orders(pair.account) == [], pair.account
            return True

        await eventually(flat, timeout=FAULTY_FLAT_WITHIN_S, interval=0.05)
        for run in runs:
            await run.halt()

        assert {fault.kind for fault in sim.faults} == set(FaultKind)  # every kind armed
        fired = {fault.kind for fault in sim.faults if fault.hits}
        assert len(fired) >= 5, f"too few fault kinds fired: {sorted(fired)}"
        for pair, book in zip(pairs, books, strict=True):
            assert_never_flipped(pair, book)
        sim.clear_faults()
        for pair in pairs:
            assert (await fresh_snapshot(open_pair, account=pair.account)).flat


class TestOkxSwap(OkxPairs):
    kind = MarketKind.FUTURES

    @pytest.mark.skip(reason=NO_SPOT_BALANCES)
    async def test_a_balance_with_no_market_is_stranded_and_never_read_as_flat(
        self, open_pair: OpenPair, start: Start
    ) -> None:
        """Spot only."""


class TestOkxSpot(OkxPairs):
    kind = MarketKind.SPOT
