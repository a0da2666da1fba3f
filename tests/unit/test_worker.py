from __future__ import annotations

import pytest

from ess.config import EssSettings
from ess.worker import ROLES, run_worker


@pytest.mark.parametrize("roles", [(), ("detect", "trade")])
async def test_run_worker_refuses_unknown_or_no_roles(roles: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        await run_worker(EssSettings(), roles)


def test_roles_are_the_documented_ones() -> None:
    assert ROLES == ("detect", "command", "project")
