"""Which environment variables ESS reads, and what it says about the others.

Every setting's variables come from the sections themselves (:meth:`Section.env_names`), so
this table cannot drift from the settings. :func:`check_environment` compares an environment
with it: an ``ESS_*`` variable nothing reads is almost always a typo or a renamed setting,
which would otherwise leave a default in force without a word (for a kill switch, a
silently ignored threshold or timeout is a real hazard).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, MutableSet
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dotenv import dotenv_values
from loguru import logger
from pydantic import BaseModel

from ess.settings.sections import Section
from ess.venues.config import declared_env_names

__all__ = [
    "OTHER_VARIABLES",
    "Deprecation",
    "EnvReport",
    "Unknown",
    "Variable",
    "check_environment",
    "env_table",
    "process_environment",
    "section_inputs",
    "warn_environment",
]

#: ``ESS_*`` variables read outside the settings tree, and by what.
OTHER_VARIABLES: Final[Mapping[str, str]] = {
    "ESS_VENUES_FILE": "the execute role's venue list, a TOML or JSON file "
    "(ess.venues.config.load_venues)",
    "ESS_VENUES": "the execute role's venue list as inline JSON (ess.venues.config.load_venues)",
}
#: Variables of ESS's own test suite (tests/fixtures), never read by ESS itself.
_TEST_PREFIX: Final = "ESS_TEST_"
#: A venue's default credential variables (:meth:`ess.venues.config.VenueConfig.env_names`).
_VENUE_CREDENTIAL: Final = re.compile(
    r"^ESS_VENUE_[A-Z0-9_]+_(?:API_KEY|SECRET|PASSWORD|PASSPHRASE)$"
)
#: How close an unknown name must be to a setting's to be suggested (difflib ratio).
_SUGGEST_CUTOFF: Final = 0.75

#: Names :func:`warn_environment` has warned about in this process (it warns once per name).
_WARNED: set[str] = set()


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable of a setting: ``<section>.<field>``."""

    name: str
    section: str
    field: str
    #: An old name, still read for one release, that :attr:`replacement` supersedes.
    deprecated: bool = False
    replacement: str | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """An ``ESS_*`` variable nothing reads, with the closest real one when there is one."""

    name: str
    suggestion: str | None


@dataclass(frozen=True, slots=True)
class Deprecation:
    """A deprecated variable that is set; ``ignored`` when its replacement is set too."""

    name: str
    replacement: str
    ignored: bool


@dataclass(frozen=True, slots=True)
class EnvReport:
    unknown: tuple[Unknown, ...]
    deprecated: tuple[Deprecation, ...]


def sections(root: type[BaseModel]) -> Iterator[tuple[str, type[Section]]]:
    """``(field name, section class)`` of every section of the settings root."""
    for name, field in root.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, Section):
            yield name, section


def env_table(root: type[BaseModel]) -> tuple[Variable, ...]:
    """Every variable of every setting of ``root``, current names first, then deprecated."""
    current: list[Variable] = []
    old: list[Variable] = []
    for section_name, section in sections(root):
        for field in section.model_fields:
            current += [Variable(name, section_name, field) for name in section.env_names(field)]
        for name, field in section.deprecated_env.items():
            replacement = section.env_names(field)[0]
            old.append(
                Variable(name, section_name, field, deprecated=True, replacement=replacement)
            )
    return (*current, *old)


def process_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """The variables settings are read from: ``env_file`` (when it exists) overridden by the
    process environment, with upper-case names (settings match names case-insensitively)."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        merged.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update({k.upper(): v for k, v in os.environ.items()})
    return merged


def section_inputs(root: type[BaseModel], environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """What the environment sets, as ``{section: {field: raw value}}`` for validation.

    For each field the first of its variables that is set wins; a deprecated name counts only
    when none of the current ones is set. A blank value counts as unset (compose files write
    ``NAME=`` for "not set")."""
    table = env_table(root)
    values: dict[str, dict[str, str]] = {}
    for variable in sorted(table, key=lambda v: v.deprecated):  # current names first
        raw = environ.get(variable.name)
        if raw is None or not raw.strip():
            continue
        values.setdefault(variable.section, {}).setdefault(variable.field, raw)
    return values


def check_environment(
    root: type[BaseModel],
    environ: Mapping[str, str],
    *,
    venue_env: frozenset[str] = frozenset(),
) -> EnvReport:
    """Unknown ``ESS_*`` variables and deprecated ones in ``environ`` (upper-case names).

    Known are: every setting's variables (deprecated ones included), :data:`OTHER_VARIABLES`,
    the test suite's ``ESS_TEST_*``, venue credentials (``ESS_VENUE_<NAME>_API_KEY``,
    ``_SECRET``, ``_PASSWORD``) and ``venue_env``, the credential variables the configured venues
    name."""
    table = env_table(root)
    known = {v.name for v in table} | set(OTHER_VARIABLES) | venue_env
    suggestions = sorted({v.name for v in table if not v.deprecated} | set(OTHER_VARIABLES))
    unknown = []
    for name in sorted(environ):
        if not name.startswith("ESS_") or name in known or name.startswith(_TEST_PREFIX):
            continue
        if _VENUE_CREDENTIAL.match(name):
            continue
        close = difflib.get_close_matches(name, suggestions, n=1, cutoff=_SUGGEST_CUTOFF)
        unknown.append(Unknown(name, close[0] if close else None))
    deprecated = []
    for old in (v for v in table if v.deprecated and v.replacement and v.name in environ):
        assert old.replacement is not None
        current = [
            v.name
            for v in table
            if not v.deprecated and (v.section, v.field) == (old.section, old.field)
        ]
        ignored = any(environ.get(name, "").strip() for name in current)
        deprecated.append(Deprecation(old.name, old.replacement, ignored))
    return EnvReport(tuple(unknown), tuple(deprecated))


def warn_environment(
    root: type[BaseModel],
    environ: Mapping[str, str] | None = None,
    *,
    warned: MutableSet[str] | None = None,
) -> EnvReport:
    """Log a WARNING for each unknown and each deprecated variable of ``environ`` (default:
    :func:`process_environment`), once per name and process (``warned`` holds the names
    already warned about). Returns the whole report."""
    env = process_environment() if environ is None else {k.upper(): v for k, v in environ.items()}
    seen = _WARNED if warned is None else warned
    report = check_environment(root, env, venue_env=declared_env_names(env))
    for unknown in report.unknown:
        if unknown.name in seen:
            continue
        seen.add(unknown.name)
        hint = f"; did you mean {unknown.suggestion}?" if unknown.suggestion else ""
        logger.bind(variable=unknown.name, suggestion=unknown.suggestion).warning(
            f"{unknown.name} is set but no ESS setting reads it{hint}"
        )
    for old in report.deprecated:
        if old.name in seen:
            continue
        seen.add(old.name)
        if old.ignored:
            message = f"{old.name} is deprecated and ignored: {old.replacement} is set"
        else:
            message = (
                f"{old.name} is deprecated: rename it {old.replacement} "
                "(the old name is read for this release only)"
            )
        logger.bind(variable=old.name, replacement=old.replacement).warning(message)
    return report
