"""The generic adapter signs with the venue's API passphrase (ccxt's ``password``) where the
exchange wants one: real ccxt ``okx`` against a loopback recorder of what it sends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pydantic import SecretStr

from ess.venues.config import VenueConfig, VenueCredentials
from ess.venues.generic import CcxtVenue
from ess.venues.ports import VenueError

pytestmark = pytest.mark.integration

PASSPHRASE = "okx-passphrase-5Rw8"
#: OKX's signed requests carry the passphrase in this header (and never the secret).
HEADER = "OK-ACCESS-PASSPHRASE"


class Recorder:
    """Answers every request with OKX's empty success (``code`` 0, no data) and keeps the
    headers: no markets, so the venue refuses to open, after ccxt made its first signed
    request (``load_markets`` reads the account's currencies when credentials are set)."""

    def __init__(self) -> None:
        self.headers: dict[str, dict[str, str]] = {}

    async def answer(self, request: web.Request) -> web.Response:
        self.headers[request.path] = dict(request.headers)
        return web.json_response({"code": "0", "msg": "", "data": []})


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield recorder, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def open_okx(base_url: str, passphrase: SecretStr | None) -> None:
    config = VenueConfig(name="okx-main", exchange="okx", market="spot", base_url=base_url)
    credentials = VenueCredentials(
        api_key=SecretStr("okx-key"), secret=SecretStr("okx-secret"), passphrase=passphrase
    )
    venue = CcxtVenue(config, credentials, options={"fetchMarkets": {"types": ["spot"]}})
    try:
        with pytest.raises(VenueError, match="no markets listed"):
            await venue.open()
    finally:
        await venue.aclose()


async def test_the_passphrase_signs_okx_requests(recorder: tuple[Recorder, str]) -> None:
    seen, url = recorder

    await open_okx(url, SecretStr(PASSPHRASE))

    signed = [headers for headers in seen.headers.values() if HEADER in headers]
    assert signed, f"no signed request among {sorted(seen.headers)}"
    assert {headers[HEADER] for headers in signed} == {PASSPHRASE}


async def test_without_a_passphrase_ccxt_signs_nothing(recorder: tuple[Recorder, str]) -> None:
    """The control: it is the passphrase that made ccxt sign (``load_venues`` refuses an OKX
    venue without one, so the executor never runs like this)."""
    seen, url = recorder

    await open_okx(url, None)

    assert seen.headers  # the public market read went out
    assert not [headers for headers in seen.headers.values() if HEADER in headers]
