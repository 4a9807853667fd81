"""Tamper-evident access logs (pure): the hash chain, signed and countersigned checkpoints, verification.

Only the standard library and `cryptography`; storage and RPC adapters live elsewhere."""

from jukinet.audit.chain import (
    DIGEST_SIZE,
    ENTRY_COLUMNS,
    GENESIS,
    GENESIS_POSITION,
    EntryValues,
    Extension,
    Position,
    append,
    canonical,
    check_extension,
    entry_digest,
    run,
    split_digests,
    step,
)
from jukinet.audit.checkpoint import (
    Checkpoint,
    SignatureProblem,
    SignedCheckpoint,
    certificate_uri,
    check_certificate,
    countersign_bytes,
    parent_of,
    sign,
    verify,
)
from jukinet.audit.verify import LogRow, Report, verify_log

__all__ = [
    "DIGEST_SIZE",
    "ENTRY_COLUMNS",
    "GENESIS",
    "GENESIS_POSITION",
    "Checkpoint",
    "EntryValues",
    "Extension",
    "LogRow",
    "Position",
    "Report",
    "SignatureProblem",
    "SignedCheckpoint",
    "append",
    "canonical",
    "certificate_uri",
    "check_certificate",
    "check_extension",
    "countersign_bytes",
    "entry_digest",
    "parent_of",
    "run",
    "sign",
    "split_digests",
    "step",
    "verify",
    "verify_log",
]
