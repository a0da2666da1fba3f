"""Thresholds for a replay: the live run's :class:`DetectionConfig`, and what-if overrides.

``--set PATH=VALUE`` names a field of :class:`DetectionConfig` by its dotted path:

* a top-level field: ``heartbeat_timeout_sec=30``, ``enabled_rules=["daily_loss"]``;
* a default account limit: ``account.daily_loss=0.07``;
* one account's override: ``account_overrides.acct-7.stop_loss_max=3``.

``VALUE`` is read as JSON when it parses (``0.07``, ``null``, ``true``, ``["a", "b"]``), as a
percentage when it ends in ``%`` (``7%`` is ``0.07``: thresholds are fractions), and as text
otherwise (``day_boundary=America/New_York``). The result is validated as a whole, exactly as
a config file is, so an override can never produce a config the detector would refuse.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from ess.errors import EssError
from ess.rules.config import AccountLimits, AccountOverrides, DetectionConfig

__all__ = ["ConfigError", "apply_overrides", "load_config", "parse_assignment"]


class ConfigError(EssError, ValueError):
    """A config file or an override that cannot be used; the message says which and why."""


def load_config(path: Path | None) -> DetectionConfig:
    """The :class:`DetectionConfig` the live detector used: from ``path`` (TOML or JSON, as
    ``ESS_DETECT_CONFIG``), else from ``ESS_DETECT_CONFIG``, else the defaults."""
    from ess.roles.detect.settings import load_detection_config  # noqa: PLC0415
    from ess.settings import EssSettings  # noqa: PLC0415

    if path is None:
        try:
            path = EssSettings().detect.config
        except ValidationError as exc:
            raise ConfigError(f"settings: {_problems(exc)}") from exc
    try:
        return load_detection_config(path)
    except OSError as exc:
        raise ConfigError(f"cannot read detection config {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"detection config {path} does not parse: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"detection config {path}: {_problems(exc)}") from exc


def parse_assignment(text: str) -> tuple[tuple[str, ...], Any]:
    """``"account.daily_loss=0.07"`` -> ``(("account", "daily_loss"), 0.07)``."""
    path_text, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in path_text.split("."))
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected PATH=VALUE, e.g. account.daily_loss=0.07")
    raw = raw.strip()
    value: Any
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
        if raw.endswith("%"):
            with contextlib.suppress(ValueError):
                value = float(raw[:-1]) / 100
    return path, value


def apply_overrides(config: DetectionConfig, assignments: Sequence[str]) -> DetectionConfig:
    """``config`` with every ``PATH=VALUE`` of ``assignments`` applied (later ones win).

    Raises :class:`ConfigError` for a malformed assignment, an unknown path (with the closest
    known names) or a value the config refuses (with the validator's reason).
    """
    if not assignments:
        return config
    # exclude_unset keeps "not overridden" distinct from "explicitly null" in per-account
    # overrides, and leaves defaults to re-validation.
    data: dict[str, Any] = config.model_dump(exclude_unset=True)
    for text in assignments:
        path, value = parse_assignment(text)
        _check_path(path, text)
        target = data
        for part in path[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[path[-1]] = value
    try:
        return DetectionConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"--set: {_problems(exc)}") from exc


def _check_path(path: tuple[str, ...], text: str) -> None:
    top = DetectionConfig.model_fields
    head = path[0]
    if head not in top:
        hint = ""
        if head in AccountLimits.model_fields:
            hint = f" (account limits live under account.: did you mean account.{head}?)"
        raise ConfigError(f"--set {text!r}: unknown setting {head!r}{hint}{_close(head, top)}")
    if head == "account":
        _check_leaf(path, 2, AccountLimits, text)
    elif head == "account_overrides":
        if len(path) == 1:
            raise ConfigError(
                f"--set {text!r}: name an account and a limit, e.g. "
                "account_overrides.acct-7.daily_loss=0.05"
            )
        _check_leaf(path, 3, AccountOverrides, text)
    elif len(path) != 1:
        raise ConfigError(f"--set {text!r}: {head} has no sub-settings")


def _check_leaf(path: tuple[str, ...], length: int, model: type[BaseModel], text: str) -> None:
    if len(path) != length:
        raise ConfigError(
            f"--set {text!r}: expected {'.'.join(path[: length - 1])}.<limit>; limits: "
            f"{', '.join(model.model_fields)}"
        )
    leaf = path[-1]
    if leaf not in model.model_fields:
        raise ConfigError(
            f"--set {text!r}: unknown limit {leaf!r}{_close(leaf, model.model_fields)}"
        )


def _close(name: str, known: Any) -> str:
    matches = difflib.get_close_matches(name, list(known), n=3)
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        shown = ""
        if where and error["type"] != "missing":
            got = repr(error["input"])
            shown = f" (got {got[:80]}{'...' if len(got) > 80 else ''})"
        parts.append(f"{where}: {error['msg']}{shown}" if where else error["msg"])
    return "; ".join(parts)
