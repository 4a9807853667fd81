"""mTLS client channels for CLI commands, from a PKI folder and an identity."""

import os
from pathlib import Path

import grpc

from jukinet.domain.identity import NodeId
from jukinet.pki import SECURE_CHANNEL_OPTIONS, channel_credentials, paths_for


def client_channel(address: str, pki_dir: Path, identity: str) -> grpc.aio.Channel:
    """An aio channel to `address`, authenticated as `identity` (a jukinet:// URI with a cert in pki_dir)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    node = NodeId.parse(identity)
    paths = paths_for(pki_dir, node)
    if not paths.cert.exists():
        raise SystemExit(
            f"no certificate for {identity} in {pki_dir}: run `jukinet pki issue --dir {pki_dir} {identity}`"
        )
    return grpc.aio.secure_channel(address, channel_credentials(paths), options=SECURE_CHANNEL_OPTIONS)
