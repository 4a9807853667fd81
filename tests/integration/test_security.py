"""Revocation, expiry and operator roles, enforced by every server on every call, without restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from jukinet.codes import resident_code_from_body
from jukinet.domain.identity import NodeId, Role
from jukinet.pki import certificate_serial, create_ca, ensure, issue, revoke
from jukinet.rpc.runtime import RunningNode
from jukinet.storage import queries
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc, relay_pb2, relay_pb2_grpc
from tests.helpers.nodes import channel, event, sqlite_center

PREFECTURE = NodeId(Role.PREFECTURE, "13")


@pytest.fixture
def own_pki(tmp_path: Path) -> Path:
    """A PKI of this test's own: revoking must not touch the session's shared CA."""
    pki = tmp_path / "pki"
    create_ca(pki)
    ensure(pki, NodeId(Role.CENTER))
    ensure(pki, PREFECTURE)
    for op_id, role in (("admin", "security-admin"), ("viewer", "viewer"), ("clerk", "clerk")):
        ensure(pki, NodeId(Role.OPERATOR, op_id, "center"), role=role)
    return pki


@pytest.fixture
async def center(own_pki: Path, tmp_path: Path) -> AsyncIterator[RunningNode]:
    async with sqlite_center(own_pki, tmp_path) as node:
        yield node


def _cursors() -> relay_pb2.GetCursorsRequest:
    return relay_pb2.GetCursorsRequest(origins=["132080"])


async def test_a_revoked_caller_is_refused_on_its_next_call_and_a_renewed_one_accepted(
    center: RunningNode, own_pki: Path
) -> None:
    async with channel(own_pki, PREFECTURE.uri, center.address) as ch:
        stub = relay_pb2_grpc.RelayServiceStub(ch)
        await stub.GetCursors(_cursors(), timeout=5)
        revoke(own_pki, [certificate_serial(own_pki / "prefecture-13.pem")])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetCursors(_cursors(), timeout=5)  # same connection, next call
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (caught.value.details() or "")
    issue(own_pki, PREFECTURE)  # renewed: a new key and serial, the server was not restarted
    async with channel(own_pki, PREFECTURE.uri, center.address) as ch:
        reply = await relay_pb2_grpc.RelayServiceStub(ch).GetCursors(_cursors(), timeout=5)
        assert reply.cursors[0].origin == "132080"
    assert center.ctx.metrics.refused_calls.labels("CERT_REVOKED")._value.get() == 1


async def test_a_revoked_caller_loses_the_streams_it_holds_open(center: RunningNode, own_pki: Path) -> None:
    """A relay stream may stay open for days: revocation reaches its next message, not only new calls."""
    async with channel(own_pki, PREFECTURE.uri, center.address) as ch:
        requests: asyncio.Queue[relay_pb2.PushEventsRequest | None] = asyncio.Queue()

        async def batches() -> AsyncIterator[relay_pb2.PushEventsRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(batches())
        code = resident_code_from_body("0000000001")
        await requests.put(relay_pb2.PushEventsRequest(origin="132080", events=[event(1, code)]))
        first = await asyncio.wait_for(call.read(), timeout=10)
        assert isinstance(first, relay_pb2.PushEventsResponse)
        assert first.acked_seq == 1
        revoke(own_pki, [certificate_serial(own_pki / "prefecture-13.pem")])
        await requests.put(relay_pb2.PushEventsRequest(origin="132080", events=[event(2, code, address="x2")]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), timeout=10)
        await requests.put(None)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (caught.value.details() or "")
    heads = await center.ctx.store.read(queries.head_seqs)
    assert heads == {"132080": 1}  # the message after the revocation was not applied


async def test_an_expired_certificate_is_refused(center: RunningNode, own_pki: Path) -> None:
    issue(own_pki, PREFECTURE, validity_days=0)  # not after "now": expired by the time it is used
    async with channel(own_pki, PREFECTURE.uri, center.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await relay_pb2_grpc.RelayServiceStub(ch).GetCursors(_cursors(), timeout=5)
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize(
    ("operator", "allowed"),
    [
        ("jukinet://operator/center/viewer", {"GetStatus"}),
        ("jukinet://operator/center/clerk", {"GetStatus"}),
        ("jukinet://operator/center/admin", {"GetStatus", "ListAccessLog", "CutOff", "Resume"}),
    ],
)
async def test_operator_roles_gate_admin_calls(
    center: RunningNode, own_pki: Path, operator: str, allowed: set[str]
) -> None:
    async with channel(own_pki, operator, center.address) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "GetStatus": lambda: stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5),
            "ListAccessLog": lambda: stub.ListAccessLog(admin_pb2.ListAccessLogRequest(), timeout=5),
            "CutOff": lambda: stub.CutOff(admin_pb2.CutOffRequest(reason="drill"), timeout=5),
            "Resume": lambda: stub.Resume(admin_pb2.ResumeRequest(), timeout=5),
        }
        for name, make in calls.items():
            if name in allowed:
                await make()
            else:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await make()
                assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED, name
                assert "needs security-admin" in (caught.value.details() or "")


async def test_successful_reads_are_access_logged_too(center: RunningNode, own_pki: Path) -> None:
    """Not only refusals and writes: an operator reading status, a digest or the access log itself, and a
    prefecture reading its relay cursors, each leave one OK entry naming the caller and the method."""
    async with channel(own_pki, "jukinet://operator/center/admin", center.address) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        await stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        await stub.GetDigest(admin_pb2.GetDigestRequest(municipality_code="132080"), timeout=5)
        await stub.ListAccessLog(admin_pb2.ListAccessLogRequest(resident_code="12345678903"), timeout=5)
    async with channel(own_pki, PREFECTURE.uri, center.address) as ch:
        await relay_pb2_grpc.RelayServiceStub(ch).GetCursors(relay_pb2.GetCursorsRequest(origins=["132080"]), timeout=5)
    entries = await center.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=10))
    logged = [(e.method.rsplit("/", 1)[-1], e.peer, e.outcome, tuple(e.subjects)) for _, e in reversed(entries)]
    assert logged == [
        ("GetStatus", "jukinet://operator/center/admin", "OK", ()),
        ("GetDigest", "jukinet://operator/center/admin", "OK", ()),
        ("ListAccessLog", "jukinet://operator/center/admin", "OK", ("12345678903",)),
        ("GetCursors", PREFECTURE.uri, "OK", ()),
    ]


async def test_deleting_the_crl_does_not_take_a_revocation_back(center: RunningNode, own_pki: Path) -> None:
    revoke(own_pki, [certificate_serial(own_pki / "prefecture-13.pem")])
    async with channel(own_pki, PREFECTURE.uri, center.address) as ch:
        stub = relay_pb2_grpc.RelayServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetCursors(_cursors(), timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        (own_pki / "crl.pem").unlink()
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.GetCursors(_cursors(), timeout=5)
        assert again.value.code() is grpc.StatusCode.UNAUTHENTICATED
