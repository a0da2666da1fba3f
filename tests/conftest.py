"""Shared pytest set-up. Fixtures live in ``tests/fixtures/`` modules, registered here."""

from loguru import logger

import ess

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.sim", "tests.fixtures.venues"]

# The tests run ESS as a program does, its logs on: importing ess as a library turns them off
# (see ess/__init__.py), and many tests assert what ESS logged.
logger.enable(ess.__name__)
