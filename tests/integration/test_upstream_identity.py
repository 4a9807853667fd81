"""A node sends nothing to an impostor upstream: a server holding another node's valid certificate of the
same network, listening where the node's prefecture (or center) should be. Every client a node runs
(relay forwarder, code-pool keeper, audit checkpointer) checks the upstream's server name; without that
check the impostor would see their calls, since every certificate also names 127.0.0.1."""

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from jukinet.domain.identity import NodeId, Role
from jukinet.pki import SECURE_SERVER_OPTIONS, channel_credentials, channel_options, ensure, server_credentials
from tests.helpers.nodes import start

pytestmark = pytest.mark.integration


class Recorder(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # generic in grpc-stubs only
    """Answers nothing (UNIMPLEMENTED) but remembers every method a client reached it with."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        self.methods.append(handler_call_details.method)
        return None


@pytest.mark.parametrize(
    ("kind", "code", "expected", "impostor"),
    [
        ("municipality", "132080", NodeId(Role.PREFECTURE, "13"), NodeId(Role.PREFECTURE, "01")),
        ("prefecture", "13", NodeId(Role.CENTER), NodeId(Role.MUNICIPALITY, "132080")),
    ],
)
async def test_a_node_sends_nothing_to_an_impostor_upstream(
    pki_dir: Path, tmp_path: Path, kind: str, code: str, expected: NodeId, impostor: NodeId
) -> None:
    recorder = Recorder()
    server = grpc.aio.server(options=SECURE_SERVER_OPTIONS)
    server.add_generic_rpc_handlers([recorder])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(ensure(pki_dir, impostor)))
    await server.start()
    node = await start(kind, code, f"sqlite:///{tmp_path / 'node.db'}", pki_dir, upstream=f"127.0.0.1:{port}")
    try:
        await asyncio.sleep(3.0)  # the forwarder opens its session and the keeper asks for codes at once
        assert recorder.methods == [], f"{kind} {code} talked to {impostor.uri} posing as {expected.uri}"
        # Control: the impostor does answer a client that expects what it really is.
        paths = ensure(pki_dir, NodeId(Role.MUNICIPALITY, "012084"))
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(paths), options=channel_options(impostor)
        ) as channel:
            probe = channel.unary_unary(
                "/probe.Probe/Call", request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await probe(b"", timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert recorder.methods == ["/probe.Probe/Call"]
    finally:
        await node.stop()
        await server.stop(None)
