import datetime
import ipaddress
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jukinet.domain import NodeId, Role, UnauthenticatedError
from jukinet.domain.identity import server_for
from jukinet.pki import CertPaths, create_ca, ensure, issue, paths_for, peer_node_id, server_name
from tests.helpers.certs import custom_certificate

MUNI = NodeId(Role.MUNICIPALITY, "132080")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    create_ca(tmp_path)
    return tmp_path


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_ca_writes_p256_root_with_private_key_file(pki: Path) -> None:
    ca = _cert(pki / "ca.pem")
    assert ca.subject == ca.issuer
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert _mode(pki / "ca.key") == 0o600


def test_create_ca_is_idempotent(pki: Path) -> None:
    before = (pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes()
    create_ca(pki)
    assert ((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes()) == before


def test_issued_certificate_carries_identity_and_is_signed_by_ca(pki: Path) -> None:
    paths = issue(pki, MUNI)
    assert paths == CertPaths(
        cert=pki / "municipality-132080.pem", key=pki / "municipality-132080.key", ca=pki / "ca.pem"
    )
    cert = _cert(paths.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["jukinet://municipality/132080"]
    assert san.get_values_for_type(x509.DNSName) == ["municipality-132080.jukinet.invalid", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert len(list(san)) == 4
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["jukinet://municipality/132080"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == public

    ca = _cert(pki / "ca.pem")
    assert cert.issuer == ca.subject
    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    ca_public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    cert.verify_directly_issued_by(ca)

    expected = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=90)
    assert abs(cert.not_valid_after_utc - expected) < datetime.timedelta(minutes=1)
    assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC)

    assert _mode(paths.key) == 0o600
    assert not [p for p in pki.iterdir() if p.name.endswith(".tmp")]


def test_serials_are_random(pki: Path) -> None:
    first = _cert(issue(pki, MUNI).cert).serial_number
    second = _cert(issue(pki, MUNI).cert).serial_number
    assert first != second
    assert first.bit_length() > 64


def test_custom_sans(pki: Path) -> None:
    paths = issue(pki, MUNI, dns_names=("muni.example", "localhost"), ip_addresses=("::1", "10.0.0.5"))
    san = _cert(paths.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [server_name(MUNI), "muni.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.5"),
    ]


def test_ensure_does_not_reissue(pki: Path) -> None:
    paths = ensure(pki, MUNI)
    before = paths.cert.read_bytes(), paths.key.read_bytes()
    assert ensure(pki, MUNI) == paths
    assert (paths.cert.read_bytes(), paths.key.read_bytes()) == before
    paths.key.unlink()
    ensure(pki, MUNI)
    assert paths.cert.read_bytes() != before[0]


def test_only_node_servers_carry_a_server_name(pki: Path) -> None:
    """Clients verify a node by the server name in its certificate; no client identity may carry one."""
    for identity, expected in [
        (NodeId(Role.CENTER), ["center.jukinet.invalid"]),
        (NodeId(Role.PREFECTURE, "13"), ["prefecture-13.jukinet.invalid"]),
        (NodeId(Role.AGENCY, "pension"), []),
        (NodeId(Role.REGISTER, "132080"), []),
        (NodeId(Role.OPERATOR, "ops1", "center"), []),
    ]:
        san = _cert(issue(pki, identity).cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n for n in san.get_values_for_type(x509.DNSName) if n.endswith(".jukinet.invalid")]
        assert names == expected, identity


def test_ensure_reissues_a_node_certificate_without_its_server_name(pki: Path) -> None:
    """A certificate from before clients verified server names is replaced; a current one is kept."""
    old = _legacy_certificate(pki, MUNI)
    paths = ensure(pki, MUNI)
    assert paths.cert.read_bytes() != old
    san = _cert(paths.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert server_name(MUNI) in san.get_values_for_type(x509.DNSName)
    kept = paths.cert.read_bytes()
    assert ensure(pki, MUNI).cert.read_bytes() == kept


def test_a_reissue_keeps_the_names_and_addresses_the_old_certificate_was_issued_for(pki: Path) -> None:
    _legacy_certificate(pki, MUNI, dns=("cs.chofu.example",), ips=("10.0.0.5",))
    san = _cert(ensure(pki, MUNI).cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [server_name(MUNI), "localhost", "cs.chofu.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ("127.0.0.1", "10.0.0.5")]


def _legacy_certificate(pki: Path, identity: NodeId, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> bytes:
    """A certificate as issued before server names: URI, localhost and 127.0.0.1 (and `dns`, `ips`) only."""
    sans = [
        x509.UniformResourceIdentifier(identity.uri),
        x509.DNSName("localhost"),
        *(x509.DNSName(name) for name in dns),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        *(x509.IPAddress(ipaddress.ip_address(a)) for a in ips),
    ]
    key_pem, cert_pem = custom_certificate(pki, identity.uri, sans)
    paths = paths_for(pki, identity)
    paths.cert.write_bytes(cert_pem)
    paths.key.write_bytes(key_pem)
    return cert_pem


@pytest.mark.parametrize(
    ("caller", "server"),
    [
        ("jukinet://agency/pension", "jukinet://center"),
        ("jukinet://register/132080", "jukinet://municipality/132080"),
        ("jukinet://municipality/132080", "jukinet://prefecture/13"),
        ("jukinet://municipality/012084", "jukinet://prefecture/01"),
        ("jukinet://prefecture/13", "jukinet://center"),
        ("jukinet://operator/center/ops1", "jukinet://center"),
        ("jukinet://operator/prefecture-13/ops1", "jukinet://prefecture/13"),
        ("jukinet://operator/municipality-132080/ops1", "jukinet://municipality/132080"),
        ("jukinet://operator/elsewhere/ops1", None),
        ("jukinet://center", None),
    ],
)
def test_server_for_names_the_node_each_client_calls(caller: str, server: str | None) -> None:
    found = server_for(NodeId.parse(caller))
    assert (found.uri if found is not None else None) == server


@pytest.mark.parametrize(
    ("identity", "stem"),
    [
        (NodeId(Role.CENTER), "center"),
        (NodeId(Role.OPERATOR, "ops1", "center"), "operator-center-ops1"),
        (NodeId(Role.PREFECTURE, "13"), "prefecture-13"),
        (MUNI, "municipality-132080"),
    ],
)
def test_slug_naming(pki: Path, identity: NodeId, stem: str) -> None:
    expected = CertPaths(cert=pki / f"{stem}.pem", key=pki / f"{stem}.key", ca=pki / "ca.pem")
    assert paths_for(pki, identity) == expected
    assert issue(pki, identity) == expected
    uris = (
        _cert(expected.cert)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.UniformResourceIdentifier)
    )
    assert uris == [identity.uri]


def test_issue_without_ca_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="create_ca"):
        issue(tmp_path, MUNI)


class _FakeContext:
    def __init__(self, auth: Mapping[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> Mapping[str, list[bytes]]:
        return self._auth


def _peer(auth: Mapping[str, list[bytes]]) -> NodeId:
    return peer_node_id(cast("grpc.aio.ServicerContext[Any, Any]", _FakeContext(auth)))


_PEM = [b"-----BEGIN CERTIFICATE-----..."]


def test_peer_node_id_reads_the_single_jukinet_uri() -> None:
    auth = {"peer_uri": [b"jukinet://municipality/132080"], "x509_pem_cert": _PEM}
    assert _peer(auth) == MUNI
    auth = {"peer_uri": [b"spiffe://x/y", b"jukinet://center"], "x509_pem_cert": _PEM}
    assert _peer(auth) == NodeId(Role.CENTER)


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({}, "mutual TLS"),
        ({"x509_pem_cert": _PEM}, "no jukinet:// URI"),
        ({"peer_uri": [b"spiffe://x/y"], "x509_pem_cert": _PEM}, "spiffe://x/y"),
        (
            {"peer_uri": [b"jukinet://center", b"jukinet://prefecture/13"], "x509_pem_cert": _PEM},
            "exactly one",
        ),
        ({"peer_uri": [b"jukinet://municipality/999999"], "x509_pem_cert": _PEM}, "malformed"),
        ({"peer_uri": [b"jukinet://king/1"], "x509_pem_cert": _PEM}, "unknown role"),
        ({"peer_uri": [b"jukinet://\xff"], "x509_pem_cert": _PEM}, "UTF-8"),
    ],
)
def test_peer_node_id_rejects(auth: Mapping[str, list[bytes]], message: str) -> None:
    with pytest.raises(UnauthenticatedError, match=message):
        _peer(auth)
