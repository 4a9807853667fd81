"""Shared fixtures: a throwaway network CA, database URLs (SQLite file, PostgreSQL database per test),
and in-process nodes on 127.0.0.1 with real TLS."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jukinet.domain.identity import NodeId, Role
from jukinet.pki import create_ca, ensure, slug

PG_ADMIN_URL = os.environ.get("JUKINET_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

IDENTITIES = [
    NodeId(Role.CENTER),
    NodeId(Role.PREFECTURE, "13"),
    NodeId(Role.PREFECTURE, "01"),
    NodeId(Role.MUNICIPALITY, "132080"),
    NodeId(Role.MUNICIPALITY, "132187"),
    NodeId(Role.MUNICIPALITY, "012084"),
    NodeId(Role.REGISTER, "132080"),
    NodeId(Role.REGISTER, "132187"),
    NodeId(Role.REGISTER, "012084"),
    NodeId(Role.AGENCY, "pension"),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    create_ca(directory)
    for identity in IDENTITIES:
        ensure(directory, identity)
        if identity.role in (Role.CENTER, Role.PREFECTURE, Role.MUNICIPALITY):
            ensure(directory, NodeId(Role.OPERATOR, "t", slug(identity)), role="security-admin")
            ensure(directory, NodeId(Role.OPERATOR, "viewer", slug(identity)), role="viewer")
            ensure(directory, NodeId(Role.OPERATOR, "clerk", slug(identity)), role="clerk")
    return directory


@pytest.fixture(scope="session")
def foreign_pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA issuing the very same identities: must be refused everywhere."""
    directory = tmp_path_factory.mktemp("foreign-pki")
    create_ca(directory, name="not the jukinet CA")
    for identity in IDENTITIES:
        ensure(directory, identity)
    return directory


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return None
    except Exception as error:
        return str(error)


def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    problem = _postgres_available()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is unreachable under CI: {problem}")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {problem}")
    name = f"jukinet_t_{uuid.uuid4().hex[:12]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_factory(backend: str, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Makes a fresh database URL of the test's backend per call; PostgreSQL ones are dropped afterwards."""
    cleanups: list[Iterator[str]] = []

    def make(name: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / (name + '.db')}"
        generator = postgres_database()
        cleanups.append(generator)
        return next(generator)

    yield make
    for generator in cleanups:
        with contextlib.suppress(StopIteration):
            next(generator)


@pytest.fixture
def database_url(db_factory: Callable[[str], str]) -> str:
    return db_factory("node")
