"""The center's code pools: random, valid, never issued twice (across restarts), idempotent per request."""

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from center.codepool import allocate
from jukinet.codes import valid_resident_code
from jukinet.domain.errors import InvalidField
from jukinet.services.relay import CallInfo
from jukinet.storage import make_engine
from jukinet.storage.schema import issued_code

CALL = CallInfo("jukinet://prefecture/13", "r", "/jukinet.wire.v1.CodePoolService/AllocateCodes")
NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


def test_pools_are_valid_distinct_and_survive_a_restart(db_factory: Callable[[str], str]) -> None:
    url = db_factory("center")
    engine = make_engine(url)
    with engine.begin() as conn:
        _, first = allocate(conn, request="a", municipality="132080", count=3000, call=CALL, now=NOW)
    engine.dispose()
    engine = make_engine(url)  # a restarted center
    with engine.begin() as conn:
        _, second = allocate(conn, request="b", municipality="132187", count=3000, call=CALL, now=NOW)
        total = conn.execute(select(func.count()).select_from(issued_code)).scalar()
    engine.dispose()
    assert all(valid_resident_code(c) for c in first + second)
    assert len(set(first) | set(second)) == 6000
    assert total == 6000


def test_a_repeated_request_returns_the_same_pool(db_factory: Callable[[str], str]) -> None:
    engine = make_engine(db_factory("center"))
    with engine.begin() as conn:
        block, codes = allocate(conn, request="same", municipality="132080", count=50, call=CALL, now=NOW)
        again = allocate(conn, request="same", municipality="132080", count=50, call=CALL, now=NOW)
        assert again == (block, sorted(codes))
        with pytest.raises(InvalidField):
            allocate(conn, request="same", municipality="132187", count=50, call=CALL, now=NOW)
    engine.dispose()
