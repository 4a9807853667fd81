"""The network's private CA: an ECDSA P-256 root and short-lived node certificates.

A node's identity travels in its certificate's URI SAN (``jukinet://municipality/132080``); the DNS and IP
SANs only let clients dial the node by name or address. Files are written atomically so that a server's
certificate reloader never sees a half-written pair.
"""

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jukinet.domain.identity import NodeId

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"

_SCHEME = "jukinet://"
_CN_MAX = 64  # X.509 upper bound for commonName; the URI SAN, not the CN, is the identity
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock skew between nodes


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where a node's certificate, private key and the network CA certificate live."""

    cert: Path
    key: Path
    ca: Path


SERVER_NAME_DOMAIN = "jukinet.invalid"  # never resolved: a name to verify, not to look up (RFC 6761)


def server_name(identity: NodeId) -> str:
    """The DNS name a node's server certificate carries and its clients verify (``prefecture-13.jukinet.invalid``).

    Clients connect by address and check this name (gRPC's ssl_target_name_override), so a server holding
    some other certificate of the network (another node's, an agency's) fails the handshake: a municipality
    sends its residents' data to its own prefecture only, not to whoever answers at that address."""
    return f"{slug(identity)}.{SERVER_NAME_DOMAIN}"


def slug(identity: NodeId) -> str:
    """File stem for an identity: the URI without scheme, "/" replaced by "-" (``municipality-132080``)."""
    return identity.uri.removeprefix(_SCHEME).replace("/", "-")


def paths_for(pki_dir: Path, identity: NodeId) -> CertPaths:
    """The paths `issue` writes for `identity`, without issuing anything."""
    stem = slug(identity)
    return CertPaths(cert=pki_dir / f"{stem}.pem", key=pki_dir / f"{stem}.key", ca=pki_dir / CA_CERT_NAME)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a temporary file next to `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(pki_dir: Path, *, name: str = "jukinet network CA", validity_days: int = 3650) -> None:
    """Create the root CA (`pki_dir/ca.pem`, `pki_dir/ca.key` mode 0600). Does nothing if ca.pem exists."""
    cert_path, key_path = pki_dir / CA_CERT_NAME, pki_dir / CA_KEY_NAME
    if cert_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:_CN_MAX])])
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: once ca.pem exists, the CA is complete.
    _atomic_write(key_path, _key_pem(key), 0o600)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = pki_dir / CA_CERT_NAME, pki_dir / CA_KEY_NAME
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no CA in {pki_dir} ({e.filename} is missing); run create_ca({str(pki_dir)!r}) first"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an ECDSA private key")
    return cert, key


def issue(
    pki_dir: Path,
    identity: NodeId,
    *,
    validity_days: int = 90,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    role: str = "",
) -> CertPaths:
    """Issue a fresh P-256 certificate for `identity`, signed by the CA in `pki_dir`, replacing any old one.

    SANs: the identity URI, its `server_name` when the identity runs a node server, then `dns_names` and
    `ip_addresses`. EKU: serverAuth and clientAuth. The validity never extends beyond the CA's own.
    """
    ca_cert, ca_key = _load_ca(pki_dir)
    paths = paths_for(pki_dir, identity)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = _now()
    not_after = min(now + datetime.timedelta(days=validity_days), ca_cert.not_valid_after_utc)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, identity.uri[:_CN_MAX])]
    if role:  # operator roles travel in the subject's OU (viewer, clerk, security-admin)
        subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    if identity.serves:
        sans.append(x509.DNSName(server_name(identity)))
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # Key first, certificate last: a reloader that sees the new certificate also sees its key.
    _atomic_write(paths.key, _key_pem(key), 0o600)
    _atomic_write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def lacks_server_name(cert_path: Path, identity: NodeId) -> bool:
    """Whether a node's certificate predates server names (its clients would refuse it)."""
    if not identity.serves:
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    return server_name(identity) not in names.get_values_for_type(x509.DNSName)


def _held_names(cert_path: Path) -> tuple[list[str], list[str]]:
    """The DNS names (but the jukinet server name, which `issue` adds itself) and IP addresses a certificate
    was issued for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = [name for name in san.get_values_for_type(x509.DNSName) if not name.endswith("." + SERVER_NAME_DOMAIN)]
    return dns, [str(address) for address in san.get_values_for_type(x509.IPAddress)]


def ensure(
    pki_dir: Path,
    identity: NodeId,
    *,
    validity_days: int = 90,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    role: str = "",
) -> CertPaths:
    """Like `issue`, but only if the certificate or key file is missing, or a node's certificate lacks its
    `server_name` (issued before clients verified it). A re-issue keeps the DNS names and addresses the old
    certificate was issued for, besides `dns_names` and `ip_addresses`."""
    paths = paths_for(pki_dir, identity)
    if paths.cert.exists() and paths.key.exists():
        if not lacks_server_name(paths.cert, identity):
            return paths
        held_dns, held_ips = _held_names(paths.cert)
        dns_names = list(dict.fromkeys([*dns_names, *held_dns]))
        ip_addresses = list(dict.fromkeys([*ip_addresses, *held_ips]))
    return issue(
        pki_dir, identity, validity_days=validity_days, dns_names=dns_names, ip_addresses=ip_addresses, role=role
    )
