"""The network PKI: a private ECDSA P-256 CA, node certificates with jukinet:// URI SANs, mTLS credentials."""

from jukinet.pki.ca import CertPaths, create_ca, ensure, issue, lacks_server_name, paths_for, server_name, slug
from jukinet.pki.credentials import (
    SECURE_CHANNEL_OPTIONS,
    SECURE_SERVER_OPTIONS,
    CertificateReloader,
    channel_credentials,
    channel_options,
    server_credentials,
)
from jukinet.pki.peer import PeerCertificate, peer_identity, peer_node_id
from jukinet.pki.revocation import RevocationList, certificate_serial, revoke

__all__ = [
    "SECURE_CHANNEL_OPTIONS",
    "SECURE_SERVER_OPTIONS",
    "CertPaths",
    "CertificateReloader",
    "PeerCertificate",
    "RevocationList",
    "certificate_serial",
    "channel_credentials",
    "channel_options",
    "create_ca",
    "ensure",
    "issue",
    "lacks_server_name",
    "paths_for",
    "peer_identity",
    "peer_node_id",
    "revoke",
    "server_credentials",
    "server_name",
    "slug",
]
