"""Who is calling: the jukinet identity in the verified client certificate of a gRPC call."""

import datetime
import functools
from collections.abc import Mapping
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
    return _node_id(*_uris_and_pem(_auth(context)))


def peer_identity(
    context: "grpc.aio.ServicerContext[Any, Any] | grpc.ServicerContext",
) -> tuple[NodeId, "PeerCertificate"]:
    """The caller's NodeId and its certificate's serial, expiry and role, from one read of the call's auth
    context (the per-call hot path; both parses are cached per distinct certificate)."""
    uris, pem = _uris_and_pem(_auth(context))
    node = _node_id(uris, pem)
    if pem is None:
        raise UnauthenticatedError("no client certificate reached the server")
    return node, _parse(pem)


def _auth(context: "grpc.aio.ServicerContext[Any, Any] | grpc.ServicerContext") -> Mapping[str, Any]:
    # grpc-stubs types the sync auth_context() as Mapping[str, bytes]; at run time both give lists of bytes.
    return cast(Mapping[str, Any], context.auth_context())


def _uris_and_pem(auth: Mapping[str, Any]) -> tuple[tuple[bytes, ...], bytes | None]:
    raw = auth.get("peer_uri", [])
    uris = (raw,) if isinstance(raw, bytes) else tuple(raw)
    pems = auth.get("x509_pem_cert") or []
    pem = bytes(pems[0]) if len(pems) == 1 else None
    return uris, pem


@functools.lru_cache(maxsize=4096)
def _node_id(values: tuple[bytes, ...], pem: bytes | None) -> NodeId:
    """Parsed once per distinct (URIs, certificate); errors are raised afresh each time (not cached)."""
    uris: list[str] = []
    for value in values:
        try:
            uris.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise UnauthenticatedError("peer certificate has a URI SAN that is not valid UTF-8") from None
    ours = [u for u in uris if u.startswith(_SCHEME)]
    if not ours:
        if pem is None:
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


def certificate_role(cert_path: Path) -> str:
    """The operator role (subject OU) of a certificate file, "" when absent."""
    return _parse(cert_path.read_bytes()).role
