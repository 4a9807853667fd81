"""Code reconciliation at the center: codes the network holds but never issued, and retired codes still in
use, are found behind the relay once each, in any arrival order of the origins (SQLite and PostgreSQL)."""

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine

from center.code_checker import CodeChecker
from jukinet.codes import resident_code_from_body
from jukinet.domain.model import ChangeEvent, ChangeReason, IdentityItems, Sex
from jukinet.observability.metrics import NodeMetrics
from jukinet.services.relay import CallInfo, apply_batch
from jukinet.storage import Store, make_engine, queries
from jukinet.storage.center_tx import CenterTx
from jukinet.storage.code_checks import (
    RETIRED_IN_USE,
    UNISSUED,
    anomaly_counts,
    anomaly_page,
    checked_through,
    find_anomalies,
    mark_checked,
    newest_event,
    record_anomalies,
    unchecked,
)
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc, relay_pb2, relay_pb2_grpc, types_pb2
from tests.helpers.nodes import channel, event, eventually, jukinet, start

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
A, B = "132080", "132187"
ISSUED = ("10000000001", "10000000002", "10000000003", "10000000004")  # check digits do not matter here
NEVER_ISSUED = "99999999999"
CALL = CallInfo(peer="jukinet://prefecture/13", request_id="r", method="/jukinet.wire.v1.RelayService/PushEvents")


def _event(origin: str, seq: int, code: str, reason: ChangeReason, day: int, previous: str = "") -> ChangeEvent:
    return ChangeEvent(
        origin=origin,
        seq=seq,
        resident_code=code,
        previous_code=previous,
        reason=reason,
        effective_date=dt.date(2026, 11, day),
        recorded_at=T0 + dt.timedelta(days=day, seconds=seq),
        items=IdentityItems("山田\u3000花子", dt.date(1990, 1, 2), Sex.FEMALE, f"東京都調布市小島町{day}番"),
    )


def _apply(engine: Engine, origin: str, events: list[ChangeEvent]) -> None:
    with engine.begin() as conn:
        apply_batch(CenterTx(conn), origin, events, CALL, T0)


def _center(db_factory: Callable[[str], str], name: str = "center") -> Engine:
    engine = make_engine(db_factory(name))
    with engine.begin() as conn:
        CenterTx(conn).insert_code_rows("issued_code", list(ISSUED), "block-1")
    return engine


def _check(engine: Engine, batch: int = 1000) -> int:
    new = 0
    with engine.begin() as conn:
        while (start := checked_through(conn)) < (newest := newest_event(conn)):
            through = min(newest, start + batch)
            new += record_anomalies(conn, find_anomalies(conn, start, through), through, T0)
    return new


def _found(engine: Engine) -> set[tuple[str, str, str]]:
    with engine.begin() as conn:
        return {(a.resident_code, a.kind, a.municipality) for a in anomaly_page(conn, before_id=None, limit=100)}


def test_a_code_the_center_never_issued_is_recorded_once(db_factory: Callable[[str], str]) -> None:
    engine = _center(db_factory)
    _apply(engine, A, [_event(A, 1, ISSUED[0], ChangeReason.BIRTH, 1)])
    _apply(engine, B, [_event(B, 1, NEVER_ISSUED, ChangeReason.MOVE_IN, 2)])
    assert _check(engine, batch=1) == 1
    assert _found(engine) == {(NEVER_ISSUED, UNISSUED, B)}
    with engine.begin() as conn:
        [anomaly] = anomaly_page(conn, before_id=None, limit=10)
        assert anomaly.origin == B
        assert anomaly.seq == 1
        assert "never issued" in anomaly.detail
        assert "move_in" in anomaly.detail
    # The same code again (a later correction at B): no second record; the cursor only moves forward.
    _apply(engine, B, [_event(B, 2, NEVER_ISSUED, ChangeReason.INTRA_MOVE, 3)])
    assert _check(engine) == 0
    with engine.begin() as conn:
        assert anomaly_counts(conn) == {UNISSUED: 1, RETIRED_IN_USE: 0}
        assert unchecked(conn) == 0
        assert record_anomalies(conn, [], 1, T0) == 0
        assert checked_through(conn) == 3
    engine.dispose()


def test_a_code_change_to_an_unissued_code_and_from_one_are_both_seen(db_factory: Callable[[str], str]) -> None:
    engine = _center(db_factory)
    _apply(
        engine,
        A,
        [
            _event(A, 1, ISSUED[0], ChangeReason.BIRTH, 1),
            _event(A, 2, "88888888888", ChangeReason.CODE_CHANGE, 2, previous=ISSUED[0]),  # to a code never issued
            _event(A, 3, ISSUED[1], ChangeReason.CODE_CHANGE, 3, previous="77777777777"),  # from one
        ],
    )
    _check(engine)
    assert _found(engine) == {("88888888888", UNISSUED, A), ("77777777777", UNISSUED, A)}
    engine.dispose()


def test_a_retired_code_registered_again_elsewhere_is_found_in_either_arrival_order(
    db_factory: Callable[[str], str],
) -> None:
    """A changes X -> Y on day 5; B registers a move-in with the old X on day 9 (a stale code)."""
    x, y = ISSUED[0], ISSUED[1]
    a_events = [
        _event(A, 1, x, ChangeReason.BIRTH, 1),
        _event(A, 2, y, ChangeReason.CODE_CHANGE, 5, previous=x),
        _event(A, 3, y, ChangeReason.MOVE_OUT, 8),
    ]
    b_events = [_event(B, 1, x, ChangeReason.MOVE_IN, 9)]
    for order in ((A, B), (B, A)):
        engine = _center(db_factory, "".join(order))
        for origin in order:
            _apply(engine, origin, a_events if origin == A else b_events)
            _check(engine)  # checked after each origin's batch, as the task does
        assert _found(engine) == {(x, RETIRED_IN_USE, B)}, order
        with engine.begin() as conn:
            [anomaly] = anomaly_page(conn, before_id=None, limit=10)
            assert f"code change at {A} on 2026-11-05 (replaced by {y})" in anomaly.detail
            assert f"active at {B} from 2026-11-09" in anomaly.detail
        engine.dispose()


def test_a_legitimate_move_then_code_change_is_not_an_anomaly_in_either_order(
    db_factory: Callable[[str], str],
) -> None:
    """X moves from A to B (day 3), then B changes X -> Y (day 6). A's move-out may arrive after B's code
    change: A's registration of X is active until then, but from before the change, so nothing is flagged."""
    x, y = ISSUED[2], ISSUED[3]
    a_events = [_event(A, 1, x, ChangeReason.BIRTH, 1), _event(A, 2, x, ChangeReason.MOVE_OUT, 3)]
    b_events = [
        _event(B, 1, x, ChangeReason.MOVE_IN, 3),
        _event(B, 2, y, ChangeReason.CODE_CHANGE, 6, previous=x),
    ]
    for order in ((A, B), (B, A)):
        engine = _center(db_factory, "".join(order))
        for origin in order:
            _apply(engine, origin, a_events[:1] if origin == A else b_events)  # A's move-out held back
            _check(engine)
        _apply(engine, A, a_events[1:])
        _check(engine)
        assert _found(engine) == set(), order
        engine.dispose()


async def test_the_center_task_checks_behind_the_relay_and_sets_the_gauge(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'center.db'}")
    try:
        with store.engine.begin() as conn:
            CenterTx(conn).insert_code_rows("issued_code", list(ISSUED), "block-1")
        _apply(store.engine, A, [_event(A, i + 1, code, ChangeReason.BIRTH, 1) for i, code in enumerate(ISSUED)])
        with store.engine.begin() as conn:
            mark_checked(conn, 2)  # as a bench preload does: the first two events count as checked
        _apply(store.engine, B, [_event(B, 1, NEVER_ISSUED, ChangeReason.MOVE_IN, 2)])
        metrics = NodeMetrics()
        checker = CodeChecker(store, metrics, batch=2)
        assert await checker.catch_up() == 1
        assert await checker.catch_up() == 0
        assert metrics.code_anomalies.labels(UNISSUED)._value.get() == 1
        assert metrics.code_anomalies.labels(RETIRED_IN_USE)._value.get() == 0
        with store.engine.begin() as conn:
            assert checked_through(conn) == 5
    finally:
        store.close()


async def test_operators_list_anomalies_at_the_center_and_only_there(pki_dir: Path, tmp_path: Path) -> None:
    """A prefecture relays a move-in with a code the center never issued: the center applies it (the
    relay never blocks), finds it within a second, and a clerk lists it (RPC and CLI); a viewer may not,
    and a prefecture says the center is the one to ask."""
    center = await start("center", "", f"sqlite:///{tmp_path / 'c.db'}", pki_dir)
    prefecture = await start("prefecture", "13", f"sqlite:///{tmp_path / 'p.db'}", pki_dir, upstream=center.address)
    code = resident_code_from_body("7000000007")
    try:
        async with channel(pki_dir, "jukinet://prefecture/13", center.address) as ch:
            push = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
                iter([relay_pb2.PushEventsRequest(origin=B, events=[event(1, code, types_pb2.CHANGE_REASON_MOVE_IN)])])
            )
            assert [reply.acked_seq async for reply in push] == [1]
        async with channel(pki_dir, "jukinet://operator/center/clerk", center.address) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)

            async def listed() -> list[admin_pb2.CodeAnomaly]:
                reply = await stub.ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest(), timeout=5)
                return list(reply.anomalies)

            await eventually(listed)
            [anomaly] = await listed()
            assert (anomaly.resident_code, anomaly.kind, anomaly.municipality_code) == (code, UNISSUED, B)
            assert (anomaly.origin, anomaly.seq) == (B, 1)
            none = await stub.ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest(kind=RETIRED_IN_USE), timeout=5)
            assert list(none.anomalies) == []
            assert none.unchecked_events == 0
            with pytest.raises(grpc.aio.AioRpcError) as bad_kind:
                await stub.ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest(kind="other"), timeout=5)
            assert bad_kind.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        async with channel(pki_dir, "jukinet://operator/center/viewer", center.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as viewer:
                await admin_pb2_grpc.AdminServiceStub(ch).ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest())
            assert viewer.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "needs clerk" in (viewer.value.details() or "")
        async with channel(pki_dir, "jukinet://operator/prefecture-13/t", prefecture.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
                await admin_pb2_grpc.AdminServiceStub(ch).ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest())
            assert elsewhere.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "only the center" in (elsewhere.value.details() or "")
        exit_code, out, err = await jukinet(
            "codes",
            "anomalies",
            "--node",
            center.address,
            "--pki-dir",
            str(pki_dir),
            "--as",
            "jukinet://operator/center/clerk",
            "--json",
        )
        assert exit_code == 0, err
        [line] = out.splitlines()
        assert json.loads(line) | {"id": 0, "detected": ""} == {
            "id": 0,
            "detected": "",
            "resident_code": code,
            "kind": UNISSUED,
            "municipality_code": B,
            "event": f"{B}#1",
            "detail": f"never issued by the center; first seen in {B}#1 (move_in)",
        }
        logged = await center.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=50))
        reads = [e for _, e in logged if e.method.endswith("ListCodeAnomalies") and e.outcome == "OK"]
        assert (code,) in [tuple(e.subjects) for e in reads]  # a read is logged with the codes it showed
    finally:
        for node in (prefecture, center):
            await node.stop()
