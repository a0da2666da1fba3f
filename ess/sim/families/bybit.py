"""The Bybit v5 family: linear perpetuals and spot under ``/v5``.

(Placeholder: the family is being built; it serves no route yet.)
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from ess.sim.book import Account, ApiError
from ess.sim.families.base import Ctx, Family, Route
from ess.sim.faults import FaultKind
from ess.sim.markets import Venue

__all__ = ["BybitFamily"]


class BybitFamily(Family):
    """Bybit v5; see the module docstring."""

    name: ClassVar[str] = "bybit"

    def owns(self, path: str) -> bool:
        return path.startswith("/v5/")

    def build_routes(self) -> dict[tuple[str, str], Route]:
        return {}

    async def parse(self, request: web.Request, ctx: Ctx) -> None:
        return None

    def venue_of(self, ctx: Ctx) -> Venue | None:
        return None

    def authenticate(self, ctx: Ctx) -> Account:
        raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)

    def render(self, ctx: Ctx, payload: Any) -> tuple[int, Any]:
        return 200, payload

    def render_error(self, ctx: Ctx, err: ApiError) -> tuple[int, Any]:
        return err.status, {"code": err.code, "msg": err.msg}

    def canned(self, kind: FaultKind) -> ApiError:
        return ApiError(-1000, kind.value)
