"""Health and reflection on a real node pass the node's guard: each call is access-logged under the
caller's certificate identity with the status it got, and a revoked certificate is refused there too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import text

from jukinet.domain.identity import NodeId, Role
from jukinet.pki import certificate_serial, create_ca, ensure, revoke
from jukinet.rpc import standard_services
from jukinet.rpc.runtime import RunningNode
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc
from tests.helpers.nodes import channel, eventually, sqlite_center

pytestmark = pytest.mark.integration

AGENCY = NodeId(Role.AGENCY, "pension")
PREFECTURE = NodeId(Role.PREFECTURE, "13")
VIEWER = NodeId(Role.OPERATOR, "viewer", "center")
ADMIN = NodeId(Role.OPERATOR, "admin", "center")
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
LIST = "/grpc.health.v1.Health/List"
REFLECT = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture
def own_pki(tmp_path: Path) -> Path:
    pki = tmp_path / "pki"
    create_ca(pki)
    for identity in (NodeId(Role.CENTER), AGENCY, PREFECTURE):
        ensure(pki, identity)
    ensure(pki, VIEWER, role="viewer")  # the lowest operator role
    ensure(pki, ADMIN, role="security-admin")
    return pki


@pytest.fixture
async def center(own_pki: Path, tmp_path: Path) -> AsyncIterator[RunningNode]:
    async with sqlite_center(own_pki, tmp_path) as node:
        yield node


async def entries(node: RunningNode, method: str) -> list[tuple[str, str]]:
    def read(conn: object) -> list[tuple[str, str]]:
        rows = conn.execute(  # type: ignore[attr-defined]
            text("SELECT peer, outcome FROM access_log WHERE method = :m ORDER BY id"), {"m": method}
        )
        return [(r.peer, r.outcome) for r in rows]

    return await node.ctx.store.read(read)


async def test_health_checks_are_answered_and_access_logged_with_their_status(
    center: RunningNode, own_pki: Path
) -> None:
    async with channel(own_pki, AGENCY.uri, center.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert await entries(center, CHECK) == [(AGENCY.uri, "OK"), (AGENCY.uri, "NOT_FOUND")]
    rpcs = center.ctx.metrics.rpcs
    assert rpcs.labels("Check", "OK")._value.get() == 1
    # counted with the status it was answered, as the guard exits, a moment after the caller has that status
    await eventually(lambda: rpcs.labels("Check", "NOT_FOUND")._value.get() == 1, timeout=10)


async def test_an_operator_of_the_lowest_role_may_check_health(center: RunningNode, own_pki: Path) -> None:
    async with channel(own_pki, VIEWER.uri, center.address) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert await entries(center, CHECK) == [(VIEWER.uri, "OK")]


async def test_an_unimplemented_method_is_unimplemented_not_an_internal_error(
    center: RunningNode, own_pki: Path
) -> None:
    async with channel(own_pki, AGENCY.uri, center.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert await entries(center, LIST) == [(AGENCY.uri, "UNIMPLEMENTED")]
    assert center.ctx.metrics.internal_errors._value.get() == 0


async def test_an_undecodable_health_check_is_refused_and_logged_once(center: RunningNode, own_pki: Path) -> None:
    async with channel(own_pki, AGENCY.uri, center.address) as ch:
        check = ch.unary_unary(
            CHECK, request_serializer=None, response_deserializer=None
        )  # raw bytes: field 1 (service) holding invalid UTF-8
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(b"\x0a\x02\xff\xfe", timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await entries(center, CHECK) == [(AGENCY.uri, "INVALID_ARGUMENT")]


@pytest.mark.parametrize("status_changes", [True, False], ids=["at-the-next-write", "while-quiet"])
async def test_watch_streams_the_status_and_ends_once_the_certificate_is_revoked(
    center: RunningNode, own_pki: Path, monkeypatch: pytest.MonkeyPatch, status_changes: bool
) -> None:
    """A Watch writes only when the status changes: its caller is checked at each write and every RECHECK_S."""
    monkeypatch.setattr(standard_services, "RECHECK_S", 0.2 if not status_changes else 60.0)
    async with channel(own_pki, AGENCY.uri, center.address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        revoke(own_pki, [certificate_serial(own_pki / "agency-pension.pem")])
        if status_changes:
            await center.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert await entries(center, WATCH) == [(AGENCY.uri, "OK"), (AGENCY.uri, "UNAUTHENTICATED")]


async def test_a_watch_the_caller_cancels_is_counted_cancelled(center: RunningNode, own_pki: Path) -> None:
    async with channel(own_pki, AGENCY.uri, center.address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    rpcs = center.ctx.metrics.rpcs
    await eventually(lambda: rpcs.labels("Watch", "CANCELLED")._value.get() == 1)
    assert await entries(center, WATCH) == [(AGENCY.uri, "OK")]


async def test_an_open_reflection_stream_ends_once_the_certificate_is_revoked(
    center: RunningNode, own_pki: Path
) -> None:
    async with channel(own_pki, AGENCY.uri, center.address) as ch:
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(timeout=10)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        assert (await call.read()).list_services_response.service
        revoke(own_pki, [certificate_serial(own_pki / "agency-pension.pem")])
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert await entries(center, REFLECT) == [(AGENCY.uri, "OK"), (AGENCY.uri, "UNAUTHENTICATED")]


async def test_reflection_lists_the_services_and_the_stream_is_access_logged(
    center: RunningNode, own_pki: Path
) -> None:
    def ask() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async with channel(own_pki, PREFECTURE.uri, center.address) as ch:
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(ask(), timeout=5)
        names = [s.name async for reply in call for s in reply.list_services_response.service]
    assert "jukinet.wire.v1.ProvisionService" in names
    assert "grpc.health.v1.Health" in names
    assert await entries(center, REFLECT) == [(PREFECTURE.uri, "OK")]


async def test_a_revoked_certificate_is_refused_by_health_and_reflection_too(
    center: RunningNode, own_pki: Path
) -> None:
    revoke(own_pki, [certificate_serial(own_pki / "agency-pension.pem")])

    def ask() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async with channel(own_pki, AGENCY.uri, center.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as checked:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(ask(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as reflected:
            await call.read()
    assert checked.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (checked.value.details() or "")
    assert reflected.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert await entries(center, CHECK) == [(AGENCY.uri, "UNAUTHENTICATED")]
    assert await entries(center, REFLECT) == [(AGENCY.uri, "UNAUTHENTICATED")]


async def test_each_service_has_a_status_and_the_cut_off_takes_the_link_services_out(
    center: RunningNode, own_pki: Path
) -> None:
    """Per-service health: SERVING; while an operator has cut the node off, the services whose calls cross its
    links are NOT_SERVING and the operator's own stay SERVING; resume brings them back."""
    link, own = "jukinet.wire.v1.ProvisionService", "jukinet.wire.v1.AdminService"

    async def statuses(ch: grpc.aio.Channel) -> dict[str, int]:
        stub = health_pb2_grpc.HealthStub(ch)
        return {
            name: (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
            for name in ("", link, own)
        }

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    async with channel(own_pki, ADMIN.uri, center.address) as ch:

        async def reached(expected: dict[str, int]) -> bool:
            return await statuses(ch) == expected

        await eventually(lambda: reached({"": serving, link: serving, own: serving}))
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        await admin.CutOff(admin_pb2.CutOffRequest(reason="drill"), timeout=5)
        await eventually(lambda: reached({"": serving, link: not_serving, own: serving}))
        await admin.Resume(admin_pb2.ResumeRequest(), timeout=5)
        await eventually(lambda: reached({"": serving, link: serving, own: serving}))
