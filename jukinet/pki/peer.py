"""Who is calling: the jukinet identity in the verified client certificate of a gRPC call."""

import datetime
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from jukinet.domain.errors import UnauthenticatedError
from jukinet.domain.identity import NodeId

_SCHEME = "jukinet://"


def peer_node_id(context: "grpc.aio.ServicerContext[Any, Any] | grpc.ServicerContext") -> NodeId:
    """The caller's NodeId, from the single jukinet:// URI SAN of its certificate.

    Raises UnauthenticatedError if the call is not over mutual TLS, or the certificate carries no, several
    or a malformed jukinet:// URI.
    """
    # grpc-stubs types the sync auth_context() as Mapping[str, bytes]; at run time both give lists of bytes.
    auth = cast(Mapping[str, Iterable[bytes] | bytes], context.auth_context())
    raw = auth.get("peer_uri", [])
    values = [raw] if isinstance(raw, bytes) else list(raw)
    uris: list[str] = []
    for value in values:
        try:
            uris.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise UnauthenticatedError("peer certificate has a URI SAN that is not valid UTF-8") from None
    ours = [u for u in uris if u.startswith(_SCHEME)]
    if not ours:
        if not auth.get("x509_pem_cert"):
            raise UnauthenticatedError("no client certificate: the call did not arrive over mutual TLS")
        others = f" (it has {', '.join(map(repr, uris))})" if uris else ""
        raise UnauthenticatedError(f"peer certificate carries no jukinet:// URI SAN{others}")
    if len(ours) > 1:
        raise UnauthenticatedError(
            f"peer certificate carries {len(ours)} jukinet:// URI SANs ({', '.join(ours)}); exactly one is required"
        )
    return NodeId.parse(ours[0])


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    serial: int
    not_after: datetime.datetime
    role: str  # the subject OU (operator role), "" when absent


@functools.lru_cache(maxsize=4096)
def _parse(pem: bytes) -> PeerCertificate:
    cert = x509.load_pem_x509_certificate(pem)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(units[0].value) if units else ""
    return PeerCertificate(cert.serial_number, cert.not_valid_after_utc, role)


def peer_certificate(context: "grpc.aio.ServicerContext[Any, Any] | grpc.ServicerContext") -> PeerCertificate:
    """Serial, expiry and role of the caller's leaf certificate (parsed once per distinct certificate)."""
    values = cast(Mapping[str, Sequence[bytes]], context.auth_context()).get("x509_pem_cert") or []
    if len(values) != 1:
        raise UnauthenticatedError("no client certificate reached the server")
    return _parse(bytes(values[0]))


def certificate_role(cert_path: Path) -> str:
    """The operator role (subject OU) of a certificate file, "" when absent."""
    return _parse(cert_path.read_bytes()).role
