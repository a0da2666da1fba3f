"""``make_exchange`` builds unmodified ccxt clients; no request is sent here."""

from __future__ import annotations

import pytest

from ess.sim import make_exchange


async def test_every_api_url_points_at_the_base_and_keeps_its_path() -> None:
    client = make_exchange(
        "binanceusdm",
        "http://127.0.0.1:9/",
        "k",
        "s",
        enable_rate_limit=True,
        rate_limit_ms=5,
        timeout_ms=750,
        options={"recvWindow": 5000},
    )
    try:
        urls = {k: v for k, v in client.urls["api"].items() if isinstance(v, str)}
        assert urls["fapiPrivateV3"] == "http://127.0.0.1:9/fapi/v3"
        assert urls["private"] == "http://127.0.0.1:9/api/v3"
        assert all(url.startswith("http://127.0.0.1:9/") for url in urls.values())
        assert (client.enableRateLimit, client.rateLimit, client.timeout) == (True, 5, 750)
        assert client.options["fetchCurrencies"] is False
        assert client.options["fetchMarkets"]["types"] == ["linear"]
        assert client.options["recvWindow"] == 5000
        assert client.timeout_on_exit == 0
        linear = client.get_exceptions_by_url("http://127.0.0.1:9/fapi/v1/order", "exact")
        assert linear is client.exceptions["linear"]["exact"]
        assert client.get_exceptions_by_url("http://127.0.0.1:9/other", "exact") == {}
    finally:
        await client.close()


async def test_without_base_url_binance_hosts_and_host_based_errors_stay() -> None:
    client = make_exchange("binance", None, None, None)
    try:
        assert client.urls["api"]["private"].startswith("https://api.binance.com/")
        assert client.options["fetchMarkets"]["types"] == ["spot"]
        assert "get_exceptions_by_url" not in vars(client)
    finally:
        await client.close()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        make_exchange("kraken", None, None, None)  # type: ignore[arg-type]
