"""Municipality -> prefecture -> center over real mutual TLS on 127.0.0.1, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from jukinet.codes import local_gov_check_digit, resident_code_from_body
from jukinet.domain.registry_state import Status, current_record
from jukinet.rpc.error_details import reason_of
from jukinet.rpc.runtime import RunningNode
from jukinet.storage import SqlTx, queries
from jukinet.wire.v1 import register_pb2, register_pb2_grpc, relay_pb2, relay_pb2_grpc, types_pb2
from tests.helpers.nodes import change, channel, event, eventually, start

R = types_pb2


@dataclass
class Net:
    pki: Path
    center: RunningNode
    prefecture: RunningNode
    municipality: RunningNode


@pytest.fixture
async def net(pki_dir: Path, db_factory: Callable[[str], str], tmp_path: Path) -> AsyncIterator[Net]:
    center = await start("center", "", db_factory("center"), pki_dir)
    prefecture = await start("prefecture", "13", db_factory("prefecture"), pki_dir, upstream=center.address)
    municipality = await start(
        "municipality", "132080", f"sqlite:///{tmp_path / 'm.db'}", pki_dir, upstream=prefecture.address
    )
    try:
        await eventually(lambda: municipality.ctx.store.read(lambda c: queries.counts(c).free_codes > 0))
        yield Net(pki_dir, center, prefecture, municipality)
    finally:
        for node in (municipality, prefecture, center):
            await node.stop()


def register_stub(
    net: Net, who: str = "jukinet://register/132080"
) -> tuple[grpc.aio.Channel, register_pb2_grpc.RegisterServiceAsyncStub]:
    ch = channel(net.pki, who, net.municipality.address)
    return ch, register_pb2_grpc.RegisterServiceStub(ch)


async def digests(net: Net, origin: str = "132080") -> list[queries.Digest]:
    return [
        await n.ctx.store.read(lambda c: queries.digest(c, origin))
        for n in (net.municipality, net.prefecture, net.center)
    ]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], str(response.read().decode())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], str(error.read().decode())


async def test_each_node_serves_its_dashboard_page_next_to_its_metrics(net: Net) -> None:
    ch, stub = register_stub(net)
    async with ch:
        await stub.RecordChange(
            register_pb2.RecordChangeRequest(change=change("d1", R.CHANGE_REASON_BIRTH, effective="1980-04-01")),
            timeout=10,
        )

    async def forwarded() -> bool:
        return "jukinet_changes_forwarded_total 1.0" in await asyncio.to_thread(_scrape, net.prefecture.metrics_port)

    await eventually(forwarded)
    status, kind, page = await asyncio.to_thread(_get, net.municipality.metrics_port, "/")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert "<h1>jukinet://municipality/132080</h1>" in page
    assert "upstream connected" in page
    assert "<td>applied</td><td>1</td>" in page
    assert "free 住民票コード in the pool" in page
    status, _, page = await asyncio.to_thread(_get, net.center.metrics_port, "/dashboard")
    assert status == 200
    assert "<h1>jukinet://center</h1>" in page
    assert "upstream" not in page
    assert "<h2>Agencies</h2>" in page
    status, _, text = await asyncio.to_thread(_get, net.prefecture.metrics_port, "/nothing-here")
    assert status == 404
    assert "/metrics" in text


async def test_changes_reach_the_center_and_every_tier_agrees(net: Net) -> None:
    ch, stub = register_stub(net)
    async with ch:
        born = await stub.RecordChange(
            register_pb2.RecordChangeRequest(change=change("b1", R.CHANGE_REASON_BIRTH, effective="1980-04-01")),
            timeout=10,
        )
        code = born.result.resident_code
        assert born.result.seq == 1
        assert len(code) == 11
        moved = await stub.RecordChange(
            register_pb2.RecordChangeRequest(
                change=change("m1", R.CHANGE_REASON_INTRA_MOVE, code, address="東京都調布市2")
            ),
            timeout=10,
        )
        assert moved.result.seq == 2
        replay = await stub.RecordChange(
            register_pb2.RecordChangeRequest(
                change=change("m1", R.CHANGE_REASON_INTRA_MOVE, code, address="東京都調布市2")
            ),
            timeout=10,
        )
        assert replay.result.seq == 2  # idempotent on request_id: the first answer again

    async def caught_up() -> bool:
        d = await digests(net)
        return d[2].head_seq == 2 and len({x.sha256 for x in d}) == 1

    await eventually(caught_up)
    for node, forwarded in ((net.municipality, 2), (net.prefecture, 2), (net.center, 0)):
        scraped = await asyncio.to_thread(_scrape, node.metrics_port)
        assert "jukinet_changes_applied_total 2.0" in scraped
        assert f"jukinet_changes_forwarded_total {forwarded}.0" in scraped
        assert "jukinet_outbox_depth 0.0" in scraped
        assert "jukinet_db_transaction_jobs_count" in scraped  # the writer reports its transactions
        assert 'jukinet_db_transaction_jobs_bucket{le="1.0"}' in scraped
    assert "jukinet_changes_duplicate_total 1.0" in await asyncio.to_thread(_scrape, net.municipality.metrics_port)

    async def checkpointed() -> bool:  # SQLite: the checkpoint thread reports every checkpoint it ran
        scraped = await asyncio.to_thread(_scrape, net.municipality.metrics_port)
        counts = [line for line in scraped.splitlines() if line.startswith("jukinet_wal_checkpoint_seconds_count")]
        return bool(counts) and float(counts[0].split()[-1]) >= 1 and "jukinet_wal_pending_frames 0.0" in scraped

    await eventually(checkpointed)
    regs = await net.center.ctx.store.read(lambda c: SqlTx(c).registrations_of([code]))
    record = current_record(regs[code])
    assert record is not None
    assert record.status is Status.ACTIVE
    assert record.registration.items.address == "東京都調布市2"


async def test_a_bad_record_in_a_stream_is_refused_alone(net: Net) -> None:
    ch, stub = register_stub(net)
    batch = [
        change("s1", R.CHANGE_REASON_EX_OFFICIO_RECORD),
        change("s2", R.CHANGE_REASON_INTRA_MOVE, "12345678904"),  # wrong check digit
        change("s3", R.CHANGE_REASON_EX_OFFICIO_RECORD, name=""),  # missing name
        change("s4", R.CHANGE_REASON_EX_OFFICIO_RECORD),
    ]
    async with ch:
        call = stub.RecordChanges(iter([register_pb2.RecordChangesRequest(changes=batch)]))
        responses = [r async for r in call]
    results = responses[0].results
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [r.status_code for r in results] == [0, invalid, invalid, 0]
    assert results[1].field == "resident_code"
    assert "check digit" in results[1].message
    assert results[2].field == "items.name"
    assert [results[0].seq, results[3].seq] == [1, 2]
    log = await net.municipality.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=10))
    served = [e for _, e in log if e.method.endswith("RecordChanges")]
    assert sorted(e.outcome for e in served) == ["INVALID_ARGUMENT", "INVALID_ARGUMENT", "OK"]
    (accepted,) = [e for e in served if e.outcome == "OK"]
    assert list(accepted.subjects) == [results[0].resident_code, results[3].resident_code]
    assert all(e.peer == "jukinet://register/132080" for e in served)


async def test_a_request_id_answers_only_its_own_change_again(net: Net) -> None:
    """A retry (same request id, same change) gets its first answer; another change under a used id is
    refused ALREADY_EXISTS and recorded nowhere, whether the id came in an earlier message or this one."""
    ch, stub = register_stub(net)
    async with ch:
        birth = change("b1", R.CHANGE_REASON_EX_OFFICIO_RECORD)
        first = (await stub.RecordChange(register_pb2.RecordChangeRequest(change=birth), timeout=10)).result
        retry = (await stub.RecordChange(register_pb2.RecordChangeRequest(change=birth), timeout=10)).result
        assert (retry.resident_code, retry.seq) == (first.resident_code, first.seq)
        code = first.resident_code
        batch = [
            change("b1", R.CHANGE_REASON_DEATH, code, with_items=False),  # reuses an earlier id
            change("n1", R.CHANGE_REASON_INTRA_MOVE, code, address="東京都調布市2"),
            change("n1", R.CHANGE_REASON_INTRA_MOVE, code, address="東京都調布市2"),  # a repeat in the message
            change("n1", R.CHANGE_REASON_INTRA_MOVE, code, address="東京都調布市3"),  # another change, same id
        ]
        call = stub.RecordChanges(iter([register_pb2.RecordChangesRequest(changes=batch)]))
        results = [r for response in [r async for r in call] for r in response.results]
    exists = grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert [r.status_code for r in results] == [exists, 0, 0, exists]
    assert [r.error_reason for r in results] == ["REQUEST_ID_REUSED", "", "", "REQUEST_ID_REUSED"]
    assert results[1].seq == results[2].seq == first.seq + 1
    assert "new request_id" in results[0].message
    regs = await net.municipality.ctx.store.read(lambda c: SqlTx(c).registrations_of([code]))
    record = current_record(regs[code])
    assert record is not None
    assert record.status is Status.ACTIVE  # the death under a used id was not recorded
    assert record.registration.items.address == "東京都調布市2"


async def test_a_retired_code_is_never_registered_again(net: Net) -> None:
    ch, stub = register_stub(net)
    async with ch:
        first = await stub.RecordChange(
            register_pb2.RecordChangeRequest(change=change("r1", R.CHANGE_REASON_EX_OFFICIO_RECORD)), timeout=10
        )
        old = first.result.resident_code
        changed = await stub.RecordChange(
            register_pb2.RecordChangeRequest(change=change("r2", R.CHANGE_REASON_CODE_CHANGE, old, with_items=False)),
            timeout=10,
        )
        assert changed.result.resident_code != old
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RecordChange(
                register_pb2.RecordChangeRequest(change=change("r3", R.CHANGE_REASON_EX_OFFICIO_RECORD, old)),
                timeout=10,
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "retired" in (caught.value.details() or "")


async def test_unary_refusal_names_the_field_with_invalid_argument(net: Net) -> None:
    ch, stub = register_stub(net)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RecordChange(
                register_pb2.RecordChangeRequest(
                    change=change("u1", R.CHANGE_REASON_DEATH, "12345678903", with_items=False)
                ),
                timeout=10,
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # not registered here
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RecordChange(
                register_pb2.RecordChangeRequest(
                    change=change("u2", R.CHANGE_REASON_EX_OFFICIO_RECORD, effective="2026-02-30")
                ),
                timeout=10,
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "effective_date" in (caught.value.details() or "")


async def test_refusals_at_the_tls_layer_and_by_rule(net: Net, foreign_pki_dir: Path) -> None:
    request = relay_pb2.GetCursorsRequest(origins=["132080"])
    # no client certificate
    ca = (net.pki / "ca.pem").read_bytes()
    async with grpc.aio.secure_channel(net.prefecture.address, grpc.ssl_channel_credentials(ca)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await relay_pb2_grpc.RelayServiceStub(ch).GetCursors(request, timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    # a certificate from another CA naming the same municipality
    async with channel(foreign_pki_dir, "jukinet://municipality/132080", net.prefecture.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await relay_pb2_grpc.RelayServiceStub(ch).GetCursors(request, timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    # a municipality pushing for another municipality
    async with channel(net.pki, "jukinet://municipality/132187", net.prefecture.address) as ch:
        call = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
            iter([relay_pb2.PushEventsRequest(origin="132080", events=[event(1, "12345678903")])])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in call]
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "own municipality" in (caught.value.details() or "")
    # a municipality of another prefecture pushing its own changes to this prefecture (it would poison
    # this prefecture's relay to the center)
    async with channel(net.pki, "jukinet://municipality/012084", net.prefecture.address) as ch:
        call = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
            iter([relay_pb2.PushEventsRequest(origin="012084", events=[event(1, "12345678903")])])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in call]
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to prefecture 01" in (caught.value.details() or "")
    # a prefecture forwarding for another prefecture's municipality
    async with channel(net.pki, "jukinet://prefecture/01", net.center.address) as ch:
        call = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
            iter([relay_pb2.PushEventsRequest(origin="132080", events=[event(1, "12345678903")])])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in call]
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "prefecture 01" in (caught.value.details() or "")
    # another municipality's register system, and a role that may not push at all
    for who, address in (
        ("jukinet://register/132187", net.municipality.address),
        ("jukinet://agency/pension", net.center.address),
    ):
        async with channel(net.pki, who, address) as ch:
            if "register" in who:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await register_pb2_grpc.RegisterServiceStub(ch).RecordChange(
                        register_pb2.RecordChangeRequest(change=change("x", R.CHANGE_REASON_EX_OFFICIO_RECORD)),
                        timeout=5,
                    )
            else:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await relay_pb2_grpc.RelayServiceStub(ch).GetCursors(request, timeout=5)
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    refused = await net.center.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=50))
    assert {(e.peer, e.outcome) for _, e in refused} >= {
        ("jukinet://prefecture/01", "PERMISSION_DENIED"),
        ("jukinet://agency/pension", "PERMISSION_DENIED"),
    }


def _tokyo_code(n: int) -> str:
    body = f"13{n:03d}"
    return body + str(local_gov_check_digit(body))


async def _push(stub: relay_pb2_grpc.RelayServiceAsyncStub, origin: str, events: list[types_pb2.ChangeEvent]) -> int:
    call = stub.PushEvents(iter([relay_pb2.PushEventsRequest(origin=origin, events=events)]))
    acks: list[int] = [r.acked_seq async for r in call]
    return acks[-1]


async def test_replayed_batches_are_idempotent_and_gaps_are_refused(net: Net) -> None:
    origin = _tokyo_code(101)
    codes = [resident_code_from_body(f"{n:010d}") for n in range(1, 4)]
    async with channel(net.pki, "jukinet://prefecture/13", net.center.address) as ch:
        stub = relay_pb2_grpc.RelayServiceStub(ch)
        batch = [event(i + 1, c) for i, c in enumerate(codes)]
        assert await _push(stub, origin, batch) == 3
        assert await _push(stub, origin, batch) == 3  # replay: acked, nothing applied twice
        assert await _push(stub, origin, batch[1:]) == 3
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _push(stub, origin, [event(5, codes[0], R.CHANGE_REASON_INTRA_MOVE)])
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "expected seq 4" in (caught.value.details() or "")
        # A batch out of order is refused whole, even when its out-of-order event was applied before.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _push(stub, origin, [event(4, codes[0], R.CHANGE_REASON_INTRA_MOVE), batch[0]])
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "does not follow" in (caught.value.details() or "")
        # A replay is acknowledged without effect only if it repeats the stored event exactly.
        forged = [
            batch[1],
            event(3, codes[2], address="東京都調布市99"),
            event(4, codes[0], R.CHANGE_REASON_INTRA_MOVE),
        ]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _push(stub, origin, forged)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(caught.value.trailing_metadata()) == "REPLAY_MISMATCH"
        assert "#3 differs" in (caught.value.details() or "")
        cursors = await stub.GetCursors(relay_pb2.GetCursorsRequest(origins=[origin]), timeout=5)
        assert cursors.cursors[0].acked_seq == 3
    d = await net.center.ctx.store.read(lambda c: queries.digest(c, origin))
    assert (d.count, d.head_seq) == (3, 3)


async def test_nothing_after_a_refused_batch_is_applied_though_it_was_read_ahead(net: Net) -> None:
    """The receiver reads a stream's next batches while the first is written (jukinet/rpc/pipeline.py). A batch
    the writer refuses stops the stream as before: the batches after it, queued already, are not applied,
    whether or not they would have been valid on their own, and the cursor stays where the acks left it."""
    origin = _tokyo_code(102)
    codes = [resident_code_from_body(f"{n:010d}") for n in range(11, 16)]
    ok = relay_pb2.PushEventsRequest(origin=origin, events=[event(1, codes[0]), event(2, codes[1])])
    # Passes the edge checks (each event is valid) but not the writer's: seq 4 does not follow 3.
    refused = relay_pb2.PushEventsRequest(origin=origin, events=[event(3, codes[2]), event(5, codes[3])])
    after = relay_pb2.PushEventsRequest(origin=origin, events=[event(3, codes[2]), event(4, codes[4])])
    async with channel(net.pki, "jukinet://prefecture/13", net.center.address) as ch:
        stub = relay_pb2_grpc.RelayServiceStub(ch)
        for _ in range(3):  # the three are usually in the writer's queue together: repeat to catch a race
            call = stub.PushEvents(iter([ok, refused, after]))
            first = await call.read()
            assert isinstance(first, relay_pb2.PushEventsResponse)
            assert first.acked_seq == 2
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            cursors = await stub.GetCursors(relay_pb2.GetCursorsRequest(origins=[origin]), timeout=5)
            assert cursors.cursors[0].acked_seq == 2
    d = await net.center.ctx.store.read(lambda c: queries.digest(c, origin))
    assert (d.count, d.head_seq) == (2, 2)


async def test_every_interleaving_of_a_move_between_municipalities_gives_one_final_state(
    pki_dir: Path, db_factory: Callable[[str], str]
) -> None:
    """転出 at A and 転入 at B (plus a later 転居 at B) for two residents, pushed in every order."""
    alice, bob = resident_code_from_body("1000000001"), resident_code_from_body("2000000002")
    a, b = "132080", "132187"
    streams = {
        a: [
            event(1, alice, address="A1"),
            event(2, bob, address="A2"),
            event(3, alice, R.CHANGE_REASON_MOVE_OUT, address="A1", effective="2026-11-05"),
        ],
        b: [
            event(1, alice, R.CHANGE_REASON_MOVE_IN, address="B1", effective="2026-11-05"),
            event(2, alice, R.CHANGE_REASON_INTRA_MOVE, address="B2", effective="2026-11-06"),
        ],
    }
    # batches of one event each, merged in every order that keeps each origin's own order
    slots = [a] * 3 + [b] * 2
    finals = set()
    for n, arrangement in enumerate(sorted(set(itertools.permutations(slots)))):
        center = await start("center", "", db_factory(f"center{n}"), pki_dir)
        try:
            async with channel(pki_dir, "jukinet://prefecture/13", center.address) as ch:
                stub = relay_pb2_grpc.RelayServiceStub(ch)
                cursor = {a: 0, b: 0}
                for origin in arrangement:
                    pb = streams[origin][cursor[origin]]
                    cursor[origin] += 1
                    await _push(stub, origin, [pb])
            regs = await center.ctx.store.read(lambda c: SqlTx(c).registrations_of([alice, bob]))
        finally:
            await center.stop()
        state = []
        for code in (alice, bob):
            record = current_record(regs[code])
            assert record is not None
            state.append((code, record.status, record.holder, record.registration.items.address))
        finals.add(tuple(state))
    assert n + 1 == 10
    assert finals == {((alice, Status.ACTIVE, b, "B2"), (bob, Status.ACTIVE, a, "A2"))}


async def test_a_node_with_nothing_to_send_reports_an_unreachable_upstream_as_down(
    pki_dir: Path, tmp_path: Path
) -> None:
    """jukinet_upstream_connected says whether the next tier answered, not whether a session was begun
    (a new municipality with no events used to report 1 while its upstream was unreachable)."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        unreachable = f"127.0.0.1:{probe.getsockname()[1]}"
    node = await start("municipality", "132080", f"sqlite:///{tmp_path / 'm.db'}", pki_dir, upstream=unreachable)
    try:
        gauge = node.ctx.metrics.upstream_up
        values: list[float] = []
        set_value = gauge.set

        def recording(value: float) -> None:
            values.append(value)
            set_value(value)

        gauge.set = recording  # type: ignore[method-assign]
        await asyncio.sleep(1.5)  # several reconnection attempts (backoff 0.2, 0.4, 0.8 s)
        assert values
        assert set(values) == {0}
    finally:
        await node.stop()
