"""Every public exception ESS defines derives from :class:`ess.errors.EssError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import ess
import streams
from ess.errors import EssError


def _modules() -> list[str]:
    names = []
    for package in (ess, streams):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return sorted(names)


def _public_exceptions() -> list[tuple[str, type[BaseException]]]:
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")
            ):
                found.append((f"{name}.{attr}", value))
    return found


def test_the_walk_finds_the_known_exceptions() -> None:
    names = {name for name, _ in _public_exceptions()}
    assert "ess.roles.command.errors.FencedError" in names
    assert "ess.venues.ports.VenueError" in names
    assert len(names) >= 20


@pytest.mark.parametrize(("name", "kind"), _public_exceptions())
def test_public_exception_derives_from_ess_error(name: str, kind: type[BaseException]) -> None:
    assert issubclass(kind, EssError), f"{name} must derive from ess.errors.EssError"


def test_builtin_bases_are_kept_so_existing_handlers_still_catch() -> None:
    from ess.policystore.base import PolicyStoreUnavailable  # noqa: PLC0415
    from ess.venues.config import VenueConfigError  # noqa: PLC0415

    assert issubclass(VenueConfigError, ValueError)
    assert issubclass(PolicyStoreUnavailable, ConnectionError)
