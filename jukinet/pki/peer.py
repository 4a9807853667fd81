"""Who is calling: the jukinet identity in the verified client certificate of a gRPC call."""

from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc

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
