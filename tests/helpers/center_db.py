"""A center database for storage-level tests (SQLite file or PostgreSQL, per the `backend` parameter), work in
a transaction that is rolled back, and text that stored rows must bring back exactly."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine

from jukinet.storage import make_engine

# Text a record may hold (validated at the edge: no NUL), with what JSON has to escape or encode: the packed
# reads on SQLite (SqlTx._registration_rows, SqlTx.events_of, CenterTx._packed) must return it unchanged.
AWKWARD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30) | st.sampled_from(
    ('"quoted"', "back\\slash", "tab\there", "line\nbreak", "𠮷野家", "\u3000全角\u3000", "\\u0041")
)


@pytest.fixture
def engine(db_factory: Callable[[str], str]) -> Iterator[Engine]:
    """A fresh center database (its tables created), disposed of afterwards."""
    engine = make_engine(db_factory("center"))
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def rolled_back(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that is rolled back on the way out (hypothesis examples share a database)."""
    with engine.connect() as conn:
        conn.begin()
        try:
            yield conn
        finally:
            conn.rollback()
