"""Shared pytest set-up. Fixtures live in ``tests/fixtures/`` modules, registered here."""

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.sim", "tests.fixtures.venues"]
