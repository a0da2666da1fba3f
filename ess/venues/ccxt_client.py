"""Build an unmodified ccxt async Binance client that talks to another base URL.

This is the glue between ccxt and :class:`~ess.sim.ExchangeSimulator`, and the same pattern
production configuration uses for a base-URL override (a gateway, a recorder, a venue's
test host). Three things are needed (``docs/ccxt-loopback.md``: "URL rewrite", "Hidden
requests", "Error tables"):

* **URL rewrite.** ccxt builds each request as ``urls['api'][section] + '/' + path``; replacing
  the scheme and host of every section while keeping its path sends ``/fapi/v1``, ``/fapi/v3``,
  ``/api/v3``... to one server without collisions.
* **No hidden calls.** With keys set, ``load_markets`` also fetches currencies and margin pairs
  from ``/sapi``, and the spot class loads futures markets too; the options below turn that off
  so ``load_markets`` is one request.
* **Error tables by path.** ccxt picks Binance's per-market error tables by *host name*; on any
  other host only the shared table applies and, e.g., -2022 (reduce-only rejected) becomes a
  plain ``ExchangeError`` instead of ``InvalidOrder``. :func:`route_exceptions_by_path` picks the
  table by path instead, which gives the production mapping on any host.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import ccxt.async_support as ccxt_async

__all__ = [
    "Answer",
    "ExchangeKind",
    "hook_answers",
    "localize_urls",
    "make_exchange",
    "route_exceptions_by_path",
]

ExchangeKind = Literal["binanceusdm", "binance"]

#: Path prefix -> ccxt's Binance error-table section, most specific first.
_TABLE_BY_PREFIX: Final = (
    ("/fapi/", "linear"),
    ("/dapi/", "inverse"),
    ("/eapi/", "option"),
    ("/papi/", "portfolioMargin"),
    ("/api/", "spot"),
    ("/sapi/", "spot"),
)


def localize_urls(exchange: Any, base_url: str) -> None:
    """Point every REST URL of the client at ``base_url`` (a string ``urls['api']`` or every
    entry of its sections, nested ones too), keeping each URL's path: how unmodified ccxt
    talks to a gateway or the loopback simulator."""
    base = base_url.rstrip("/")
    api = exchange.urls["api"]
    if isinstance(api, str):
        exchange.urls["api"] = base + urllib.parse.urlparse(api).path
        return
    stack: list[dict[str, Any]] = [api] if isinstance(api, dict) else []
    while stack:
        section = stack.pop()
        for key, value in list(section.items()):
            if isinstance(value, str):
                section[key] = base + urllib.parse.urlparse(value).path
            elif isinstance(value, dict):
                stack.append(value)


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer as ccxt's ``handle_errors`` sees it, right after reading it."""

    status: int
    reason: str
    url: str
    method: str
    headers: Mapping[str, str]
    body: str
    #: The parsed JSON (``None`` when the body is empty or not JSON).
    response: Any


def hook_answers(exchange: Any, hook: Callable[[Answer, Callable[[], Any]], Any]) -> None:
    """Put ``hook`` in front of ccxt's ``handle_errors`` for this client: it gets each answer
    and a function that runs ccxt's own handling, and returns what ccxt's would.

    ccxt calls ``handle_errors`` synchronously right after reading a response, so the hook
    sees exactly the answer of the request at hand even with many requests in flight: the
    one place an adapter can classify an answer itself before ccxt's tables do."""
    original = exchange.handle_errors

    def handle_errors(  # noqa: PLR0917 - ccxt calls it with these 9 positional arguments
        status: int,
        reason: str,
        url: str,
        method: str,
        headers: Mapping[str, str] | None,
        body: str | None,
        response: Any,
        request_headers: Any,
        request_body: Any,
    ) -> Any:
        answer = Answer(status, reason, url, method, headers or {}, body or "", response)
        return hook(
            answer,
            lambda: original(
                status, reason, url, method, headers, body, response, request_headers, request_body
            ),
        )

    exchange.handle_errors = handle_errors


def route_exceptions_by_path(exchange: Any) -> None:
    """Make ccxt choose Binance's per-market error table from the URL path, not the host.

    Installed as an instance attribute, it overrides ``get_exceptions_by_url`` for this client
    only; the transport is untouched.
    """

    def get_exceptions_by_url(url: str | None, exact_or_broad: str) -> dict[str, Any]:
        path = urllib.parse.urlparse(url or "").path
        for prefix, table in _TABLE_BY_PREFIX:
            if path.startswith(prefix):
                section = exchange.safe_dict(exchange.exceptions, table, {})
                found: dict[str, Any] = exchange.safe_dict(section, exact_or_broad, {})
                return found
        return {}

    exchange.get_exceptions_by_url = get_exceptions_by_url


def make_exchange(
    kind: ExchangeKind,
    base_url: str | None,
    api_key: str | None,
    secret: str | None,
    *,
    enable_rate_limit: bool = False,
    rate_limit_ms: float | None = None,
    timeout_ms: int = 2000,
    options: Mapping[str, Any] | None = None,
    close_wait_ms: int = 0,
) -> Any:
    """An unmodified ``ccxt.async_support`` ``binanceusdm`` or ``binance`` (spot) client.

    ``base_url=None`` keeps Binance's own hosts (then only the options apply). ccxt's
    client-side throttle is off by default here because it adds ``cost x rateLimit`` ms per
    request (~200 ms per futures order); pass ``enable_rate_limit=True`` and a small
    ``rate_limit_ms`` to exercise it. ``close_wait_ms`` replaces ccxt's 250 ms sleep in
    ``close()``, which only matters for TLS connections. ``options`` are merged over the
    defaults. Create the client inside the event loop that will use it, and always
    ``await client.close()``.
    """
    if kind not in ("binanceusdm", "binance"):
        raise ValueError(f"unsupported exchange kind {kind!r}")
    defaults: dict[str, Any] = {
        "fetchCurrencies": False,  # else GET /sapi/v1/capital/config/getall on load_markets
        "fetchMargins": False,  # else GET /sapi/v1/margin/allPairs (+ isolated) on load_markets
        "adjustForTimeDifference": False,  # else GET .../time on load_markets
        "fetchMarkets": {"types": ["linear"] if kind == "binanceusdm" else ["spot"]},
    }
    config: dict[str, Any] = {
        "enableRateLimit": enable_rate_limit,
        "timeout": timeout_ms,
        "options": {**defaults, **(options or {})},
    }
    if api_key is not None:
        config["apiKey"] = api_key
    if secret is not None:
        config["secret"] = secret
    if rate_limit_ms is not None:
        config["rateLimit"] = rate_limit_ms
    exchange = getattr(ccxt_async, kind)(config)
    exchange.timeout_on_exit = close_wait_ms
    if base_url is not None:
        localize_urls(exchange, base_url)
        route_exceptions_by_path(exchange)
    return exchange
