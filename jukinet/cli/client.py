"""mTLS client channels for CLI commands, from a PKI folder and an identity."""

import os
from pathlib import Path

import grpc

from jukinet.domain.identity import NodeId, server_for
from jukinet.pki import channel_credentials, channel_options, paths_for

WRONG_SERVER_HINT = (
    "the server at that address could not prove it is the node this command expects: check --node, and that"
    " --as is an identity of a client of that node; if it is the right node, its certificate predates server"
    " names: run `jukinet pki renew` for it"
)


def rpc_error_text(error: grpc.aio.AioRpcError) -> str:
    """`CODE: details` of a failed call, with what to check when the server was not the expected node."""
    details = error.details() or ""
    text = f"{error.code().name}: {details}"
    if "Hostname Verification" in details:
        text += f"\n{WRONG_SERVER_HINT}"
    return text


def client_channel(address: str, pki_dir: Path, identity: str, server: str | None = None) -> grpc.aio.Channel:
    """An aio channel to `address`, authenticated as `identity` (a jukinet:// URI with a cert in pki_dir).

    The server must prove it is `server` (a jukinet:// URI; by default the node `identity` calls: see
    jukinet.domain.identity.server_for), by the server name in its certificate."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    node = NodeId.parse(identity)
    paths = paths_for(pki_dir, node)
    if not paths.cert.exists():
        raise SystemExit(
            f"no certificate for {identity} in {pki_dir}: run `jukinet pki issue --dir {pki_dir} {identity}`"
        )
    expected = NodeId.parse(server) if server is not None else server_for(node)
    if expected is None:
        raise SystemExit(
            f"{identity} is not a client of any node that can be named: act as an agency, a register system,"
            " an operator of a node, a municipality or a prefecture"
        )
    return grpc.aio.secure_channel(address, channel_credentials(paths), options=channel_options(expected))
