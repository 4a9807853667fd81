"""Search, bulk lookup, the change feed and quotas at a real center over mTLS (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import Connection, select, update

from jukinet.codes import resident_code_from_body
from jukinet.rpc.error_details import details_of, reason_of
from jukinet.rpc.runtime import RunningNode
from jukinet.storage.schema import provision_log, registration
from jukinet.wire.v1 import provision_pb2, provision_pb2_grpc, relay_pb2, relay_pb2_grpc, types_pb2
from tests.helpers.nodes import AGENCIES, channel, event, eventually, start

R = types_pb2
ORIGIN = "132080"
PURPOSE = "pension-benefit"


def _code(n: int) -> str:
    return resident_code_from_body(f"{n:010d}")


class Center:
    def __init__(self, node: RunningNode, pki: Path) -> None:
        self.node = node
        self.pki = pki
        self.seq = 0

    async def push(self, *events: types_pb2.ChangeEvent) -> None:
        async with channel(self.pki, "jukinet://prefecture/13", self.node.address) as ch:
            call = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
                iter([relay_pb2.PushEventsRequest(origin=ORIGIN, events=list(events))])
            )
            assert [r.acked_seq async for r in call] == [events[-1].seq]

    async def register(
        self,
        code: str,
        reason: int = R.CHANGE_REASON_EX_OFFICIO_RECORD,
        *,
        address: str = "東京都調布市小島町1番",
        previous: str = "",
    ) -> None:
        self.seq += 1
        await self.push(event(self.seq, code, reason, address=address, previous=previous))

    def stub(
        self, who: str = "jukinet://agency/pension"
    ) -> tuple[grpc.aio.Channel, provision_pb2_grpc.ProvisionServiceAsyncStub]:
        ch = channel(self.pki, who, self.node.address)
        return ch, provision_pb2_grpc.ProvisionServiceStub(ch)

    async def provisions(self) -> list[tuple[str, str, str]]:
        rows = await self.node.ctx.store.read(
            lambda c: list(c.execute(select(provision_log).order_by(provision_log.c.id)))
        )
        return [(r.resident_code, r.channel, r.purpose) for r in rows]


@pytest.fixture
async def center(pki_dir: Path, db_factory: Callable[[str], str]) -> AsyncIterator[Center]:
    node = await start("center", "", db_factory("center"), pki_dir, agencies=AGENCIES)
    try:
        yield Center(node, pki_dir)
    finally:
        await node.stop()


@pytest.fixture
async def limited_center(pki_dir: Path, db_factory: Callable[[str], str], tmp_path: Path) -> AsyncIterator[Center]:
    """A center whose pension agency may make 1 request a second and receive 3 items a day."""
    agencies = tmp_path / "agencies.toml"
    agencies.write_text(
        '[agencies.pension]\nname = "p"\nrequests_per_second = 1\nitems_per_day = 3\n'
        '[[agencies.pension.purposes]]\nid = "pension-benefit"\nfields = ["name"]\n',
        encoding="utf-8",
    )
    node = await start("center", "", db_factory("center"), pki_dir, agencies=agencies)
    try:
        yield Center(node, pki_dir)
    finally:
        await node.stop()


async def test_search_matches_exactly_after_normalization_on_allowed_key_sets(center: Center) -> None:
    await center.register(_code(1), address="東京都調布市小島町2丁目35番1号")
    await center.register(_code(2), address="東京都調布市国領町1番")
    ch, stub = center.stub()
    async with ch:
        # the helper's residents are all 山田　太郎, 1980-04-01, male: the address tells them apart
        found = await stub.SearchResidents(
            provision_pb2.SearchResidentsRequest(
                purpose=PURPOSE, name="山田 太郎", address="東京都調布市小島町２丁目３５番１号"
            ),
            timeout=10,
        )
        assert [r.resident_code for r in found.records] == [_code(1)]
        both = await stub.SearchResidents(
            provision_pb2.SearchResidentsRequest(
                purpose=PURPOSE, name="山田太郎", birth_date="1980-04-01", sex=R.SEX_MALE
            ),
            timeout=10,
        )
        assert sorted(r.resident_code for r in both.records) == [_code(1), _code(2)]
        none = await stub.SearchResidents(
            provision_pb2.SearchResidentsRequest(purpose=PURPOSE, name="山田", address="東京都調布市国領町1番"),
            timeout=10,
        )
        assert list(none.records) == []  # no partial names
        for bad in (
            provision_pb2.SearchResidentsRequest(purpose=PURPOSE, name="山田太郎"),
            provision_pb2.SearchResidentsRequest(purpose=PURPOSE, name="山田太郎", birth_date="1980-04-01"),
            provision_pb2.SearchResidentsRequest(
                purpose=PURPOSE, name="山田太郎", birth_date="1980-04-01", sex=R.SEX_MALE, address="x"
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SearchResidents(bad, timeout=10)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "name + address" in (caught.value.details() or "")
    assert [p[1] for p in await center.provisions()] == ["search", "search", "search"]


async def test_search_with_too_many_matches_asks_for_more_keys(center: Center) -> None:
    for n in range(1, 13):
        await center.register(_code(100 + n), address=f"東京都調布市{n}番")
    ch, stub = center.stub()
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchResidents(
                provision_pb2.SearchResidentsRequest(
                    purpose=PURPOSE, name="山田　太郎", birth_date="1980-04-01", sex=R.SEX_MALE
                ),
                timeout=10,
            )
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "add keys" in (caught.value.details() or "")
    assert await center.provisions() == []


async def test_bulk_lookup_answers_each_code_and_never_fails_the_stream(center: Center) -> None:
    await center.register(_code(1))
    await center.register(_code(2), R.CHANGE_REASON_CODE_CHANGE, previous=_code(1))
    await center.register(_code(3))
    ch, stub = center.stub()
    async with ch:
        call = stub.LookupResidents(
            iter(
                [
                    provision_pb2.LookupResidentsRequest(purpose=PURPOSE, resident_codes=[_code(1), "12345678904"]),
                    provision_pb2.LookupResidentsRequest(resident_codes=[_code(9), _code(3), "x"]),
                ]
            )
        )
        responses = [r async for r in call]
    results = [r for resp in responses for r in resp.results]
    assert [r.status_code for r in results] == [0, 3, 5, 0, 3]
    assert results[0].record.resident_code == _code(2)  # the retired code answers with the current one
    assert "check digit" in results[1].message
    assert await center.provisions() == [(_code(2), "bulk", PURPOSE), (_code(3), "bulk", PURPOSE)]


async def test_a_loop_of_codes_is_refused_loudly_and_alone(center: Center) -> None:
    """Records that contradict themselves (here a code chain made to loop behind the relay's back) answer
    INTERNAL naming the problem, for that code only: a concurrent lookup and the rest of a bulk stream
    are answered, and nothing is provided for the looping code."""
    await center.register(_code(1))
    await center.register(_code(2), R.CHANGE_REASON_CODE_CHANGE, previous=_code(1))
    await center.register(_code(3))

    def corrupt(conn: Connection) -> None:
        conn.execute(
            update(registration)
            .where(registration.c.resident_code == _code(2))
            .values(active=False, replaced_by=_code(1))
        )

    await center.node.ctx.store.write(corrupt)
    ch, stub = center.stub()
    async with ch:
        looping = stub.LookupResident(provision_pb2.LookupResidentRequest(purpose=PURPOSE, resident_code=_code(1)))
        fine = stub.LookupResident(provision_pb2.LookupResidentRequest(purpose=PURPOSE, resident_code=_code(3)))
        outcomes = await asyncio.gather(looping, fine, return_exceptions=True)
        call = stub.LookupResidents(
            iter([provision_pb2.LookupResidentsRequest(purpose=PURPOSE, resident_codes=[_code(2), _code(3)])])
        )
        results = [r for resp in [r async for r in call] for r in resp.results]
    refused, answered = outcomes
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() is grpc.StatusCode.INTERNAL
    assert "loop" in (refused.details() or "")
    assert reason_of(refused.trailing_metadata()) == "INCONSISTENT_RECORDS"
    assert isinstance(answered, provision_pb2.LookupResidentResponse)
    assert answered.record.resident_code == _code(3)
    assert [r.status_code for r in results] == [13, 0]
    assert "report this request id" in results[0].message
    assert await center.provisions() == [(_code(3), "lookup", PURPOSE), (_code(3), "bulk", PURPOSE)]


async def _read_items(call: object, count: int) -> list[provision_pb2.FeedItem]:
    items: list[provision_pb2.FeedItem] = []
    while len(items) < count:
        response = await asyncio.wait_for(call.read(), timeout=10)  # type: ignore[attr-defined]
        items.extend(response.items)
    return items


async def test_the_change_feed_resumes_without_gap_or_duplicate(center: Center) -> None:
    await center.register(_code(1))  # before the subscription: not in the feed
    ch, stub = center.stub()
    async with ch:
        call = stub.FollowChanges(provision_pb2.FollowChangesRequest(purpose=PURPOSE, after_seq=0))
        await asyncio.sleep(0.3)  # the first call creates the subscription at the current head
        for n in (2, 3, 4):
            await center.register(_code(n))
        first = await _read_items(call, 3)
        call.cancel()  # the connection is killed after the agency processed only seq 1
        assert [(i.seq, i.change.resident_code) for i in first] == [(1, _code(2)), (2, _code(3)), (3, _code(4))]

        resumed = stub.FollowChanges(provision_pb2.FollowChangesRequest(purpose=PURPOSE, after_seq=1))
        again = await _read_items(resumed, 2)
        await center.register(_code(5))
        later = await _read_items(resumed, 1)
        resumed.cancel()
    seen = [(i.seq, i.change.resident_code) for i in again + later]
    assert seen == [(2, _code(3)), (3, _code(4)), (4, _code(5))]
    assert again[0].record.items.name  # records carry the purpose's fields
    async with channel(center.pki, "jukinet://agency/pension", center.node.address) as ch2:
        ahead = provision_pb2_grpc.ProvisionServiceStub(ch2).FollowChanges(
            provision_pb2.FollowChangesRequest(purpose=PURPOSE, after_seq=99)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(ahead.read(), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_quota_exceeded_is_resource_exhausted_with_a_retry_hint(limited_center: Center) -> None:
    await limited_center.register(_code(1))
    ch, stub = limited_center.stub()
    async with ch:
        request = provision_pb2.LookupResidentRequest(purpose=PURPOSE, resident_code=_code(1))
        await stub.LookupResident(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LookupResident(request, timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry in" in (caught.value.details() or "")
        # The same hint, for programs: google.rpc.RetryInfo, with ErrorInfo naming the reason.
        rich = details_of(caught.value.trailing_metadata())
        assert rich is not None
        assert rich.message == caught.value.details()
        retry = error_details_pb2.RetryInfo()
        assert [d.Unpack(retry) for d in rich.details if d.Is(retry.DESCRIPTOR)] == [True]
        assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 1.0
        await asyncio.sleep(1.1)
        call = stub.LookupResidents(
            iter([provision_pb2.LookupResidentsRequest(purpose=PURPOSE, resident_codes=[_code(1)] * 3)])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in call]
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "items left today" in (caught.value.details() or "")


async def test_a_bulk_refusal_mid_stream_comes_after_the_answers_before_it(center: Center) -> None:
    """Messages are looked up ahead of the answer being sent; a refused message still ends the stream
    only after every earlier message's answer, and nothing after it is looked up or logged."""
    await center.register(_code(1))
    await center.register(_code(3))
    requests = [
        provision_pb2.LookupResidentsRequest(purpose=PURPOSE, resident_codes=[_code(1)]),
        provision_pb2.LookupResidentsRequest(resident_codes=[_code(3)]),
        provision_pb2.LookupResidentsRequest(purpose="passport-issue", resident_codes=[_code(1)]),
        provision_pb2.LookupResidentsRequest(resident_codes=[_code(3)]),
    ]
    ch, stub = center.stub()
    received: list[str] = []

    async def read_all() -> None:
        async for response in stub.LookupResidents(iter(requests)):
            received.extend(r.record.resident_code for r in response.results)

    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_all()
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "purpose" in (caught.value.details() or "")
    assert received == [_code(1), _code(3)]
    assert await center.provisions() == [(_code(1), "bulk", PURPOSE), (_code(3), "bulk", PURPOSE)]


async def test_a_bulk_stream_cancelled_mid_way_leaves_the_center_serving(center: Center) -> None:
    """The client goes away while later messages are still being looked up ahead: the stream's reader
    and lookups are wound down, and the next stream is answered normally."""
    await center.register(_code(1))
    sent = asyncio.Event()

    async def requests() -> AsyncIterator[provision_pb2.LookupResidentsRequest]:
        yield provision_pb2.LookupResidentsRequest(purpose=PURPOSE, resident_codes=[_code(1)])
        for _ in range(3):
            yield provision_pb2.LookupResidentsRequest(resident_codes=[_code(1)] * 100)
        sent.set()
        await asyncio.sleep(30)  # keeps the stream open until the client cancels it

    ch, stub = center.stub()
    async with ch:
        call = stub.LookupResidents(requests())
        first = await asyncio.wait_for(call.read(), timeout=10)
        assert isinstance(first, provision_pb2.LookupResidentsResponse)
        await asyncio.wait_for(sent.wait(), timeout=10)
        call.cancel()
        once = provision_pb2.LookupResidentsRequest(purpose=PURPOSE, resident_codes=[_code(1)])
        again = stub.LookupResidents(iter([once]))
        answers = [r async for r in again]
    assert [r.record.resident_code for r in first.results] == [_code(1)]
    assert [r.record.resident_code for resp in answers for r in resp.results] == [_code(1)]
    provided = await center.provisions()
    assert provided[0] == (_code(1), "bulk", PURPOSE)
    assert len(provided) in range(2, 303)  # the answered ones, plus any looked up ahead before the cancel
    cancelled = center.node.ctx.metrics.rpcs.labels("LookupResidents", "CANCELLED")
    await eventually(lambda: cancelled._value.get() == 1)  # counted as cancelled, not as OK


async def test_a_feed_under_quotas_stays_open_and_logs_only_what_it_delivers(limited_center: Center) -> None:
    """A feed is one request however long it stays open (1 request/s does not end an idle stream), and the
    items-per-day quota is reserved before items are numbered: the agency gets 3 of 5 changes, the provision
    log holds exactly those 3, and a resume is refused without logging the other 2."""
    ch, stub = limited_center.stub()
    async with ch:
        call = stub.FollowChanges(provision_pb2.FollowChangesRequest(purpose=PURPOSE, after_seq=0))
        await asyncio.sleep(2.0)  # idle for several polls: the stream must still be open
        for n in range(1, 6):
            await limited_center.register(_code(n))
        first = await _read_items(call, 3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "midnight" in (caught.value.details() or "")
        await asyncio.sleep(1.1)  # a new request token
        again = stub.FollowChanges(provision_pb2.FollowChangesRequest(purpose=PURPOSE, after_seq=3))
        with pytest.raises(grpc.aio.AioRpcError) as resumed:
            await asyncio.wait_for(again.read(), timeout=10)
        assert resumed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [i.seq for i in first] == [1, 2, 3]
    assert await limited_center.provisions() == [(_code(n), "feed", PURPOSE) for n in (1, 2, 3)]
