"""Venue configuration: which venues the executor flattens, with which credentials and budgets.

(How hard the executor pushes is a setting: :class:`ess.settings.ExecuteSettings`.)

Venues come from a TOML or JSON file (``ESS_VENUES_FILE``) or inline JSON (``ESS_VENUES``), a
list of :class:`VenueConfig`. Credentials never appear in that file: each venue names the
environment variables that hold its key and secret (by default ``ESS_VENUE_<NAME>_API_KEY`` and
``ESS_VENUE_<NAME>_SECRET``) and, where the exchange wants one (OKX, KuCoin, Bitget: ccxt's
``password``), its API passphrase (by default ``ESS_VENUE_<NAME>_PASSPHRASE``), and
:func:`load_venues` reads them into ``SecretStr`` values that print as ``**********``. A venue
whose credentials are missing is a configuration error at start, not a surprise during an
emergency.

Each ``[[venues]]`` entry is one account with its own keys, so a sub-account is simply another
entry (its own name, ``account`` label and key variables). Exchanges count request weight per
IP but orders per account: accounts of one exchange that leave through the same egress IP set
the same ``budget_group``, and then share ONE request-weight budget (``weight_per_minute``,
which they must agree on: it is the group's total) while each keeps its own order budget and
in-flight limit (:func:`build_budgets`). Without it each account would stay within the IP's
figure on its own and together exceed it.

Example ``venues.toml``::

    [[venues]]
    name = "binance-futures"
    exchange = "binanceusdm"
    account = "main"
    countdown_symbols = ["BTCUSDT", "ETHUSDT"]

    [[venues]]
    name = "binance-spot"
    exchange = "binance"
    account = "main"
    quote = "USDT"

    [[venues]]
    name = "bybit-perps"
    exchange = "bybit"              # any id in ccxt.exchanges
    adapter = "generic"             # optional: "auto" picks it for every non-Binance id
    market = "futures"              # required for the generic adapter: "futures" or "spot"

    [[venues]]
    name = "okx-spot"
    exchange = "okx"
    market = "spot"
    spot_policy = "cancel_only"     # cancel the orders, sell nothing (reported as left in place)
    # OKX needs a passphrase: ESS_VENUE_OKX_SPOT_PASSPHRASE (or name one with passphrase_env)

Two accounts (a main account and a sub-account, each with its own keys) behind one egress IP,
sharing Binance's per-IP weight budget; each keeps its own order budget::

    [[venues]]
    name = "futures-main"
    exchange = "binanceusdm"
    account = "main"
    budget_group = "egress-1"       # ESS_VENUE_FUTURES_MAIN_API_KEY / _SECRET

    [[venues]]
    name = "futures-sub1"
    exchange = "binanceusdm"
    account = "sub1"
    budget_group = "egress-1"       # same exchange, same weight_per_minute (default 1920)
    api_key_env = "BINANCE_SUB1_KEY"
    secret_env = "BINANCE_SUB1_SECRET"

``adapter`` chooses the code that talks to the venue: ``"binance"`` (:mod:`ess.venues.binance`:
Binance's raw endpoints, error codes and weights; ``binanceusdm`` and ``binance`` only),
``"generic"`` (:mod:`ess.venues.generic`: ccxt's unified API, for any ccxt exchange id; the
venue must offer what a flatten needs, checked when the executor opens it) or ``"auto"`` (the
default: ``binance`` for ``binanceusdm``/``binance``, ``generic`` for every other id).
``market`` says whether the account holds derivative positions (``"futures"``: closed
reduce-only) or spot balances (``"spot"``: sold into ``quote``, or, with ``spot_policy =
"cancel_only"``, only their orders cancelled and the balances reported as exposure left in
place: the venue then never reads flat while it holds them).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ess.core.flatten import MarketKind, SpotPolicy
from ess.errors import EssError
from ess.venues.budget import RateBudget, WeightWindow

if TYPE_CHECKING:
    from ess.venues.ports import VenuePort

__all__ = [
    "COUNTDOWN_RANGE_MS",
    "COUNTDOWN_UNUSABLE",
    "OKX_IDS",
    "VenueConfig",
    "VenueConfigError",
    "VenueCredentials",
    "build_budgets",
    "ccxt_has",
    "configured_venues",
    "declared_env_names",
    "load_venues",
    "make_venue",
    "parse_venues",
]

#: A ccxt exchange id (validated against ``ccxt.exchanges``).
ExchangeId = str
#: Which adapter serves a venue; ``auto`` is resolved when the config is validated.
AdapterName = Literal["auto", "binance", "generic"]
#: The exchange ids the Binance adapter serves, and the market each one is.
_BINANCE_MARKETS: dict[str, MarketKind] = {
    "binanceusdm": MarketKind.FUTURES,
    "binance": MarketKind.SPOT,
}

#: Exchanges whose ``cancelAllOrdersAfter`` ccxt offers but ESS cannot rely on, and why: a
#: switch that is armed without error but never fires is worse than none, because the status
#: would say the venue cancels by itself when ESS dies.
COUNTDOWN_UNUSABLE: dict[str, str] = {
    "bybit": (
        "Bybit's disconnected-cancel-all (DCP) fires only when the account's private "
        "websocket disconnects; ESS talks REST, so it would never fire"
    ),
}
#: ccxt's ids of OKX (the global site and its regional ones share the API).
OKX_IDS: tuple[str, ...] = ("okx", "myokx", "okxus")
#: Countdown lengths an exchange accepts (ms), where narrower than the config's own bounds:
#: OKX's ``cancel-all-after`` takes 0 (off) or 10 to 120 seconds.
COUNTDOWN_RANGE_MS: dict[str, tuple[int, int]] = dict.fromkeys(OKX_IDS, (10_000, 120_000))

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class VenueConfigError(EssError, ValueError):
    """The venue configuration is missing, malformed or lacks credentials."""


class VenueConfig(BaseModel):
    """One account on one venue. Budgets default to Binance's published limits with headroom:
    the executor shares the IP's weight budget with the trading services."""

    # A credential pasted into the venue file by mistake must not reappear in the error.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Unique name: part of report keys, metric labels and derived client order ids.
    name: str
    #: ccxt exchange id: ``binanceusdm`` (USD-M futures), ``binance`` (spot) or, with the
    #: generic adapter, any other id in ``ccxt.exchanges``.
    exchange: ExchangeId
    #: ``binance``, ``generic`` or ``auto`` (binance for ``binanceusdm``/``binance``, generic
    #: otherwise); holds the resolved adapter after validation.
    adapter: AdapterName = "auto"
    #: ``futures`` (derivative positions, closed reduce-only) or ``spot`` (balances, sold into
    #: ``quote``). Implied by the exchange id for Binance; required for the generic adapter.
    market: Literal["futures", "spot"] | None = None
    #: Account label for reports and logs (never a credential).
    account: str = "main"
    #: Override of the venue's REST base URL (a gateway, a test host, the simulator).
    base_url: str | None = None
    #: Environment variables holding the credentials; default ``ESS_VENUE_<NAME>_API_KEY`` /
    #: ``ESS_VENUE_<NAME>_SECRET`` with the name upper-cased and ``-``/``.`` as ``_``.
    api_key_env: str | None = None
    secret_env: str | None = None
    #: Environment variable holding the API passphrase (ccxt's ``password``; OKX, KuCoin,
    #: Bitget); default ``ESS_VENUE_<NAME>_PASSPHRASE``. Required where ccxt's exchange class
    #: requires a password; naming one here makes it required for any exchange.
    passphrase_env: str | None = None
    #: Spot: the currency balances are sold into; every other asset with a ``<ASSET><quote>``
    #: market is exposure to flatten.
    quote: str = "USDT"
    #: Spot: assets never sold (besides ``quote``), e.g. fee tokens held on purpose.
    keep_assets: tuple[str, ...] = ()
    #: Spot: ``sell`` (every asset but ``quote`` and ``keep_assets`` sold into ``quote``) or
    #: ``cancel_only`` (orders cancelled, nothing sold: those balances are reported as exposure
    #: left in place by policy, and the venue never reads flat while it holds them). Refused
    #: on futures venues, whose positions are always closed.
    spot_policy: SpotPolicy = "sell"
    #: Futures: symbols whose ``countdownCancelAll`` dead-man's switch is kept armed. Generic
    #: adapter: only where ccxt has ``cancelAllOrdersAfter``, which is account-wide (one entry,
    #: any symbol, is enough).
    countdown_symbols: tuple[str, ...] = ()
    #: Countdown length; the switch is re-armed every third of it.
    countdown_ms: int = Field(default=60_000, ge=1_000, le=3_600_000)
    #: Request-weight budget per minute (Binance: futures 2400, spot 6000 per IP). Generic
    #: adapter: requests per minute (each unified call counts 1), default 80 % of ccxt's
    #: ``rateLimit`` pace for the exchange. With ``budget_group``: the group's total.
    weight_per_minute: int = Field(default=0, ge=0)
    #: Accounts of the same exchange behind the same egress IP: venues with the same
    #: ``budget_group`` share ONE request-weight budget (the exchange counts weight per IP), so
    #: they must be on the same exchange and adapter and agree on ``weight_per_minute``; their
    #: order budgets and in-flight limits stay per account.
    budget_group: str | None = None
    #: Order budget per 10 s (Binance: futures 300, spot 100 per account). Generic adapter:
    #: default a sixth of the request budget.
    orders_per_10s: int = Field(default=0, ge=0)
    #: Most requests in flight at once on this venue.
    max_in_flight: int = Field(default=64, ge=1, le=256)
    #: Per-request timeout.
    timeout_ms: int = Field(default=3_000, ge=100, le=60_000)

    @field_validator("name", "account", "budget_group")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r} must match {_NAME.pattern}")
        return value

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        if value in _BINANCE_MARKETS:
            return value
        known = _ccxt_exchanges()
        if value not in known:
            close = difflib.get_close_matches(value.lower(), known, n=3, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown ccxt exchange id {value!r}{hint}")
        return value

    @model_validator(mode="after")
    def _defaults_by_exchange(self) -> VenueConfig:
        adapter, market = _adapter_and_market(self.exchange, self.adapter, self.market)
        object.__setattr__(self, "adapter", adapter)
        object.__setattr__(self, "market", market)
        futures = market == MarketKind.FUTURES.value
        if adapter == "generic" and not self.weight_per_minute:
            # One unit per unified call; 80 % of ccxt's pace for the exchange (``rateLimit``
            # ms between requests), orders at most one in six requests.
            rate_ms = _ccxt_describe(self.exchange).get("rateLimit") or 2000
            requests = max(1, int(0.8 * 60_000 / float(rate_ms)))
            object.__setattr__(self, "weight_per_minute", requests)
            if not self.orders_per_10s:
                object.__setattr__(self, "orders_per_10s", max(1, requests // 6))
        # 80 % of the published budgets: the trading services share the IP weight budget.
        if not self.weight_per_minute:
            object.__setattr__(self, "weight_per_minute", 1920 if futures else 4800)
        if not self.orders_per_10s:
            object.__setattr__(self, "orders_per_10s", 240 if futures else 80)
        if futures and "spot_policy" in self.model_fields_set:
            # A futures account holds positions, always closed reduce-only: a policy that
            # reads as "leave it" there would promise what the flatten does not do.
            raise ValueError(
                f"spot_policy: {self.exchange} is a futures venue (positions are always "
                "closed); spot_policy applies to spot venues only"
            )
        if self.countdown_symbols:
            if adapter == "binance" and not futures:
                raise ValueError("countdown_symbols: only binanceusdm has countdownCancelAll")
            if adapter == "generic" and not ccxt_has(self.exchange, "cancelAllOrdersAfter"):
                raise ValueError(
                    f"countdown_symbols: ccxt has no cancelAllOrdersAfter for {self.exchange}"
                )
            if self.exchange in COUNTDOWN_UNUSABLE:
                raise ValueError(
                    f"countdown_symbols: {COUNTDOWN_UNUSABLE[self.exchange]}; remove "
                    "countdown_symbols (the venue relies on ESS staying alive)"
                )
            low, high = COUNTDOWN_RANGE_MS.get(self.exchange, (1_000, 3_600_000))
            if not low <= self.countdown_ms <= high:
                raise ValueError(
                    f"countdown_ms: {self.exchange} accepts {low} to {high} ms, "
                    f"not {self.countdown_ms}"
                )
        return self

    @property
    def market_kind(self) -> MarketKind:
        return MarketKind.FUTURES if self.market == MarketKind.FUTURES.value else MarketKind.SPOT

    def env_names(self) -> tuple[str, str]:
        """The environment variables of this venue's key and secret."""
        stem = self._env_stem()
        return (self.api_key_env or f"{stem}_API_KEY", self.secret_env or f"{stem}_SECRET")

    def passphrase_env_name(self) -> str:
        """The environment variable of this venue's API passphrase (read when set)."""
        return self.passphrase_env or f"{self._env_stem()}_PASSPHRASE"

    def _env_stem(self) -> str:
        return "ESS_VENUE_" + re.sub(r"[^A-Za-z0-9]", "_", self.name).upper()


class VenueCredentials(BaseModel):
    """A venue's API key, secret and (where the exchange wants one) passphrase; all print
    masked, also in validation errors."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    api_key: SecretStr
    secret: SecretStr
    passphrase: SecretStr | None = None


def parse_venues(data: Any) -> tuple[VenueConfig, ...]:
    """Venue configs from parsed TOML/JSON: a list, or a mapping with a ``venues`` list.

    A mapping without ``venues`` (a typo such as ``[[venue]]``) or with other top-level keys
    is refused: it would otherwise read as "no venues" and ESS would stop nothing on any
    exchange. Only an explicit empty list (``venues = []``) means none on purpose."""
    if isinstance(data, Mapping):
        unknown = sorted(str(key) for key in data if key != "venues")
        if unknown:
            raise VenueConfigError(
                f"unknown top-level keys in the venue configuration: {', '.join(unknown)} "
                "(expected only `venues`, a list of [[venues]] tables)"
            )
        if "venues" not in data:
            raise VenueConfigError(
                "the venue configuration has no `venues` list; write `venues = []` to run "
                "without venues on purpose"
            )
        data = data["venues"]
    if not isinstance(data, Sequence) or isinstance(data, str | bytes):
        raise VenueConfigError("venue configuration must be a list of venues")
    parsed: list[VenueConfig] = []
    for number, item in enumerate(data, start=1):
        try:
            parsed.append(VenueConfig.model_validate(item))
        except ValueError as exc:
            # Name the entry: with many accounts, "which one" is half the fix.
            name = item.get("name") if isinstance(item, Mapping) else None
            which = f"venue {number}" + (f" ({name!r})" if isinstance(name, str) else "")
            raise VenueConfigError(f"invalid venue configuration, {which}: {exc}") from exc
    venues = tuple(parsed)
    names = [venue.name for venue in venues]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise VenueConfigError(f"venue names must be unique; repeated: {', '.join(duplicated)}")
    _check_budget_groups(venues)
    return venues


def _check_budget_groups(venues: Sequence[VenueConfig]) -> None:
    """Venues sharing a ``budget_group`` share one weight budget: it only means something for
    one exchange (the IP's figure there), counted in one unit (Binance weights or unified
    calls: the adapter) and of one size."""
    groups: dict[str, list[VenueConfig]] = {}
    for venue in venues:
        if venue.budget_group is not None:
            groups.setdefault(venue.budget_group, []).append(venue)
    for group, members in sorted(groups.items()):
        names = ", ".join(venue.name for venue in members)
        for what, values in (
            ("exchange", {venue.exchange for venue in members}),
            ("adapter", {venue.adapter for venue in members}),
            ("weight_per_minute", {venue.weight_per_minute for venue in members}),
        ):
            if len(values) > 1:
                found = ", ".join(f"{venue.name}={getattr(venue, what)}" for venue in members)
                raise VenueConfigError(
                    f"budget_group {group!r} (venues {names}) shares one request-weight "
                    f"budget, so its venues must have the same {what}; found {found}"
                )


def build_budgets(venues: Sequence[VenueConfig]) -> dict[str, RateBudget]:
    """Each venue's :class:`RateBudget`, by name: its own order budget and in-flight limit,
    and a weight budget of its own or, for venues of one ``budget_group``, one
    :class:`WeightWindow` they all share (the exchange counts weight per IP)."""
    _check_budget_groups(venues)
    windows: dict[str, WeightWindow] = {}
    budgets: dict[str, RateBudget] = {}
    for venue in venues:
        shared = None
        if venue.budget_group is not None:
            shared = windows.setdefault(venue.budget_group, WeightWindow(venue.weight_per_minute))
        budgets[venue.name] = RateBudget(
            venue.weight_per_minute,
            venue.orders_per_10s,
            venue.max_in_flight,
            shared_weight=shared,
        )
    return budgets


def configured_venues(env: Mapping[str, str]) -> tuple[VenueConfig, ...]:
    """The venues named by ``ESS_VENUES_FILE`` or ``ESS_VENUES`` in ``env`` (none when neither
    is set), without their credentials."""
    path = env.get("ESS_VENUES_FILE", "").strip()
    inline = env.get("ESS_VENUES", "").strip()
    if path and inline:
        raise VenueConfigError("set ESS_VENUES_FILE or ESS_VENUES, not both")
    if path:
        text = _read(Path(path))
        try:
            data: Any = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise VenueConfigError(f"{path}: {exc}") from exc
    elif inline:
        try:
            data = json.loads(inline)
        except json.JSONDecodeError as exc:
            raise VenueConfigError(f"ESS_VENUES: {exc}") from exc
    else:
        return ()
    return parse_venues(data)


def declared_env_names(env: Mapping[str, str]) -> frozenset[str]:
    """The credential variables the configured venues name (empty when the venue settings
    are missing or unusable: the execute role reports that itself when it starts)."""
    try:
        venues = configured_venues(env)
    except VenueConfigError:
        return frozenset()
    return frozenset(
        name for venue in venues for name in (*venue.env_names(), venue.passphrase_env_name())
    )


def load_venues(
    env: Mapping[str, str],
) -> tuple[tuple[VenueConfig, VenueCredentials], ...]:
    """Venues and their credentials from ``ESS_VENUES_FILE`` or ``ESS_VENUES`` in ``env``.

    No venue configured gives an empty tuple (the executor then refuses to start: see
    :mod:`ess.roles.execute.service`). Missing credentials raise :class:`VenueConfigError` naming
    the variables, never their values. The passphrase is read when its variable is set; it is
    missing when ccxt's exchange class requires a password (``requiredCredentials``) or the
    venue names ``passphrase_env``: either way the venue could sign nothing without it.
    """
    loaded: list[tuple[VenueConfig, VenueCredentials]] = []
    for venue in configured_venues(env):
        key_name, secret_name = venue.env_names()
        passphrase_name = venue.passphrase_env_name()
        missing = [name for name in (key_name, secret_name) if not env.get(name)]
        why = ""
        if not env.get(passphrase_name):
            if _requires_password(venue.exchange):
                missing.append(passphrase_name)
                why = f" (ccxt's {venue.exchange} requires an API passphrase)"
            elif venue.passphrase_env is not None:
                missing.append(passphrase_name)
                why = " (named by passphrase_env)"
        if missing:
            raise VenueConfigError(f"venue {venue.name}: set {' and '.join(missing)}{why}")
        passphrase = env.get(passphrase_name)
        credentials = VenueCredentials(
            api_key=SecretStr(env[key_name]),
            secret=SecretStr(env[secret_name]),
            passphrase=SecretStr(passphrase) if passphrase else None,
        )
        loaded.append((venue, credentials))
    return tuple(loaded)


def _adapter_and_market(
    exchange: str, adapter: AdapterName, market: str | None
) -> tuple[AdapterName, str]:
    """The adapter ``auto`` stands for, and the market the venue holds."""
    binance = _BINANCE_MARKETS.get(exchange)
    if adapter == "auto":
        adapter = "binance" if binance is not None else "generic"
    if adapter == "binance":
        if binance is None:
            raise ValueError(
                f"adapter 'binance' serves only binanceusdm and binance, not "
                f"{exchange!r}: use adapter 'generic'"
            )
        if market is not None and market != binance.value:
            raise ValueError(f"{exchange} is {binance.value}, not {market}")
        return adapter, binance.value
    if market is None:
        # Guessing (ccxt's default type) could flatten the wrong book and leave the account's
        # real exposure open: a generic venue says what it holds.
        raise ValueError(
            f"{exchange} (generic adapter): set market to 'futures' (derivative positions, "
            "closed reduce-only) or 'spot' (balances, sold into quote)"
        )
    return adapter, market


def make_venue(
    config: VenueConfig, credentials: VenueCredentials, *, budget: RateBudget | None = None
) -> VenuePort:
    """The adapter ``config.adapter`` names, not opened yet (ccxt is imported on demand).

    ``budget``: the venue's entry of :func:`build_budgets` when it shares a ``budget_group``
    (default: a budget of its own, built by the adapter from ``config``)."""
    if config.adapter == "binance":
        from ess.venues.binance import BinanceVenue  # noqa: PLC0415 - ccxt is heavy

        return BinanceVenue(config, credentials, budget=budget)
    from ess.venues.generic import CcxtVenue  # noqa: PLC0415 - ccxt is heavy

    return CcxtVenue(config, credentials, budget=budget)


def _ccxt_exchanges() -> list[str]:
    import ccxt  # noqa: PLC0415 - heavy; only for ids the Binance adapter does not serve

    return list(ccxt.exchanges)


@functools.cache
def _ccxt_describe(exchange: str) -> dict[str, Any]:
    """ccxt's description of ``exchange`` (read-only: shared by every caller)."""
    import ccxt  # noqa: PLC0415 - heavy; only for ids the Binance adapter does not serve

    described: dict[str, Any] = getattr(ccxt, exchange)().describe()
    return described


def _requires_password(exchange: str) -> bool:
    """Whether ccxt's ``exchange`` class cannot sign a request without a passphrase."""
    required = _ccxt_describe(exchange).get("requiredCredentials") or {}
    return required.get("password") is True


def ccxt_has(exchange: str, capability: str) -> bool:
    """Whether ccxt's ``exchange`` class advertises ``capability`` (known without a client)."""
    return _ccxt_describe(exchange).get("has", {}).get(capability) is True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise VenueConfigError(f"cannot read venue file {path}: {exc}") from exc
