"""Venue configuration: files and inline JSON, credentials from named environment variables,
validation, and secrets that never print."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from ess.core.flatten import MarketKind
from ess.venues.binance import BinanceVenue
from ess.venues.config import (
    VenueConfig,
    VenueConfigError,
    VenueCredentials,
    build_budgets,
    declared_env_names,
    load_venues,
    make_venue,
    parse_venues,
)

KEY = "key-value-4f2a"
SECRET = "secret-value-9c1e"

TOML = """
[[venues]]
name = "binance-futures"
exchange = "binanceusdm"
countdown_symbols = ["BTCUSDT", "ETHUSDT"]

[[venues]]
name = "binance-spot"
exchange = "binance"
account = "treasury"
quote = "USDC"
keep_assets = ["BNB"]
api_key_env = "SPOT_KEY"
secret_env = "SPOT_SECRET"
"""

CREDENTIALS = {
    "ESS_VENUE_BINANCE_FUTURES_API_KEY": KEY,
    "ESS_VENUE_BINANCE_FUTURES_SECRET": SECRET,
    "SPOT_KEY": "spot-" + KEY,
    "SPOT_SECRET": "spot-" + SECRET,
}


def check_loaded(loaded: tuple[tuple[VenueConfig, VenueCredentials], ...]) -> None:
    (futures, futures_credentials), (spot, spot_credentials) = loaded
    assert (futures.name, futures.market_kind, futures.account) == (
        "binance-futures",
        MarketKind.FUTURES,
        "main",
    )
    assert futures.countdown_symbols == ("BTCUSDT", "ETHUSDT")
    assert (futures.weight_per_minute, futures.orders_per_10s) == (1920, 240)
    assert futures_credentials.api_key.get_secret_value() == KEY
    assert futures_credentials.secret.get_secret_value() == SECRET
    assert (spot.market_kind, spot.account, spot.quote, spot.keep_assets) == (
        MarketKind.SPOT,
        "treasury",
        "USDC",
        ("BNB",),
    )
    assert (spot.weight_per_minute, spot.orders_per_10s) == (4800, 80)
    assert spot_credentials.secret.get_secret_value() == "spot-" + SECRET


def test_load_from_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "venues.toml"
    path.write_text(TOML)

    check_loaded(load_venues({"ESS_VENUES_FILE": str(path), **CREDENTIALS}))


def test_load_from_json_file(tmp_path: Path) -> None:
    path = tmp_path / "venues.json"
    path.write_text(json.dumps(tomllib.loads(TOML)))

    check_loaded(load_venues({"ESS_VENUES_FILE": str(path), **CREDENTIALS}))


def test_load_inline_json_list() -> None:
    inline = json.dumps(tomllib.loads(TOML)["venues"])

    check_loaded(load_venues({"ESS_VENUES": inline, **CREDENTIALS}))


def test_nothing_configured_is_empty() -> None:
    assert load_venues({"ESS_VENUES": "  ", "ESS_VENUES_FILE": ""}) == ()


def test_file_and_inline_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VenueConfigError, match="not both"):
        load_venues({"ESS_VENUES_FILE": str(tmp_path / "v.toml"), "ESS_VENUES": "[]"})


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ESS_VENUES": "[{"}, "ESS_VENUES"),
        ({"ESS_VENUES": '"binance"'}, "must be a list"),
        ({"ESS_VENUES_FILE": "/nonexistent/venues.toml"}, "cannot read"),
    ],
)
def test_unreadable_configuration_is_an_error(env: dict[str, str], match: str) -> None:
    with pytest.raises(VenueConfigError, match=match):
        load_venues(env)


def test_malformed_toml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "venues.toml"
    path.write_text("[[venues]\nname = ")

    with pytest.raises(VenueConfigError, match=r"venues\.toml"):
        load_venues({"ESS_VENUES_FILE": str(path)})


def test_missing_credentials_name_the_variables_not_the_values() -> None:
    venues = json.dumps([{"name": "binance-futures", "exchange": "binanceusdm"}])
    env = {"ESS_VENUES": venues, "ESS_VENUE_BINANCE_FUTURES_API_KEY": KEY}

    with pytest.raises(VenueConfigError) as caught:
        load_venues(env)

    message = str(caught.value)
    assert "ESS_VENUE_BINANCE_FUTURES_SECRET" in message
    assert "ESS_VENUE_BINANCE_FUTURES_API_KEY" not in message  # that one is set
    assert KEY not in message


def test_empty_credential_counts_as_missing() -> None:
    venues = json.dumps([{"name": "x", "exchange": "binance"}])

    with pytest.raises(VenueConfigError, match="ESS_VENUE_X_API_KEY and ESS_VENUE_X_SECRET"):
        load_venues({"ESS_VENUES": venues, "ESS_VENUE_X_API_KEY": ""})


def test_duplicate_names_are_refused() -> None:
    venue = {"name": "twice", "exchange": "binance"}

    with pytest.raises(VenueConfigError, match="repeated: twice"):
        parse_venues([venue, {**venue, "exchange": "binanceusdm"}])


def test_countdown_on_spot_is_refused() -> None:
    with pytest.raises(VenueConfigError, match="countdown_symbols"):
        parse_venues([{"name": "s", "exchange": "binance", "countdown_symbols": ["BTCUSDT"]}])


@pytest.mark.parametrize(
    "venue",
    [
        {"name": "bad name!", "exchange": "binance"},
        {"name": "x", "exchange": "krakn"},
        {"name": "x", "exchange": "binance", "timeout_ms": 10},
        {"name": "x", "exchange": "binance", "unknown": 1},
    ],
)
def test_invalid_venues_are_refused(venue: dict[str, object]) -> None:
    with pytest.raises(VenueConfigError, match="invalid venue configuration"):
        parse_venues([venue])


def test_a_credential_pasted_into_the_file_is_not_echoed_in_the_error() -> None:
    with pytest.raises(VenueConfigError, match="api_key") as caught:
        parse_venues([{"name": "x", "exchange": "binance", "api_key": KEY}])

    assert KEY not in str(caught.value)


def test_explicit_budgets_are_kept() -> None:
    (venue,) = parse_venues(
        {"venues": [{"name": "x", "exchange": "binanceusdm", "weight_per_minute": 600}]}
    )

    assert (venue.weight_per_minute, venue.orders_per_10s) == (600, 240)


def test_env_names_default_and_override() -> None:
    default = VenueConfig(name="binance.futures-2", exchange="binanceusdm")
    custom = VenueConfig(name="x", exchange="binance", api_key_env="K", secret_env="S")

    assert default.env_names() == (
        "ESS_VENUE_BINANCE_FUTURES_2_API_KEY",
        "ESS_VENUE_BINANCE_FUTURES_2_SECRET",
    )
    assert custom.env_names() == ("K", "S")


def test_credentials_are_masked_in_repr_and_str() -> None:
    credentials = VenueCredentials.model_validate({"api_key": KEY, "secret": SECRET})

    for text in (repr(credentials), str(credentials), f"{credentials.model_dump()}"):
        assert KEY not in text
        assert SECRET not in text
        assert "**********" in text
    assert credentials.secret.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[venue]]\nname = "futures"\nexchange = "binanceusdm"\n', "unknown top-level keys"),
        ("# nothing here yet\n", "no `venues` list"),
        ("venues = []\nextra = 1\n", "unknown top-level keys in the venue configuration: extra"),
    ],
    ids=["typo", "empty-file", "extra-key"],
)
def test_a_file_that_would_read_as_no_venues_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "venues.toml"
    path.write_text(text)
    with pytest.raises(VenueConfigError, match=message):
        load_venues({"ESS_VENUES_FILE": str(path)})


def test_an_explicit_empty_list_means_no_venues_on_purpose(tmp_path: Path) -> None:
    path = tmp_path / "venues.toml"
    path.write_text("venues = []\n")
    assert load_venues({"ESS_VENUES_FILE": str(path)}) == ()


def test_an_unknown_exchange_id_is_refused_with_close_matches() -> None:
    with pytest.raises(VenueConfigError, match=r"unknown ccxt exchange id 'bynance'.*binance"):
        parse_venues([{"name": "x", "exchange": "bynance"}])


def test_auto_picks_binance_for_binance_ids_and_generic_otherwise() -> None:
    futures, spot, bybit, okx = parse_venues(
        [
            {"name": "f", "exchange": "binanceusdm"},
            {"name": "s", "exchange": "binance"},
            {"name": "b", "exchange": "bybit", "market": "futures"},
            {"name": "o", "exchange": "okx", "market": "spot"},
        ]
    )
    assert (futures.adapter, futures.market_kind) == ("binance", MarketKind.FUTURES)
    assert (spot.adapter, spot.market_kind) == ("binance", MarketKind.SPOT)
    assert (bybit.adapter, bybit.market_kind) == ("generic", MarketKind.FUTURES)
    assert (okx.adapter, okx.market_kind) == ("generic", MarketKind.SPOT)


def test_a_generic_venue_must_say_which_market_it_holds() -> None:
    # A guess (ccxt's default type) could flatten the wrong book and leave the real one open.
    with pytest.raises(VenueConfigError, match="set market to 'futures'"):
        parse_venues([{"name": "o", "exchange": "okx"}])


def test_binance_ids_can_use_the_generic_adapter() -> None:
    (venue,) = parse_venues(
        [{"name": "g", "exchange": "binanceusdm", "adapter": "generic", "market": "futures"}]
    )
    assert (venue.adapter, venue.market_kind) == ("generic", MarketKind.FUTURES)
    assert venue.weight_per_minute > 0
    assert venue.orders_per_10s > 0


@pytest.mark.parametrize(
    ("venue", "match"),
    [
        ({"exchange": "bybit", "adapter": "binance"}, "adapter 'binance' serves only"),
        ({"exchange": "binance", "market": "futures"}, "binance is spot"),
        (
            {
                "exchange": "binance",
                "adapter": "generic",
                "market": "spot",
                "countdown_symbols": ["BTC/USDT"],
            },
            "no cancelAllOrdersAfter",
        ),
    ],
)
def test_inconsistent_adapter_settings_are_refused(venue: dict[str, object], match: str) -> None:
    with pytest.raises(VenueConfigError, match=match):
        parse_venues([{"name": "x", **venue}])


def test_a_generic_countdown_needs_cancel_all_orders_after() -> None:
    (venue,) = parse_venues(
        [{"name": "o", "exchange": "okx", "market": "futures", "countdown_symbols": ["x"]}]
    )
    assert venue.countdown_symbols == ("x",)


# -- budget groups -------------------------------------------------------------------------------


def test_accounts_of_one_budget_group_share_one_weight_budget_and_keep_their_orders() -> None:
    venues = parse_venues(
        [
            {"name": "main", "exchange": "binanceusdm", "budget_group": "egress-1"},
            {
                "name": "sub1",
                "exchange": "binanceusdm",
                "account": "sub1",
                "budget_group": "egress-1",
                "orders_per_10s": 50,
                "max_in_flight": 8,
            },
            {"name": "alone", "exchange": "binanceusdm"},
        ]
    )

    budgets = build_budgets(venues)

    main, sub1, alone = budgets["main"], budgets["sub1"], budgets["alone"]
    assert main.weight_window is sub1.weight_window
    assert alone.weight_window is not main.weight_window
    assert main.weight_window.weight_per_minute == 1920  # the group's total, not per account
    assert (main.orders_per_10s, main.max_in_flight) == (240, 64)
    assert (sub1.orders_per_10s, sub1.max_in_flight) == (50, 8)


def test_make_venue_uses_the_budget_it_is_given() -> None:
    venues = parse_venues(
        [
            {"name": "a", "exchange": "binance", "budget_group": "g"},
            {"name": "b", "exchange": "binance", "budget_group": "g"},
        ]
    )
    budgets = build_budgets(venues)
    credentials = VenueCredentials.model_validate({"api_key": KEY, "secret": SECRET})

    a, b = (make_venue(venue, credentials, budget=budgets[venue.name]) for venue in venues)

    assert isinstance(a, BinanceVenue)
    assert isinstance(b, BinanceVenue)
    assert a.budget is budgets["a"]
    assert a.budget.weight_window is b.budget.weight_window


@pytest.mark.parametrize(
    ("second", "field"),
    [
        ({"exchange": "binance"}, "exchange"),
        ({"weight_per_minute": 600}, "weight_per_minute"),
        ({"adapter": "generic", "market": "futures", "weight_per_minute": 1920}, "adapter"),
    ],
    ids=["exchange", "weight", "adapter"],
)
def test_a_budget_group_must_agree_on_what_it_shares(second: dict[str, object], field: str) -> None:
    first = {"name": "main", "exchange": "binanceusdm", "budget_group": "egress-1"}

    with pytest.raises(VenueConfigError) as caught:
        parse_venues([first, {**first, "name": "sub1", **second}])

    message = str(caught.value)
    assert "budget_group 'egress-1'" in message
    assert "venues main, sub1" in message
    assert f"same {field}" in message


def test_build_budgets_checks_groups_of_configs_built_in_code() -> None:
    venues = [
        VenueConfig(name="a", exchange="binanceusdm", budget_group="g"),
        VenueConfig(name="b", exchange="binance", budget_group="g"),
    ]

    with pytest.raises(VenueConfigError, match="same exchange"):
        build_budgets(venues)


def test_a_budget_group_name_is_validated() -> None:
    with pytest.raises(VenueConfigError, match="budget_group"):
        parse_venues([{"name": "x", "exchange": "binance", "budget_group": "no spaces"}])


# -- spot policy ---------------------------------------------------------------------------------


def test_spot_policy_defaults_to_sell_and_accepts_cancel_only() -> None:
    default, cancel_only, generic = parse_venues(
        [
            {"name": "s", "exchange": "binance"},
            {"name": "c", "exchange": "binance", "spot_policy": "cancel_only"},
            {"name": "o", "exchange": "okx", "market": "spot", "spot_policy": "cancel_only"},
        ]
    )

    assert (default.spot_policy, cancel_only.spot_policy, generic.spot_policy) == (
        "sell",
        "cancel_only",
        "cancel_only",
    )


@pytest.mark.parametrize("policy", ["cancel_only", "sell"])
@pytest.mark.parametrize(
    "venue",
    [{"exchange": "binanceusdm"}, {"exchange": "bybit", "market": "futures"}],
    ids=["binance", "generic"],
)
def test_spot_policy_on_a_futures_venue_is_refused(venue: dict[str, str], policy: str) -> None:
    spot = {"name": "s", "exchange": "binance"}

    with pytest.raises(VenueConfigError) as caught:
        parse_venues([spot, {"name": "f", **venue, "spot_policy": policy}])

    message = str(caught.value)
    assert "venue 2 ('f')" in message
    assert "spot_policy applies to spot venues only" in message


def test_an_unknown_spot_policy_is_refused() -> None:
    with pytest.raises(VenueConfigError, match="spot_policy"):
        parse_venues([{"name": "s", "exchange": "binance", "spot_policy": "hold"}])


# -- passphrases ---------------------------------------------------------------------------------

PASSPHRASE = "passphrase-value-7d3b"


def test_a_passphrase_is_read_from_the_default_variable() -> None:
    venues = json.dumps([{"name": "okx-main", "exchange": "okx", "market": "spot"}])
    env = {
        "ESS_VENUES": venues,
        "ESS_VENUE_OKX_MAIN_API_KEY": KEY,
        "ESS_VENUE_OKX_MAIN_SECRET": SECRET,
        "ESS_VENUE_OKX_MAIN_PASSPHRASE": PASSPHRASE,
    }

    ((venue, credentials),) = load_venues(env)

    assert venue.passphrase_env_name() == "ESS_VENUE_OKX_MAIN_PASSPHRASE"
    assert credentials.passphrase is not None
    assert credentials.passphrase.get_secret_value() == PASSPHRASE
    assert PASSPHRASE not in repr(credentials)


def test_a_passphrase_is_read_from_the_variable_the_venue_names() -> None:
    venues = json.dumps(
        [{"name": "o", "exchange": "okx", "market": "spot", "passphrase_env": "OKX_PASS"}]
    )
    env = {
        "ESS_VENUES": venues,
        "ESS_VENUE_O_API_KEY": KEY,
        "ESS_VENUE_O_SECRET": SECRET,
        "OKX_PASS": PASSPHRASE,
        "ESS_VENUE_O_PASSPHRASE": "not-this-one",
    }

    ((_, credentials),) = load_venues(env)

    assert credentials.passphrase is not None
    assert credentials.passphrase.get_secret_value() == PASSPHRASE


@pytest.mark.parametrize("exchange", ["okx", "kucoin"])
def test_a_missing_passphrase_is_refused_where_ccxt_requires_one(exchange: str) -> None:
    venues = json.dumps([{"name": "p", "exchange": exchange, "market": "spot"}])
    env = {"ESS_VENUES": venues, "ESS_VENUE_P_API_KEY": KEY, "ESS_VENUE_P_SECRET": SECRET}

    with pytest.raises(VenueConfigError) as caught:
        load_venues(env)

    message = str(caught.value)
    assert "venue p: set ESS_VENUE_P_PASSPHRASE" in message
    assert "requires an API passphrase" in message
    assert KEY not in message


def test_a_passphrase_is_optional_where_ccxt_needs_none() -> None:
    venues = json.dumps([{"name": "b", "exchange": "bybit", "market": "futures"}])
    env = {"ESS_VENUES": venues, "ESS_VENUE_B_API_KEY": KEY, "ESS_VENUE_B_SECRET": SECRET}

    ((_, credentials),) = load_venues(env)

    assert credentials.passphrase is None


def test_a_named_passphrase_variable_must_be_set() -> None:
    """Naming ``passphrase_env`` says the venue signs with it: an unset one is a refusal."""
    venues = json.dumps(
        [{"name": "b", "exchange": "bybit", "market": "futures", "passphrase_env": "B_PASS"}]
    )
    env = {"ESS_VENUES": venues, "ESS_VENUE_B_API_KEY": KEY, "ESS_VENUE_B_SECRET": SECRET}

    with pytest.raises(VenueConfigError, match="venue b: set B_PASS"):
        load_venues(env)


def test_declared_env_names_include_the_passphrase() -> None:
    venues = json.dumps(
        [
            {"name": "o", "exchange": "okx", "market": "spot"},
            {"name": "f", "exchange": "binanceusdm", "passphrase_env": "F_PASS"},
        ]
    )

    assert declared_env_names({"ESS_VENUES": venues}) == {
        "ESS_VENUE_O_API_KEY",
        "ESS_VENUE_O_SECRET",
        "ESS_VENUE_O_PASSPHRASE",
        "ESS_VENUE_F_API_KEY",
        "ESS_VENUE_F_SECRET",
        "F_PASS",
    }
