"""How the call guard answers what a handler raises, over a real mTLS grpc.aio server: a fault is INTERNAL and
counted in jukinet_internal_errors_total (INCONSISTENT_RECORDS too); only a method the generated base servicer
declares unimplemented is UNIMPLEMENTED; a handler's own abort is counted with its status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from jukinet.domain.errors import InconsistentRecords
from jukinet.domain.identity import NodeId, Role
from jukinet.observability.metrics import NodeMetrics
from jukinet.pki import SECURE_SERVER_OPTIONS, create_ca, ensure, server_credentials
from jukinet.rpc.guard import Guard
from jukinet.storage import Store
from tests.helpers.nodes import channel, eventually

pytestmark = pytest.mark.integration

CALLER = NodeId(Role.AGENCY, "pension")
Behaviour = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


async def fault(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    raise RuntimeError("a bug")


async def inconsistent(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    raise InconsistentRecords("the code chain of 12345678903 loops")


async def stray_not_implemented(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    raise NotImplementedError("a library's unfinished path")  # a fault, not an unimplemented method


async def declared_unimplemented(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)  # what the generated base servicer does
    raise NotImplementedError("Method not implemented!")


async def own_abort(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


BEHAVIOURS: dict[str, Behaviour] = {
    "Fault": fault,
    "Inconsistent": inconsistent,
    "StrayNotImplemented": stray_not_implemented,
    "DeclaredUnimplemented": declared_unimplemented,
    "OwnAbort": own_abort,
}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Path, NodeMetrics]]:
    pki = tmp_path / "pki"
    create_ca(pki)
    server_paths = ensure(pki, NodeId(Role.CENTER))
    ensure(pki, CALLER)
    store = Store(f"sqlite:///{tmp_path / 'guard.db'}")
    metrics = NodeMetrics()
    guard = Guard(store, metrics, {f"/t.T/{name}": frozenset(Role) for name in BEHAVIOURS})

    def handler(name: str, behaviour: Behaviour) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            async with guard.call(context, f"/t.T/{name}"):
                await behaviour(context)
            return b""

        return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.aio.server(options=SECURE_SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("t.T", {n: handler(n, b) for n, b in BEHAVIOURS.items()})]
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(server_paths))
    await server.start()
    try:
        yield f"127.0.0.1:{port}", pki, metrics
    finally:
        await server.stop(None)
        store.close()


@pytest.mark.parametrize(
    ("method", "status", "internal"),
    [
        ("Fault", grpc.StatusCode.INTERNAL, 1),
        ("Inconsistent", grpc.StatusCode.INTERNAL, 1),
        ("StrayNotImplemented", grpc.StatusCode.INTERNAL, 1),
        ("DeclaredUnimplemented", grpc.StatusCode.UNIMPLEMENTED, 0),
        ("OwnAbort", grpc.StatusCode.NOT_FOUND, 0),
    ],
)
async def test_the_answer_and_what_is_counted(
    served: tuple[str, Path, NodeMetrics], method: str, status: grpc.StatusCode, internal: int
) -> None:
    address, pki, metrics = served
    async with channel(pki, CALLER.uri, address) as ch:
        call = ch.unary_unary(f"/t.T/{method}", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=5)
    assert caught.value.code() is status
    # The status reaches the caller as the handler aborts; the guard counts it on its way out, a moment later
    # (the server shares this test's event loop): wait for it, within a bound.
    await eventually(lambda: metrics.rpcs.labels(method, status.name)._value.get() == 1, timeout=10)
    assert metrics.rpcs.labels(method, status.name)._value.get() == 1
    assert metrics.internal_errors._value.get() == internal
