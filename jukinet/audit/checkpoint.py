"""Checkpoints: a node signs (its identity, log size, head hash, time) with its own ECDSA P-256 key; the
parent that witnessed it countersigns (the checkpoint, the node's signature, its own identity, time).

Both byte layouts are fixed and versioned; signatures are DER ECDSA over SHA-256. Each signature is stored
with the PEM certificate of its key, so old checkpoints stay verifiable after certificate renewals."""

import datetime as dt
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jukinet.audit.chain import DIGEST_SIZE
from jukinet.domain.identity import NodeId, Role

CHECKPOINT_TAG = b"jukinet-audit-checkpoint-v1\x00"
COUNTERSIGN_TAG = b"jukinet-audit-countersign-v1\x00"
_SCHEME = "jukinet://"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class SignatureProblem(ValueError):
    """A signature, or the certificate it is checked with, does not hold; the message says which."""


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


@dataclass(frozen=True, slots=True)
class Checkpoint:
    node: str  # jukinet:// URI of the node whose log this is
    size: int  # entries in the log
    head: bytes  # chain head after `size` entries
    at_us: int  # when it was signed, microseconds since the epoch (UTC)

    def to_bytes(self) -> bytes:
        if len(self.head) != DIGEST_SIZE or self.size < 0:
            raise ValueError("a checkpoint needs a 32-byte head and a size >= 0")
        return (
            CHECKPOINT_TAG
            + _lp(self.node.encode("utf-8"))
            + self.size.to_bytes(8, "big")
            + self.head
            + self.at_us.to_bytes(8, "big", signed=True)
        )


def countersign_bytes(checkpoint: Checkpoint, signature: bytes, witness: str, witnessed_us: int) -> bytes:
    """What the parent signs: the checkpoint, the child's own signature of it, the parent and the time."""
    return (
        COUNTERSIGN_TAG
        + _lp(checkpoint.to_bytes())
        + _lp(signature)
        + _lp(witness.encode("utf-8"))
        + witnessed_us.to_bytes(8, "big", signed=True)
    )


def sign(key_pem: bytes, data: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the node key is not an ECDSA key")
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


@functools.lru_cache(maxsize=256)
def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise SignatureProblem("the stored certificate is not a PEM X.509 certificate") from None


def certificate_uri(cert: x509.Certificate) -> str:
    """The single jukinet:// URI SAN of a certificate ("" when it has none or several)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(_SCHEME)]
    return uris[0] if len(uris) == 1 else ""


def check_certificate(
    pem: bytes, expected_uri: str, at_us: int, ca: x509.Certificate | None = None
) -> x509.Certificate:
    """The certificate, once it names `expected_uri`, was valid at `at_us` and (given the CA) was issued by
    the network CA. Raises SignatureProblem."""
    cert = load_certificate(pem)
    uri = certificate_uri(cert)
    if uri != expected_uri:
        raise SignatureProblem(f"the certificate names {uri or 'no jukinet:// identity'}, not {expected_uri}")
    at = _EPOCH + dt.timedelta(microseconds=at_us)
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise SignatureProblem(f"the certificate of {expected_uri} was not valid at {at.isoformat()}")
    if ca is not None:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise SignatureProblem(f"the certificate of {expected_uri} was not issued by the network CA") from None
    return cert


def verify(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def parent_of(node_uri: str) -> str:
    """The node that witnesses `node_uri`'s checkpoints ("" for the center, which has no parent)."""
    node = NodeId.parse(node_uri)
    if node.role is Role.MUNICIPALITY:
        return NodeId(Role.PREFECTURE, node.prefecture).uri
    if node.role is Role.PREFECTURE:
        return NodeId(Role.CENTER).uri
    return ""


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint with its signature and, once witnessed, the parent's countersignature."""

    checkpoint: Checkpoint
    signature: bytes
    signer_cert: bytes  # PEM
    witness: str = ""
    witnessed_us: int = 0
    countersignature: bytes = b""
    witness_cert: bytes = b""  # PEM

    @property
    def countersigned(self) -> bool:
        return bool(self.countersignature)

    def check_signature(self, ca: x509.Certificate | None = None) -> None:
        """Raises SignatureProblem unless the node's own signature holds."""
        cp = self.checkpoint
        cert = check_certificate(self.signer_cert, cp.node, cp.at_us, ca)
        if not verify(cert, self.signature, cp.to_bytes()):
            raise SignatureProblem(f"the signature of {cp.node} on its checkpoint at size {cp.size} does not verify")

    def check_countersignature(self, ca: x509.Certificate | None = None) -> None:
        """Raises SignatureProblem unless the parent's countersignature holds (and it is the node's parent)."""
        cp = self.checkpoint
        expected = parent_of(cp.node)
        if not expected or self.witness != expected:
            raise SignatureProblem(f"{self.witness or 'nobody'} may not witness {cp.node} (expected {expected})")
        cert = check_certificate(self.witness_cert, self.witness, self.witnessed_us, ca)
        data = countersign_bytes(cp, self.signature, self.witness, self.witnessed_us)
        if not verify(cert, self.countersignature, data):
            raise SignatureProblem(
                f"the countersignature of {self.witness} on the checkpoint of {cp.node} at size {cp.size}"
                " does not verify"
            )
