import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # not in grpc-stubs

from jukinet.domain import NodeId, Role, UnauthenticatedError
from jukinet.pki import (
    SECURE_CHANNEL_OPTIONS,
    SECURE_SERVER_OPTIONS,
    CertificateReloader,
    CertPaths,
    channel_credentials,
    channel_options,
    create_ca,
    issue,
    peer_node_id,
    server_credentials,
)
from tests.helpers.certs import custom_certificate

pytestmark = pytest.mark.integration

CENTER = NodeId(Role.CENTER)
MUNI = NodeId(Role.MUNICIPALITY, "132080")
WHOAMI = "/test.Whoami/Whoami"


def _identity(b: bytes) -> bytes:
    return b


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    try:
        return peer_node_id(context).uri.encode()
    except UnauthenticatedError as e:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))


@dataclass
class Server:
    pki: Path
    paths: CertPaths
    port: int


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    pki = tmp_path / "pki"
    create_ca(pki)
    paths = issue(pki, CENTER)
    srv = grpc.aio.server(options=SECURE_SERVER_OPTIONS)
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    handler = grpc.unary_unary_rpc_method_handler(
        _whoami, request_deserializer=_identity, response_serializer=_identity
    )
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Whoami", {"Whoami": handler})])
    port = srv.add_secure_port("127.0.0.1:0", server_credentials(paths))
    await srv.start()
    try:
        yield Server(pki, paths, port)
    finally:
        await srv.stop(None)


async def _call(port: int, creds: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=SECURE_CHANNEL_OPTIONS) as ch:
        whoami = ch.unary_unary(WHOAMI, request_serializer=_identity, response_deserializer=_identity)
        reply: bytes = await whoami(b"", timeout=5)
        return reply.decode()


async def _expect_code(port: int, creds: grpc.ChannelCredentials, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(port, creds)
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def test_valid_client_learns_its_own_identity_and_health_serves(server: Server) -> None:
    client = issue(server.pki, MUNI)
    assert await _call(server.port, channel_credentials(client)) == "jukinet://municipality/132080"
    operator = issue(server.pki, NodeId(Role.OPERATOR, "ops1", "center"))
    assert await _call(server.port, channel_credentials(operator)) == "jukinet://operator/center/ops1"

    creds = channel_credentials(client)
    async with grpc.aio.secure_channel(f"localhost:{server.port}", creds) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_client_without_certificate_is_refused(server: Server) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=server.paths.ca.read_bytes())
    await _expect_code(server.port, creds, grpc.StatusCode.UNAVAILABLE)


async def test_client_from_another_ca_is_refused(server: Server, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    create_ca(foreign, name="someone else's CA")
    stranger = issue(foreign, MUNI)
    # It trusts our CA (so the server side of the handshake is fine) but presents a foreign certificate.
    creds = grpc.ssl_channel_credentials(
        root_certificates=server.paths.ca.read_bytes(),
        private_key=stranger.key.read_bytes(),
        certificate_chain=stranger.cert.read_bytes(),
    )
    await _expect_code(server.port, creds, grpc.StatusCode.UNAVAILABLE)


def _issue_with_uri(pki: Path, uri: str) -> tuple[bytes, bytes]:
    """A certificate from the network CA whose URI SAN is not a jukinet identity."""
    return custom_certificate(pki, "intruder", [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")])


async def test_certificate_without_jukinet_uri_is_unauthenticated(server: Server) -> None:
    key_pem, cert_pem = _issue_with_uri(server.pki, "spiffe://example.org/intruder")
    creds = grpc.ssl_channel_credentials(
        root_certificates=server.paths.ca.read_bytes(), private_key=key_pem, certificate_chain=cert_pem
    )
    details = await _expect_code(server.port, creds, grpc.StatusCode.UNAUTHENTICATED)
    assert "no jukinet:// URI" in details


def _server_cert_serial(port: int, client: CertPaths) -> int:
    """Serial number of the certificate the server presents on a fresh TLS connection."""
    ctx = ssl.create_default_context(cafile=str(client.ca))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _bump_mtime(paths: CertPaths) -> None:
    # Coarse file-system timestamps must not hide a rotation within the same tick.
    later = time.time() + 2
    for p in (paths.cert, paths.key):
        os.utime(p, (later, later))


async def test_server_certificate_hot_reload(server: Server) -> None:
    client = issue(server.pki, MUNI)
    old_serial = x509.load_pem_x509_certificate(server.paths.cert.read_bytes()).serial_number
    assert await asyncio.to_thread(_server_cert_serial, server.port, client) == old_serial

    rotated = issue(server.pki, CENTER)
    assert rotated == server.paths
    _bump_mtime(rotated)
    new_serial = x509.load_pem_x509_certificate(rotated.cert.read_bytes()).serial_number
    assert new_serial != old_serial
    assert await asyncio.to_thread(_server_cert_serial, server.port, client) == new_serial
    # And gRPC clients still get through on a new channel.
    assert await _call(server.port, channel_credentials(client)) == MUNI.uri


def test_reloader_returns_none_until_files_change(tmp_path: Path) -> None:
    create_ca(tmp_path)
    paths = issue(tmp_path, CENTER)
    reloader = CertificateReloader(paths)
    assert reloader.initial_configuration() is not None
    assert reloader() is None
    assert reloader() is None

    issue(tmp_path, CENTER)
    _bump_mtime(paths)
    config: Any = reloader()
    assert isinstance(config, grpc.ServerCertificateConfiguration)
    assert reloader() is None


def test_reloader_keeps_current_certificate_on_mismatched_pair(tmp_path: Path) -> None:
    create_ca(tmp_path)
    paths = issue(tmp_path, CENTER)
    reloader = CertificateReloader(paths)
    other = issue(tmp_path, MUNI)
    # Half a rotation: a new key next to the old certificate.
    paths.key.write_bytes(other.key.read_bytes())
    _bump_mtime(paths)
    assert reloader() is None
    # Once the matching certificate lands, the pair is picked up.
    paths.cert.write_bytes(other.cert.read_bytes())
    assert reloader() is not None
    assert reloader() is None


async def _call_expecting(port: int, creds: grpc.ChannelCredentials, server: NodeId) -> str:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=channel_options(server)) as ch:
        whoami = ch.unary_unary(WHOAMI, request_serializer=_identity, response_deserializer=_identity)
        reply: bytes = await whoami(b"", timeout=5)
        return reply.decode()


async def test_client_reaches_the_node_it_expects(server: Server) -> None:
    """The center's certificate names center.jukinet.invalid: a client expecting the center gets through."""
    agency = issue(server.pki, NodeId(Role.AGENCY, "pension"))
    assert await _call_expecting(server.port, channel_credentials(agency), CENTER) == "jukinet://agency/pension"


async def test_client_refuses_a_node_that_is_not_the_one_it_expects(server: Server) -> None:
    """A municipality expecting its prefecture at this address finds the center there: the handshake fails
    on the client's side, so not even the request leaves it."""
    client = channel_credentials(issue(server.pki, MUNI))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call_expecting(server.port, client, NodeId(Role.PREFECTURE, "13"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    assert await _call_expecting(server.port, client, CENTER) == MUNI.uri  # the same client, the right name


async def test_another_prefectures_certificate_cannot_impersonate_ours(tmp_path: Path) -> None:
    """A server holding a valid certificate of the same network, but prefecture 01's, at the address where
    municipality 132080 expects prefecture 13: the municipality does not talk to it."""
    pki = tmp_path / "pki"
    create_ca(pki)
    impostor = grpc.aio.server(options=SECURE_SERVER_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(
        _whoami, request_deserializer=_identity, response_serializer=_identity
    )
    impostor.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Whoami", {"Whoami": handler})])
    port = impostor.add_secure_port("127.0.0.1:0", server_credentials(issue(pki, NodeId(Role.PREFECTURE, "01"))))
    await impostor.start()
    try:
        client = channel_credentials(issue(pki, MUNI))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _call_expecting(port, client, NodeId(Role.PREFECTURE, "13"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The same server, expected as what it is, answers: the refusal above was about its name only.
        municipality_of_01 = channel_credentials(issue(pki, NodeId(Role.MUNICIPALITY, "012084")))
        assert await _call_expecting(port, municipality_of_01, NodeId(Role.PREFECTURE, "01")) == (
            "jukinet://municipality/012084"
        )
    finally:
        await impostor.stop(None)
