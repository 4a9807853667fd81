"""Fixtures the integration tests share besides the root conftest's."""

from tests.helpers.center_db import engine as engine  # a fixture: a fresh center database on the test's backend
