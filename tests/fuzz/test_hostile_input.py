"""Hostile input: every RPC handler answers hypothesis-generated and hand-written hostile messages with a
refusal by rule (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) — never INTERNAL or UNKNOWN, never a dropped
connection, never a partial write — and the node still answers its health check afterwards.

One in-process network per module (center and prefecture on PostgreSQL when it is reachable, as deployed;
the municipality on SQLite). Bounded for CI: a few dozen derandomized examples per RPC.

The server's receive limit (grpc.max_receive_message_length, 64 MiB) is exercised for real: a message
just over it costs a fraction of a second on loopback. The per-message limits on repeated fields
(5,000 changes, events or codes; 1,000 origins) are exercised with up to 10,000 elements."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, func, select

from jukinet.rpc.runtime import MAX_MESSAGE_BYTES, RunningNode
from jukinet.storage import SqlTx, queries
from jukinet.storage.schema import code_block, event, provision_log, registration
from jukinet.wire.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    codepool_pb2,
    codepool_pb2_grpc,
    disclosure_pb2,
    disclosure_pb2_grpc,
    provision_pb2,
    provision_pb2_grpc,
    register_pb2,
    register_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
    types_pb2,
)
from tests.fuzz import hostile as H
from tests.helpers.nodes import AGENCIES, change, channel, eventually, start

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")
R = types_pb2
MUNICIPALITY = "132080"
REGISTER = "jukinet://register/132080"
AGENCY = "jukinet://agency/pension"
OPERATORS = {
    "center": "jukinet://operator/center/t",
    "prefecture": "jukinet://operator/prefecture-13/t",
    "municipality": "jukinet://operator/municipality-132080/t",
}
# Who pushes to which tier, for an origin nothing else in the network writes (no race with the forwarders).
PUSHERS = {"prefecture": ("jukinet://municipality/132187", "132187"), "center": ("jukinet://prefecture/01", "012084")}
ALLOCATORS = {
    "prefecture": ("jukinet://municipality/132187", "132187"),
    "center": ("jukinet://prefecture/13", "132080"),
}
TIMEOUT = 15.0
PG_ADMIN_URL = os.environ.get("JUKINET_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

FUZZ = settings(
    max_examples=int(os.environ.get("JUKINET_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=os.environ.get("JUKINET_FUZZ_RANDOM", "") == "",  # reproducible in CI; random when asked
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- the network ---------------------------------------------------------------------------------------


class Net:
    def __init__(self, pki: Path, nodes: dict[str, RunningNode], postgres: bool) -> None:
        self.pki = pki
        self.nodes = nodes
        self.postgres = postgres
        self.channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def __repr__(self) -> str:
        return f"Net(postgres={self.postgres})"

    def ch(self, who: str, tier: str) -> grpc.aio.Channel:
        key = (who, tier)
        if key not in self.channels:
            self.channels[key] = channel(self.pki, who, self.nodes[tier].address)
        return self.channels[key]

    async def read(self, tier: str, fn: Callable[[Connection], T]) -> T:
        return await self.nodes[tier].ctx.store.read(fn)


class _Databases:
    """PostgreSQL databases for the center and the prefecture when reachable (required under CI), else SQLite."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._created: list[str] = []
        self.postgres = self._postgres_problem() is None
        if not self.postgres and IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is unreachable under CI: {self._postgres_problem()}")

    @staticmethod
    def _postgres_problem() -> str | None:
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
                return None
        except Exception as error:
            return str(error)

    def url(self, name: str) -> str:
        if not self.postgres:
            return f"sqlite:///{self._tmp / (name + '.db')}"
        import psycopg

        database = f"jukinet_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        self._created.append(database)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"

    def drop(self) -> None:
        if not self._created:
            return
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            for database in self._created:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(pki_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    tmp = tmp_path_factory.mktemp("fuzz")
    databases = _Databases(tmp)
    started: list[RunningNode] = []
    network: Net | None = None
    try:
        center = await start("center", "", databases.url("center"), pki_dir, agencies=AGENCIES)
        started.append(center)
        prefecture = await start("prefecture", "13", databases.url("prefecture"), pki_dir, upstream=center.address)
        started.append(prefecture)
        municipality = await start(
            "municipality", MUNICIPALITY, f"sqlite:///{tmp / 'm.db'}", pki_dir, upstream=prefecture.address
        )
        started.append(municipality)
        network = Net(
            pki_dir,
            {"center": center, "prefecture": prefecture, "municipality": municipality},
            databases.postgres,
        )
        await eventually(lambda: municipality.ctx.store.read(lambda c: queries.counts(c).free_codes > 0))
        await _seed(network)
        yield network
    finally:
        if network is not None:
            for ch in network.channels.values():
                await ch.close()
        for node in reversed(started):
            await node.stop()
        databases.drop()


async def _seed(net: Net) -> None:
    """Three residents moved in at 132080 (known codes), relayed up to the center."""
    stub = register_pb2_grpc.RegisterServiceStub(net.ch(REGISTER, "municipality"))
    for i, code in enumerate(H.SEEDED):
        pb = change(f"seed-{i}", R.CHANGE_REASON_MOVE_IN, code, name=f"{H.VALID_NAME}{i}", address=H.VALID_ADDRESS)
        await stub.RecordChange(register_pb2.RecordChangeRequest(change=pb), timeout=TIMEOUT)

    async def relayed() -> bool:
        digest = await net.read("center", lambda c: queries.digest(c, MUNICIPALITY))
        return digest.head_seq >= len(H.SEEDED)

    await eventually(relayed)


# -- calling and judging -------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    responses: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


async def unary(call: Awaitable[Any]) -> Outcome:
    try:
        return Outcome(grpc.StatusCode.OK, responses=[await call])
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error.details() or "")


async def streamed(call: Any) -> Outcome:
    """Every response of a response stream until it ends or fails."""
    responses: list[Any] = []
    try:
        async for response in call:
            responses.append(response)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error.details() or "", responses)
    return Outcome(grpc.StatusCode.OK, responses=responses)


def judge(outcome: Outcome, what: str, *expected: grpc.StatusCode) -> None:
    event(outcome.code.name)  # --hypothesis-show-statistics: how often each status was reached
    allowed = set(expected) if expected else H.ALLOWED
    assert outcome.code in allowed, f"{what}: {outcome.code.name} {outcome.details[:300]!r}"


async def healthy(net: Net, tier: str) -> None:
    """The node still answers (a new call on the same connection) after whatever it was just sent."""
    stub = health_pb2_grpc.HealthStub(net.ch(OPERATORS[tier], tier))
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _origin_state(origin: str) -> Callable[[Connection], tuple[int, int]]:
    def read(conn: Connection) -> tuple[int, int]:
        count = conn.execute(select(func.count()).select_from(event).where(event.c.origin == origin)).scalar()
        return SqlTx(conn).head_seq(origin), int(count or 0)

    return read


def _provisions(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(provision_log)).scalar() or 0)


def _blocks_for(request_id: str) -> Callable[[Connection], int]:
    def read(conn: Connection) -> int:
        if "\x00" in request_id:  # PostgreSQL text cannot hold NUL: no such block can exist
            return 0
        query = select(func.count()).select_from(code_block).where(code_block.c.request_id == request_id)
        return int(conn.execute(query).scalar() or 0)

    return read


def raw_unary(ch: grpc.aio.Channel, method: str) -> Any:
    return ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def raw_stream(ch: grpc.aio.Channel, method: str) -> Any:
    return ch.stream_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def raw_server_stream(ch: grpc.aio.Channel, method: str) -> Any:
    return ch.unary_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


# -- RegisterService (municipality) --------------------------------------------------------------------


@FUZZ
@given(pb=H.register_changes(), with_change=st.integers(0, 9))
async def test_record_change(net: Net, pb: register_pb2.RegisterChange, with_change: int) -> None:
    request = register_pb2.RecordChangeRequest(change=pb) if with_change else register_pb2.RecordChangeRequest()
    head, _ = await net.read("municipality", _origin_state(MUNICIPALITY))
    stub = register_pb2_grpc.RegisterServiceStub(net.ch(REGISTER, "municipality"))
    outcome = await unary(stub.RecordChange(request, timeout=TIMEOUT))
    judge(outcome, f"RecordChange {request!r:.300}")
    after, count = await net.read("municipality", _origin_state(MUNICIPALITY))
    assert count == after
    if outcome.ok:
        assert after in (head, head + 1)  # a replayed request_id answers without writing
        assert outcome.responses[0].result.seq <= after
    else:
        assert after == head, "a refused change wrote an event"
    await healthy(net, "municipality")


@st.composite
def record_changes_requests(draw: st.DrawFn) -> list[register_pb2.RecordChangesRequest]:
    messages = []
    for _ in range(draw(st.integers(1, 3))):
        changes = draw(st.lists(H.register_changes(), max_size=6))
        if draw(st.integers(0, 7)) == 0:
            changes = H.repeated(changes or [draw(H.register_changes())], draw(H.big_count))
        messages.append(register_pb2.RecordChangesRequest(changes=changes))
    return messages


@FUZZ
@given(messages=record_changes_requests())
async def test_record_changes(net: Net, messages: list[register_pb2.RecordChangesRequest]) -> None:
    head, _ = await net.read("municipality", _origin_state(MUNICIPALITY))
    stub = register_pb2_grpc.RegisterServiceStub(net.ch(REGISTER, "municipality"))
    outcome = await streamed(stub.RecordChanges(iter(messages), timeout=TIMEOUT))
    judge(outcome, f"RecordChanges of {[len(m.changes) for m in messages]} changes")
    for request, response in zip(messages, outcome.responses, strict=False):
        assert len(response.results) == len(request.changes)
    new = {r.seq for response in outcome.responses for r in response.results if r.status_code == 0 and r.seq > head}
    after, count = await net.read("municipality", _origin_state(MUNICIPALITY))
    assert (after, count) == (head + len(new), head + len(new)), "events differ from the accepted changes"
    await healthy(net, "municipality")


# -- RelayService (prefecture, center) -----------------------------------------------------------------


@st.composite
def push_requests(draw: st.DrawFn, origin: str, head: int) -> list[relay_pb2.PushEventsRequest]:
    messages = []
    seq = head
    for _ in range(draw(st.integers(1, 2))):
        events = [draw(H.change_events(seq + 1 + i)) for i in range(draw(st.integers(0, 4)))]
        seq += len(events)
        if draw(st.integers(0, 7)) == 0:
            events = H.repeated(events or [draw(H.change_events(seq + 1))], draw(H.big_count))
        batch_origin = draw(H.maybe(st.just(origin), st.one_of(st.sampled_from(["132080", "131016"]), H.hostile_text)))
        messages.append(relay_pb2.PushEventsRequest(origin=batch_origin, events=events))
    return messages


@FUZZ
@pytest.mark.parametrize("tier", ["prefecture", "center"])
@given(data=st.data())
async def test_push_events(net: Net, tier: str, data: st.DataObject) -> None:
    who, origin = PUSHERS[tier]
    head, _ = await net.read(tier, _origin_state(origin))
    messages = data.draw(push_requests(origin, head))
    stub = relay_pb2_grpc.RelayServiceStub(net.ch(who, tier))
    outcome = await streamed(stub.PushEvents(iter(messages), timeout=TIMEOUT))
    judge(outcome, f"PushEvents to {tier} of {[(m.origin[:20], len(m.events)) for m in messages]}")
    acked = outcome.responses[-1].acked_seq if outcome.responses else head
    after, count = await net.read(tier, _origin_state(origin))
    assert (after, count) == (acked, acked), "stored events differ from the acknowledged batches"
    await healthy(net, tier)


@FUZZ
@pytest.mark.parametrize("tier", ["prefecture", "center"])
@given(
    origins=st.lists(H.maybe(st.sampled_from(["132187", "012084", "132080"]), H.hostile_text), max_size=5),
    big=st.integers(0, 5),
)
async def test_get_cursors(net: Net, tier: str, origins: list[str], big: int) -> None:
    if big == 0:
        origins = H.repeated(origins or ["132187"], 10_000)
    stub = relay_pb2_grpc.RelayServiceStub(net.ch(PUSHERS[tier][0], tier))
    outcome = await unary(stub.GetCursors(relay_pb2.GetCursorsRequest(origins=origins), timeout=TIMEOUT))
    judge(outcome, f"GetCursors at {tier} {origins[:5]!r}")
    await healthy(net, tier)


# -- CodePoolService (prefecture, center) --------------------------------------------------------------

counts = st.one_of(
    st.integers(H.INT32[0], 0), st.integers(1, 20), st.integers(100_001, H.INT32[1]), st.sampled_from(H.INT32)
)


@FUZZ
@pytest.mark.parametrize("tier", ["prefecture", "center"])
@given(
    request_id=H.maybe(st.uuids().map(lambda u: "fuzz-" + u.hex), H.hostile_text),
    municipality=H.maybe(st.sampled_from(["132187", "132080"]), H.hostile_text),
    count=counts,
)
async def test_allocate_codes(net: Net, tier: str, request_id: str, municipality: str, count: int) -> None:
    before = await net.read("center", _blocks_for(request_id))
    stub = codepool_pb2_grpc.CodePoolServiceStub(net.ch(ALLOCATORS[tier][0], tier))
    request = codepool_pb2.AllocateCodesRequest(request_id=request_id, municipality_code=municipality, count=count)
    outcome = await unary(stub.AllocateCodes(request, timeout=TIMEOUT))
    judge(outcome, f"AllocateCodes at {tier} {request!r:.200}")
    after = await net.read("center", _blocks_for(request_id))
    assert after == before or (outcome.ok and after == 1), "a refused allocation left a code block"
    if outcome.ok:
        assert len(outcome.responses[0].resident_codes) == count or before == 1
    await healthy(net, tier)


# -- ProvisionService, DisclosureService (center) ------------------------------------------------------


@FUZZ
@given(purpose=H.purposes, code=H.resident_codes)
async def test_lookup_resident(net: Net, purpose: str, code: str) -> None:
    before = await net.read("center", _provisions)
    stub = provision_pb2_grpc.ProvisionServiceStub(net.ch(AGENCY, "center"))
    request = provision_pb2.LookupResidentRequest(purpose=purpose, resident_code=code)
    outcome = await unary(stub.LookupResident(request, timeout=TIMEOUT))
    judge(outcome, f"LookupResident {request!r:.200}")
    assert await net.read("center", _provisions) == before + (1 if outcome.ok else 0)
    await healthy(net, "center")


@FUZZ
@given(
    purpose=H.purposes,
    name=H.maybe(st.sampled_from([f"{H.VALID_NAME}0", "やまだ たろう0", ""]), H.hostile_text),
    birth_date=H.maybe(st.sampled_from(["1980-04-01", ""]), H.hostile_date),
    sex=H.maybe(st.sampled_from([0, 1, 2]), H.hostile_int32),
    address=H.maybe(st.sampled_from([H.VALID_ADDRESS, ""]), H.hostile_text),
)
async def test_search_residents(net: Net, purpose: str, name: str, birth_date: str, sex: int, address: str) -> None:
    before = await net.read("center", _provisions)
    stub = provision_pb2_grpc.ProvisionServiceStub(net.ch(AGENCY, "center"))
    request = provision_pb2.SearchResidentsRequest(
        purpose=purpose,
        name=name,
        birth_date=birth_date,
        sex=sex,  # type: ignore[arg-type]
        address=address,
    )
    outcome = await unary(stub.SearchResidents(request, timeout=TIMEOUT))
    judge(outcome, f"SearchResidents {request!r:.300}")
    found = len(outcome.responses[0].records) if outcome.ok else 0
    assert await net.read("center", _provisions) == before + found
    await healthy(net, "center")


@st.composite
def lookup_residents_requests(draw: st.DrawFn) -> list[provision_pb2.LookupResidentsRequest]:
    messages = []
    for i in range(draw(st.integers(1, 3))):
        codes = draw(st.lists(H.resident_codes, max_size=6))
        if draw(st.integers(0, 7)) == 0:
            codes = H.repeated(codes or H.SEEDED, draw(H.big_count))
        purpose = draw(H.purposes if i == 0 else H.maybe(st.sampled_from(["", "pension-benefit"]), H.purposes))
        messages.append(provision_pb2.LookupResidentsRequest(purpose=purpose, resident_codes=codes))
    return messages


@FUZZ
@given(messages=lookup_residents_requests())
async def test_lookup_residents(net: Net, messages: list[provision_pb2.LookupResidentsRequest]) -> None:
    before = await net.read("center", _provisions)
    stub = provision_pb2_grpc.ProvisionServiceStub(net.ch(AGENCY, "center"))
    outcome = await streamed(stub.LookupResidents(iter(messages), timeout=TIMEOUT))
    judge(outcome, f"LookupResidents {[(m.purpose[:20], len(m.resident_codes)) for m in messages]}")
    for request, response in zip(messages, outcome.responses, strict=False):
        assert len(response.results) == len(request.resident_codes)
    provided = sum(1 for response in outcome.responses for r in response.results if r.status_code == 0)
    assert await net.read("center", _provisions) == before + provided
    await healthy(net, "center")


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 30))
@given(purpose=H.purposes, after_seq=H.maybe(st.just(0), H.hostile_int64))
async def test_follow_changes(net: Net, purpose: str, after_seq: int) -> None:
    """At most one response, with a short wait: a valid subscription otherwise waits for new events."""
    stub = provision_pb2_grpc.ProvisionServiceStub(net.ch(AGENCY, "center"))
    call = stub.FollowChanges(provision_pb2.FollowChangesRequest(purpose=purpose, after_seq=after_seq), timeout=TIMEOUT)
    try:
        await asyncio.wait_for(call.read(), timeout=0.3)
        outcome = Outcome(grpc.StatusCode.OK)
    except TimeoutError:
        outcome = Outcome(grpc.StatusCode.OK)  # still waiting for events: a valid subscription
    except grpc.aio.AioRpcError as error:
        outcome = Outcome(error.code(), error.details() or "")
    finally:
        call.cancel()
    judge(outcome, f"FollowChanges purpose={purpose[:40]!r} after_seq={after_seq}")
    await healthy(net, "center")


@FUZZ
@given(
    code=H.resident_codes,
    from_date=H.maybe(st.sampled_from(["", "2026-01-01"]), H.hostile_date),
    to_date=H.maybe(st.just(""), H.hostile_date),
    page_size=H.maybe(st.sampled_from([0, 1, 1000]), H.hostile_int32),
    page_token=H.maybe(st.sampled_from(["", "1"]), st.one_of(st.sampled_from(H.DIGITS), H.hostile_text)),
)
async def test_disclose_resident(
    net: Net, code: str, from_date: str, to_date: str, page_size: int, page_token: str
) -> None:
    stub = disclosure_pb2_grpc.DisclosureServiceStub(net.ch(OPERATORS["center"], "center"))
    request = disclosure_pb2.DiscloseResidentRequest(
        resident_code=code, from_date=from_date, to_date=to_date, page_size=page_size, page_token=page_token
    )
    outcome = await unary(stub.DiscloseResident(request, timeout=TIMEOUT))
    judge(outcome, f"DiscloseResident {request!r:.300}")
    await healthy(net, "center")


# -- AdminService (every node) -------------------------------------------------------------------------


@FUZZ
@pytest.mark.parametrize("tier", ["municipality", "prefecture", "center"])
@given(
    municipality=H.maybe(st.sampled_from([MUNICIPALITY, "132187"]), H.hostile_text),
    unknown=st.binary(max_size=30),
)
async def test_get_status_and_digest(net: Net, tier: str, municipality: str, unknown: bytes) -> None:
    ch = net.ch(OPERATORS[tier], tier)
    # GetStatusRequest has no fields: an unknown field (number 99) of any content must be ignored.
    status = await unary(
        raw_unary(ch, "/jukinet.wire.v1.AdminService/GetStatus")(H.field(99, unknown), timeout=TIMEOUT)
    )
    judge(status, f"GetStatus at {tier} with unknown field {unknown!r}", grpc.StatusCode.OK)
    request = admin_pb2.GetDigestRequest(municipality_code=municipality)
    digest = await unary(admin_pb2_grpc.AdminServiceStub(ch).GetDigest(request, timeout=TIMEOUT))
    judge(digest, f"GetDigest at {tier} {municipality[:40]!r}")
    await healthy(net, tier)


@FUZZ
@pytest.mark.parametrize("tier", ["municipality", "prefecture", "center"])
@given(
    page_size=H.maybe(st.sampled_from([0, 1, 50, 1000]), H.hostile_int32),
    page_token=H.maybe(st.sampled_from(["", "1", "100"]), st.one_of(st.sampled_from(H.DIGITS), H.hostile_text)),
    code=H.maybe(st.sampled_from(["", *H.SEEDED]), H.resident_codes),
    caller=H.maybe(st.sampled_from(["", REGISTER, AGENCY]), H.hostile_text),
)
async def test_list_access_log(net: Net, tier: str, page_size: int, page_token: str, code: str, caller: str) -> None:
    assume(not (page_token.isdigit() and not page_token.isdecimal()))
    assume(not (page_token.isdigit() and int(page_token) >= 2**63))
    stub = admin_pb2_grpc.AdminServiceStub(net.ch(OPERATORS[tier], tier))
    request = admin_pb2.ListAccessLogRequest(
        page_size=page_size, page_token=page_token, resident_code=code, caller=caller
    )
    outcome = await unary(stub.ListAccessLog(request, timeout=TIMEOUT))
    judge(outcome, f"ListAccessLog at {tier} {request!r:.300}")
    await healthy(net, tier)
