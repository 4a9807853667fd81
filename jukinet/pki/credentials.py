"""gRPC mutual-TLS credentials built from a node's `CertPaths`, with hot reload on the server side."""

import logging
import os
import threading
from collections.abc import Callable
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jukinet.domain.identity import NodeId
from jukinet.pki.ca import CertPaths, server_name

_log = logging.getLogger(__name__)

_MIB = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * _MIB

SECURE_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
"""Client channel options for long-lived node links: keepalive every 30 s, 64 MiB messages."""


def channel_options(server: NodeId) -> tuple[tuple[str, int | str], ...]:
    """SECURE_CHANNEL_OPTIONS, and the server's certificate must name `server` (its `server_name`)."""
    return (*SECURE_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name(server)))


SECURE_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Accept the clients' 30 s keepalive pings even on idle links (the default would answer
    # with GOAWAY "too_many_pings").
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 15_000),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
"""Server options matching SECURE_CHANNEL_OPTIONS."""

_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: CertPaths) -> _Stamp:
    stats = [os.stat(p) for p in (paths.cert, paths.key, paths.ca)]
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)


def _read_checked(paths: CertPaths) -> tuple[bytes, bytes, bytes]:
    """Read cert, key and CA; raise ValueError unless they parse and the key matches the certificate."""
    cert_pem, key_pem, ca_pem = paths.cert.read_bytes(), paths.key.read_bytes(), paths.ca.read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    x509.load_pem_x509_certificates(ca_pem)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError(f"{paths.key} does not belong to {paths.cert}")
    return cert_pem, key_pem, ca_pem


class CertificateReloader:
    """The fetcher for `grpc.dynamic_ssl_server_credentials`.

    gRPC calls it on every new handshake. It returns a new configuration when the certificate, key or CA
    file changed on disk (and the pair is consistent), and None ("keep the current one") otherwise.
    """

    def __init__(self, paths: CertPaths) -> None:
        self._paths = paths
        self._lock = threading.Lock()
        self._stamp = _stamp(paths)
        cert, key, ca = _read_checked(paths)
        self._initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def initial_configuration(self) -> grpc.ServerCertificateConfiguration:
        return self._initial

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = _stamp(self._paths)
                if stamp == self._stamp:
                    return None
                cert, key, ca = _read_checked(self._paths)
            except (OSError, ValueError) as e:
                # Mid-rotation or broken files: keep serving the last good certificate, retry next handshake.
                _log.warning("keeping the current TLS certificate: %s", e)
                return None
            self._stamp = stamp
            _log.info("reloaded TLS certificate %s", self._paths.cert)
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def server_credentials(paths: CertPaths) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate signed by `paths.ca` and reload on change."""
    reloader = CertificateReloader(paths)
    # grpc-stubs types the fetcher as never returning None, but None is gRPC's documented "unchanged".
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], reloader)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial_configuration(), fetcher, require_client_authentication=True
    )


def channel_credentials(paths: CertPaths) -> grpc.ChannelCredentials:
    """Client credentials: trust only `paths.ca`, present our certificate. Files are read now."""
    return grpc.ssl_channel_credentials(
        root_certificates=paths.ca.read_bytes(),
        private_key=paths.key.read_bytes(),
        certificate_chain=paths.cert.read_bytes(),
    )
