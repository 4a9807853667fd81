"""Revocation: the network CA's CRL (crl.pem beside ca.pem), written by `jukinet pki revoke` and checked
by every server on every call (grpcio has no CRL option), reloaded when the file changes."""

import datetime
import os
import tempfile
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from jukinet.pki.ca import _load_ca

log = structlog.get_logger(__name__)
CRL_FILE = "crl.pem"
_NEXT_UPDATE = datetime.timedelta(days=7)


def crl_path(pki_dir: Path) -> Path:
    return pki_dir / CRL_FILE


def revoke(pki_dir: Path, serials: list[int]) -> Path:
    """Adds serials to the CRL (keeping those already revoked) and signs it with the CA key."""
    ca_cert, ca_key = _load_ca(pki_dir)
    now = datetime.datetime.now(datetime.UTC)
    revoked = {entry.serial_number: entry.revocation_date_utc for entry in _load(pki_dir) or []}
    for serial in serials:
        revoked.setdefault(serial, now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + _NEXT_UPDATE)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    path = crl_path(pki_dir)
    fd, tmp = tempfile.mkstemp(dir=pki_dir, prefix=".crl-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)
    return path


def certificate_serial(cert_path: Path) -> int:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


def _load(pki_dir: Path) -> x509.CertificateRevocationList | None:
    path = crl_path(pki_dir)
    if not path.exists():
        return None
    return x509.load_pem_x509_crl(path.read_bytes())


class RevocationList:
    """The revoked serials, re-read whenever crl.pem changes. A CRL not signed by our CA is ignored, and a
    deleted one keeps the last list: only a newer signed CRL can take a revocation back."""

    def __init__(self, pki_dir: Path) -> None:
        self._pki_dir = pki_dir
        self._path = str(crl_path(pki_dir))  # checked on every call: a plain os.stat, no Path building
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._missing_reported = False

    def is_revoked(self, serial: int) -> bool:
        self._refresh()
        return serial in self._serials

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            if self._serials and not self._missing_reported:  # deleting the CRL must not un-revoke anyone
                log.error("crl_missing_keeping_last", path=self._path, revoked=len(self._serials))
                self._missing_reported = True
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        crl = x509.load_pem_x509_crl(Path(self._path).read_bytes())
        ca = x509.load_pem_x509_certificate((self._pki_dir / "ca.pem").read_bytes())
        if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            return  # keep the last good list; a forged CRL must not un-revoke anyone
        self._stamp = stamp
        self._serials = frozenset(entry.serial_number for entry in crl)
        self._missing_reported = False
