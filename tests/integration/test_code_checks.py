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
from jukinet.domain.errors import AlreadyResolved, NotFoundError
from jukinet.domain.model import ChangeEvent, ChangeReason, IdentityItems, Sex, event_row
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
    newest_event,
    record_anomalies,
    resolve_anomaly,
    unchecked,
)
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc, relay_pb2, relay_pb2_grpc, types_pb2
from tests.helpers.nodes import channel, event, eventually, jukinet, start

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
A, B = "132080", "132187"
ISSUED = ("10000000001", "10000000002", "10000000003", "10000000004")  # check digits do not matter here
NEVER_ISSUED = "99999999999"
CALL = CallInfo(peer="jukinet://prefecture/13", request_id="r", method="/jukinet.wire.v1.RelayService/PushEvents")


def _event(
    origin: str,
    seq: int,
    code: str,
    reason: ChangeReason,
    day: int,
    previous: str = "",
    *,
    recorded_day: int | None = None,
) -> ChangeEvent:
    """Effective on 2026-11-<day>, recorded by the municipality that day (or on recorded_day) at 09:00 JST."""
    recorded = T0 + dt.timedelta(days=day if recorded_day is None else recorded_day, seconds=seq)
    return ChangeEvent(
        origin=origin,
        seq=seq,
        resident_code=code,
        previous_code=previous,
        reason=reason,
        effective_date=dt.date(2026, 11, day),
        recorded_at=recorded,
        items=IdentityItems("山田\u3000花子", dt.date(1990, 1, 2), Sex.FEMALE, f"東京都調布市小島町{day}番"),
    )


def _apply(engine: Engine, origin: str, events: list[ChangeEvent]) -> None:
    with engine.begin() as conn:
        apply_batch(CenterTx(conn), origin, [event_row(e) for e in events], CALL, T0)


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


def _arrivals(
    db_factory: Callable[[str], str], a_events: list[ChangeEvent], b_events: list[ChangeEvent]
) -> list[set[tuple[str, str, str]]]:
    """What is found for each arrival order of the two origins, checked after each origin's batch (each
    event of a pair in its own range) or once after both."""
    results = []
    for order in ((A, B), (B, A)):
        for check_between in (True, False):
            engine = _center(db_factory, "".join(order) + str(check_between))
            for origin in order:
                _apply(engine, origin, a_events if origin == A else b_events)
                if check_between:
                    _check(engine)
            _check(engine)
            results.append(_found(engine))
            engine.dispose()
    return results


def test_a_retired_code_registered_again_is_found_whatever_the_arrival_order_and_check_timing(
    db_factory: Callable[[str], str],
) -> None:
    """A changes X -> Y (recorded day 5); B then records a move-in with the stale X (day 9)."""
    x, y = ISSUED[0], ISSUED[1]
    a_events = [
        _event(A, 1, x, ChangeReason.BIRTH, 1),
        _event(A, 2, y, ChangeReason.CODE_CHANGE, 5, previous=x),
        _event(A, 3, y, ChangeReason.MOVE_OUT, 8),
    ]
    b_events = [_event(B, 1, x, ChangeReason.MOVE_IN, 9)]
    assert _arrivals(db_factory, a_events, b_events) == [{(x, RETIRED_IN_USE, B)}] * 4
    engine = _center(db_factory, "detail")
    _apply(engine, A, a_events)
    _apply(engine, B, b_events)
    _check(engine)
    with engine.begin() as conn:
        [anomaly] = anomaly_page(conn, before_id=None, limit=10)
    assert (anomaly.origin, anomaly.seq) == (B, 1)  # the event that used the retired code, not A's birth
    assert anomaly.replaced_by == y  # the resident's current code: logged as a subject when an operator reads it
    assert f"retired by code change {A}#2 (recorded 2026-11-06 09:00 JST, replaced by {y})" in anomaly.detail
    assert f"registered again by move_in {B}#1 (recorded 2026-11-10 09:00 JST)" in anomaly.detail
    engine.dispose()


def test_a_backdated_move_in_and_one_followed_by_a_death_are_found_too(db_factory: Callable[[str], str]) -> None:
    """The 転入 is effective on day 3, before A's code change on day 5, but recorded on day 9, after it:
    effective dates may go back to the move, recording times do not. B's death entry on day 10, in the
    same push, does not hide it."""
    x, y = ISSUED[0], ISSUED[1]
    a_events = [
        _event(A, 1, x, ChangeReason.BIRTH, 1),
        _event(A, 2, y, ChangeReason.CODE_CHANGE, 5, previous=x),
        _event(A, 3, y, ChangeReason.MOVE_OUT, 3, recorded_day=6),
    ]
    b_events = [_event(B, 1, x, ChangeReason.MOVE_IN, 3, recorded_day=9), _event(B, 2, x, ChangeReason.DEATH, 10)]
    assert _arrivals(db_factory, a_events, b_events) == [{(x, RETIRED_IN_USE, B)}] * 4


def test_a_code_change_to_a_retired_code_is_found(db_factory: Callable[[str], str]) -> None:
    x, y, z = ISSUED[0], ISSUED[1], ISSUED[2]
    a_events = [_event(A, 1, x, ChangeReason.BIRTH, 1), _event(A, 2, y, ChangeReason.CODE_CHANGE, 5, previous=x)]
    b_events = [_event(B, 1, z, ChangeReason.BIRTH, 2), _event(B, 2, x, ChangeReason.CODE_CHANGE, 7, previous=z)]
    assert _arrivals(db_factory, a_events, b_events) == [{(x, RETIRED_IN_USE, B)}] * 4


def test_legitimate_moves_and_code_changes_are_not_anomalies_in_any_order(db_factory: Callable[[str], str]) -> None:
    """X moves from A to B, then B changes X -> Y; A's last entries (a correction before the move, and its
    move-out, recorded late) may arrive after B's code change. Then the resident moves back to A with Y."""
    x, y = ISSUED[2], ISSUED[3]
    a_events = [
        _event(A, 1, x, ChangeReason.BIRTH, 1),
        _event(A, 2, x, ChangeReason.INTRA_MOVE, 5),
        _event(A, 3, x, ChangeReason.MOVE_OUT, 5, recorded_day=8),  # after B's code change (day 7)
        _event(A, 4, y, ChangeReason.MOVE_IN, 9),
    ]
    b_events = [
        _event(B, 1, x, ChangeReason.MOVE_IN, 5, recorded_day=6),
        _event(B, 2, y, ChangeReason.CODE_CHANGE, 7, previous=x),
        _event(B, 3, y, ChangeReason.MOVE_OUT, 9),
    ]
    assert _arrivals(db_factory, a_events, b_events) == [set()] * 4


def test_an_anomaly_is_resolved_once_and_leaves_the_open_list(db_factory: Callable[[str], str]) -> None:
    engine = _center(db_factory)
    _apply(
        engine,
        B,
        [_event(B, 1, NEVER_ISSUED, ChangeReason.MOVE_IN, 2), _event(B, 2, "88888888888", ChangeReason.BIRTH, 3)],
    )
    _check(engine)
    later = T0 + dt.timedelta(days=3)
    with engine.begin() as conn:
        [newest, oldest] = anomaly_page(conn, before_id=None, limit=10)
        done = resolve_anomaly(
            conn, oldest.id, by="jukinet://operator/center/clerk", resolution="職権修正 done", now=later
        )
        assert (done.resolved_at, done.resolved_by, done.resolution) == (
            later,
            "jukinet://operator/center/clerk",
            "職権修正 done",
        )
        assert [a.id for a in anomaly_page(conn, before_id=None, limit=10)] == [newest.id]
        assert [a.id for a in anomaly_page(conn, before_id=None, limit=10, include_resolved=True)] == [
            newest.id,
            oldest.id,
        ]
        assert anomaly_counts(conn) == {UNISSUED: 1, RETIRED_IN_USE: 0}
        with pytest.raises(AlreadyResolved, match="resolved by jukinet://operator/center/clerk"):
            resolve_anomaly(conn, oldest.id, by="someone else", resolution="again", now=later)
        with pytest.raises(NotFoundError):
            resolve_anomaly(conn, 999, by="x", resolution="y", now=later)
    _apply(engine, B, [_event(B, 3, NEVER_ISSUED, ChangeReason.INTRA_MOVE, 4)])
    _check(engine)  # the same code again: it stays resolved, no second record
    with engine.begin() as conn:
        assert [a.id for a in anomaly_page(conn, before_id=None, limit=10)] == [newest.id]
    engine.dispose()


async def test_the_center_task_checks_behind_the_relay_and_sets_the_gauge(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'center.db'}")
    try:
        with store.engine.begin() as conn:
            CenterTx(conn).insert_code_rows("issued_code", list(ISSUED), "block-1")
        _apply(store.engine, A, [_event(A, 1, "66666666666", ChangeReason.BIRTH, 1)])  # never issued, but
        _apply(store.engine, A, [_event(A, i + 2, code, ChangeReason.BIRTH, 1) for i, code in enumerate(ISSUED)])
        with store.engine.begin() as conn:
            record_anomalies(conn, [], 2, T0)  # as a bench preload does: the first two events count as checked
        _apply(store.engine, B, [_event(B, 1, NEVER_ISSUED, ChangeReason.MOVE_IN, 2)])
        metrics = NodeMetrics()
        checker = CodeChecker(store, metrics, batch=2)
        assert await checker.catch_up() == 1
        assert await checker.catch_up() == 0
        assert metrics.code_anomalies.labels(UNISSUED)._value.get() == 1
        assert metrics.code_anomalies.labels(RETIRED_IN_USE)._value.get() == 0
        with store.engine.begin() as conn:
            assert checked_through(conn) == 6
        assert {a.resident_code for a in await store.read(lambda c: anomaly_page(c, before_id=None, limit=9))} == {
            NEVER_ISSUED
        }
    finally:
        store.close()


async def test_operators_list_anomalies_at_the_center_and_only_there(pki_dir: Path, tmp_path: Path) -> None:
    """A prefecture relays a move-in with a code the center never issued: the center applies it (the
    relay never blocks), finds it within a second, and a clerk lists it (RPC and CLI); a viewer may not,
    and a prefecture says the center is the one to ask."""
    center = await start("center", "", f"sqlite:///{tmp_path / 'c.db'}", pki_dir)
    prefecture = await start("prefecture", "13", f"sqlite:///{tmp_path / 'p.db'}", pki_dir, upstream=center.address)
    code = resident_code_from_body("7000000007")

    async def listed(at_least: int = 1) -> list[admin_pb2.CodeAnomaly]:
        async with channel(pki_dir, "jukinet://operator/center/clerk", center.address) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            reply = await stub.ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest(), timeout=5)
        return list(reply.anomalies) if len(reply.anomalies) >= at_least else []

    try:
        async with channel(pki_dir, "jukinet://prefecture/13", center.address) as ch:
            push = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
                iter([relay_pb2.PushEventsRequest(origin=B, events=[event(1, code, types_pb2.CHANGE_REASON_MOVE_IN)])])
            )
            assert [reply.acked_seq async for reply in push] == [1]
        async with channel(pki_dir, "jukinet://operator/center/clerk", center.address) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)

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
        more = [resident_code_from_body(f"700000000{n}") for n in (8, 9)]
        async with channel(pki_dir, "jukinet://prefecture/13", center.address) as ch:
            push = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
                iter([relay_pb2.PushEventsRequest(origin=B, events=[event(2, more[0]), event(3, more[1])])])
            )
            assert [reply.acked_seq async for reply in push] == [3]
        async with channel(pki_dir, "jukinet://operator/center/clerk", center.address) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            await eventually(lambda: listed(3))
            first = await stub.ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest(page_size=2), timeout=5)
            second = await stub.ListCodeAnomalies(
                admin_pb2.ListCodeAnomaliesRequest(page_size=2, page_token=first.next_page_token), timeout=5
            )
            assert [a.resident_code for a in (*first.anomalies, *second.anomalies)] == [more[1], more[0], code]
            assert first.next_page_token
            assert not second.next_page_token
            with pytest.raises(grpc.aio.AioRpcError) as negative:
                await stub.ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest(page_size=-1), timeout=5)
            assert negative.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        first_id = str(second.anomalies[-1].id)
        cli = ("--node", center.address, "--pki-dir", str(pki_dir), "--as", "jukinet://operator/center/clerk")
        exit_code, out, err = await jukinet("codes", "resolve", first_id, "--resolution", "職権修正 by 132187", *cli)
        assert exit_code == 0, err
        assert f"resolved by jukinet://operator/center/clerk: 職権修正 by {B}" in out
        exit_code, _, err = await jukinet("codes", "resolve", first_id, "--resolution", "again", *cli)
        assert exit_code == 1
        assert "FAILED_PRECONDITION" in err
        assert "was resolved by jukinet://operator/center/clerk" in err
        _, out, _ = await jukinet("codes", "anomalies", "--json", *cli)
        assert [json.loads(line)["resident_code"] for line in out.splitlines()] == [more[1], more[0]]
        _, out, _ = await jukinet("codes", "anomalies", "--json", "--all", *cli)
        resolved = [json.loads(line) for line in out.splitlines()][-1]
        assert (resolved["resident_code"], resolved["resolution"]) == (code, f"職権修正 by {B}")
        async with channel(pki_dir, "jukinet://operator/center/clerk", center.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as empty:
                await admin_pb2_grpc.AdminServiceStub(ch).ResolveCodeAnomaly(
                    admin_pb2.ResolveCodeAnomalyRequest(id=int(first_id)), timeout=5
                )
            assert empty.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        async with channel(pki_dir, "jukinet://operator/center/viewer", center.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as viewer_resolves:
                await admin_pb2_grpc.AdminServiceStub(ch).ResolveCodeAnomaly(
                    admin_pb2.ResolveCodeAnomalyRequest(id=int(first_id), resolution="x"), timeout=5
                )
            assert viewer_resolves.value.code() is grpc.StatusCode.PERMISSION_DENIED
        logged = await center.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=50))
        resolves = [(e.outcome, tuple(e.subjects)) for _, e in logged if e.method.endswith("ResolveCodeAnomaly")]
        assert ("OK", (code,)) in resolves  # logged with the code, in the transaction that resolved it
        assert len([o for o, _ in resolves if o == "OK"]) == 1
    finally:
        for node in (prefecture, center):
            await node.stop()
