"""The center's code pools: random, valid, never issued twice (across restarts), idempotent per request."""

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import func, select

from center import codepool
from center.codepool import allocate
from jukinet.codes import valid_resident_code
from jukinet.domain.errors import InvalidField
from jukinet.domain.model import ChangeReason, IdentityItems, Registration, Sex
from jukinet.rpc.error_details import details_of
from jukinet.services.relay import CallInfo
from jukinet.storage import SqlTx, make_engine, queries
from jukinet.storage.rows import registration_tuple
from jukinet.storage.schema import issued_code
from jukinet.wire.v1 import codepool_pb2, codepool_pb2_grpc
from tests.helpers.nodes import channel, start

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


def test_random_codes_are_valid_distinct_draws() -> None:
    codes = codepool.random_codes(20_000)
    assert len(codes) == 20_000
    assert all(valid_resident_code(c) for c in codes)
    assert len(set(codes)) > 19_990  # 10^10 bodies: a repeat among 20,000 draws is rare, many would be a bug
    assert codes != sorted(codes)  # handed out in the order drawn
    assert codepool._UNBIASED_BELOW % 10**10 == 0
    assert codepool._UNBIASED_BELOW <= 256**codepool._DRAW_BYTES


def test_a_pool_skips_codes_drawn_twice_or_issued_before(
    db_factory: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draws are scripted: repeats within a draw, across draws, of earlier pools, and codes registered
    somewhere without coming from a pool never reach a pool."""
    engine = make_engine(db_factory("center"))
    with engine.begin() as conn:
        _, earlier = allocate(conn, request="a", municipality="132080", count=3, call=CALL, now=NOW)
    fresh = [c for c in codepool.random_codes(10) if c not in earlier]
    registered = fresh.pop()  # recorded by a municipality, never issued by the center
    items = IdentityItems("山田\u3000太郎", dt.date(1980, 4, 1), Sex.MALE, "東京都調布市1")
    with engine.begin() as conn:
        reg = Registration(registered, "132187", items, True, ChangeReason.EX_OFFICIO_RECORD, NOW.date(), NOW, 1)
        SqlTx(conn).upsert_registration_rows([registration_tuple(reg)])
    draws = iter(
        [[fresh[0], earlier[0], fresh[0], fresh[1]], [earlier[2], registered], [fresh[2], fresh[1]], [fresh[3]]]
    )

    def scripted(count: int) -> list[str]:
        draw = next(draws)
        assert len(draw) <= count
        return draw

    monkeypatch.setattr(codepool, "random_codes", scripted)
    with engine.begin() as conn:
        _, codes = allocate(conn, request="b", municipality="132187", count=4, call=CALL, now=NOW)
    engine.dispose()
    assert codes == fresh[:4]


def test_a_repeated_request_returns_the_same_pool(db_factory: Callable[[str], str]) -> None:
    engine = make_engine(db_factory("center"))
    with engine.begin() as conn:
        block, codes = allocate(conn, request="same", municipality="132080", count=50, call=CALL, now=NOW)
        again_block, again = allocate(conn, request="same", municipality="132080", count=50, call=CALL, now=NOW)
        assert again_block == block
        assert sorted(again) == sorted(codes)
        assert again != sorted(again)  # never replayed in code order (which would reveal registration order)
        with pytest.raises(InvalidField):
            allocate(conn, request="same", municipality="132187", count=50, call=CALL, now=NOW)
    engine.dispose()


async def test_a_prefecture_answers_and_logs_the_centers_refusal_as_its_own(pki_dir: Path, tmp_path: Path) -> None:
    """The prefecture relays a pool request the center refuses (a count out of range): the municipality gets
    INVALID_ARGUMENT with the center's words and reason, and the prefecture's access log records it."""
    center = await start("center", "", f"sqlite:///{tmp_path / 'c.db'}", pki_dir)
    prefecture = await start("prefecture", "13", f"sqlite:///{tmp_path / 'p.db'}", pki_dir, upstream=center.address)
    try:
        async with channel(pki_dir, "jukinet://municipality/132080", prefecture.address) as ch:
            request = codepool_pb2.AllocateCodesRequest(
                request_id="too-many", municipality_code="132080", count=10_000_000
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await codepool_pb2_grpc.CodePoolServiceStub(ch).AllocateCodes(
                    request, metadata=(("x-request-id", "too-many"),), timeout=30
                )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        details = caught.value.details() or ""
        assert details.startswith("the center refused it (INVALID_FIELD): count: must be between 1 and"), details
        rich = details_of(caught.value.trailing_metadata())
        assert rich is not None
        info = error_details_pb2.ErrorInfo()
        assert [d.Unpack(info) for d in rich.details if d.Is(info.DESCRIPTOR)] == [True]
        assert info.reason == "UPSTREAM_REFUSED"
        log = await prefecture.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=10))
        refused = [e for _, e in log if e.method.endswith("/AllocateCodes") and e.direction == "served"]
        assert [(e.request_id, e.outcome) for e in refused] == [("too-many", "INVALID_ARGUMENT")]
    finally:
        await prefecture.stop()
        await center.stop()


def test_a_municipality_takes_codes_from_the_head_of_its_pool_only(db_factory: Callable[[str], str]) -> None:
    engine = make_engine(db_factory("municipality"))
    pool = codepool.random_codes(6)
    with engine.begin() as conn:
        SqlTx(conn).insert_code_rows("free_code", pool, "block-1")
    with engine.begin() as conn:
        tx = SqlTx(conn)
        head = tx.peek_free_codes(2)
        tx.remove_free_codes(head)
        assert head == pool[:2]
        assert tx.peek_free_codes(10) == pool[2:]
    with pytest.raises(RuntimeError, match="not the pool's first"), engine.begin() as conn:
        SqlTx(conn).remove_free_codes([pool[3]])  # skips pool[2]: the transaction rolls back
    with engine.begin() as conn:
        assert SqlTx(conn).peek_free_codes(10) == pool[2:]
    engine.dispose()
