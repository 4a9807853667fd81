"""jukinet.audit: canonical encoding, chain, checkpoint signatures, the extension check and verify_log
against every kind of tampering."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from jukinet.audit import (
    GENESIS,
    Checkpoint,
    EntryValues,
    LogRow,
    Position,
    SignatureProblem,
    SignedCheckpoint,
    append,
    canonical,
    check_extension,
    countersign_bytes,
    entry_digest,
    parent_of,
    run,
    sign,
    split_digests,
    step,
    verify_log,
)
from jukinet.domain.identity import NodeId, Role
from jukinet.pki import paths_for

NOW_US = time.time_ns() // 1000  # within the test certificates' validity
MUNICIPALITY = NodeId(Role.MUNICIPALITY, "132080")
PREFECTURE = NodeId(Role.PREFECTURE, "13")
OTHER_PREFECTURE = NodeId(Role.PREFECTURE, "01")


def entry(i: int, subjects: str = "") -> EntryValues:
    return (
        NOW_US - 1_000_000 + i,
        f"req-{i}",
        "served",
        "jukinet://register/132080",
        "/jukinet.wire.v1.RegisterService/RecordChange",
        "",
        subjects or f"{i:011d}",
        "OK",
    )


def chain_rows(values: list[EntryValues], first_id: int = 1) -> list[LogRow]:
    rows, head = [], GENESIS
    for offset, v in enumerate(values):
        new = append(head, v)
        rows.append(LogRow(first_id + offset, v, head, new))
        head = new
    return rows


# -- encoding and chain --------------------------------------------------------------------------------


def test_canonical_bytes_are_fixed_and_length_prefixed() -> None:
    values: EntryValues = (1, "r", "made", "p", "m", "", "12345678901", "OK")
    expected = (
        b"\x01"
        + (1).to_bytes(8, "big")
        + b"\x00\x00\x00\x01r"
        + b"\x00\x00\x00\x04made"
        + b"\x00\x00\x00\x01p"
        + b"\x00\x00\x00\x01m"
        + b"\x00\x00\x00\x00"
        + b"\x00\x00\x00\x0b12345678901"
        + b"\x00\x00\x00\x02OK"
    )
    assert canonical(values) == expected
    # A golden value: changing the layout would silently break every stored chain.
    assert hashlib.sha256(expected).hexdigest() == entry_digest(values).hex()
    assert entry_digest(values).hex() == "e4fe8c41d9d24944ef9c1c2d3864cdd1d38643649b5650230f14c934840c7828"


def test_canonical_is_injective_across_field_boundaries_and_handles_unicode() -> None:
    a: EntryValues = (5, "ab", "c", "", "", "", "", "")
    b: EntryValues = (5, "a", "bc", "", "", "", "", "")
    assert canonical(a) != canonical(b)
    negative: EntryValues = (-1, "山田", "", "", "", "", "", "")
    assert canonical(negative)[1:9] == (-1).to_bytes(8, "big", signed=True)
    assert "山田".encode() in canonical(negative)


def test_chain_step_is_sha256_of_previous_head_and_entry_digest() -> None:
    v = entry(1)
    digest = hashlib.sha256(canonical(v)).digest()
    assert step(GENESIS, digest) == hashlib.sha256(GENESIS + digest).digest() == append(GENESIS, v)
    heads = [r.entry_hash for r in chain_rows([entry(i) for i in range(5)])]
    assert run(GENESIS, [entry_digest(entry(i)) for i in range(5)]) == heads[-1]
    assert split_digests(b"".join([b"\x01" * 32, b"\x02" * 32])) == [b"\x01" * 32, b"\x02" * 32]
    with pytest.raises(ValueError, match="whole number"):
        split_digests(b"\x00" * 33)


# -- the extension (consistency) check ---------------------------------------------------------------


def positions(count: int) -> tuple[list[bytes], list[bytes]]:
    digests = [entry_digest(entry(i)) for i in range(count)]
    heads = [GENESIS]
    for d in digests:
        heads.append(step(heads[-1], d))
    return digests, heads


def test_a_checkpoint_that_extends_the_witnessed_one_passes() -> None:
    digests, heads = positions(10)
    witnessed = Position(4, heads[4])
    assert check_extension(witnessed, witnessed, digests[4:], Position(10, heads[10])).ok
    # From an earlier base (the answer to the previous submission was lost): must pass through it.
    assert check_extension(witnessed, Position(2, heads[2]), digests[2:], Position(10, heads[10])).ok
    assert check_extension(witnessed, Position(0, GENESIS), digests, Position(10, heads[10])).ok
    assert check_extension(witnessed, witnessed, [], witnessed).ok


def test_shrinking_rewriting_or_a_wrong_head_is_not_an_extension() -> None:
    digests, heads = positions(10)
    witnessed = Position(6, heads[6])
    shrunk = check_extension(witnessed, Position(0, GENESIS), digests[:4], Position(4, heads[4]))
    assert shrunk.problem is not None
    assert "shrank" in shrunk.problem
    forged = [entry_digest(entry(100 + i)) for i in range(10)]
    rewritten = check_extension(witnessed, Position(0, GENESIS), forged, Position(10, run(GENESIS, forged)))
    assert rewritten.problem is not None
    assert "rewritten" in rewritten.problem
    wrong_head = check_extension(witnessed, witnessed, digests[6:], Position(10, heads[9]))
    assert wrong_head.problem is not None
    assert "do not lead" in wrong_head.problem
    other_base = check_extension(witnessed, Position(6, heads[5]), digests[6:], Position(10, heads[10]))
    assert other_base.problem is not None
    assert "no longer has the witnessed head" in other_base.problem
    ahead = check_extension(witnessed, Position(8, heads[8]), digests[8:], Position(10, heads[10]))
    assert ahead.resend_from_genesis
    with pytest.raises(ValueError, match="digests"):
        check_extension(witnessed, witnessed, digests[6:9], Position(10, heads[10]))


# -- signatures -------------------------------------------------------------------------------------


def signed_checkpoint(pki_dir: Path, size: int, head: bytes, node: NodeId = MUNICIPALITY) -> SignedCheckpoint:
    paths = paths_for(pki_dir, node)
    cp = Checkpoint(node.uri, size, head, NOW_US)
    return SignedCheckpoint(cp, sign(paths.key.read_bytes(), cp.to_bytes()), paths.cert.read_bytes())


def countersigned(pki_dir: Path, signed: SignedCheckpoint, witness: NodeId = PREFECTURE) -> SignedCheckpoint:
    paths = paths_for(pki_dir, witness)
    at = signed.checkpoint.at_us + 1000
    data = countersign_bytes(signed.checkpoint, signed.signature, witness.uri, at)
    return replace(
        signed,
        witness=witness.uri,
        witnessed_us=at,
        countersignature=sign(paths.key.read_bytes(), data),
        witness_cert=paths.cert.read_bytes(),
    )


def ca_of(pki_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())


def test_signature_and_countersignature_verify_and_any_change_breaks_them(pki_dir: Path) -> None:
    ca = ca_of(pki_dir)
    signed = countersigned(pki_dir, signed_checkpoint(pki_dir, 7, b"\x07" * 32))
    signed.check_signature(ca)
    signed.check_countersignature(ca)
    moved = replace(signed, checkpoint=replace(signed.checkpoint, size=8))
    with pytest.raises(SignatureProblem, match="does not verify"):
        moved.check_signature(ca)
    with pytest.raises(SignatureProblem, match="countersignature"):
        moved.check_countersignature(ca)
    # Signed with another node's key, under the municipality's name.
    other = signed_checkpoint(pki_dir, 7, b"\x07" * 32, PREFECTURE)
    impostor = replace(other, checkpoint=replace(other.checkpoint, node=MUNICIPALITY.uri))
    with pytest.raises(SignatureProblem, match="names jukinet://prefecture/13"):
        impostor.check_signature(ca)
    # Only the node's own parent may witness it.
    with pytest.raises(SignatureProblem, match="may not witness"):
        countersigned(pki_dir, signed, OTHER_PREFECTURE).check_countersignature(ca)
    with pytest.raises(SignatureProblem, match="may not witness"):
        countersigned(pki_dir, signed, NodeId(Role.CENTER)).check_countersignature(ca)
    assert parent_of(MUNICIPALITY.uri) == PREFECTURE.uri
    assert parent_of(PREFECTURE.uri) == "jukinet://center"
    assert parent_of("jukinet://center") == ""


def test_a_certificate_from_another_ca_is_refused(pki_dir: Path, foreign_pki_dir: Path) -> None:
    signed = signed_checkpoint(foreign_pki_dir, 3, b"\x03" * 32)
    signed.check_signature()  # self-consistent...
    with pytest.raises(SignatureProblem, match="not issued by the network CA"):
        signed.check_signature(ca_of(pki_dir))  # ...but not from the network CA


# -- verify_log: every tampering ------------------------------------------------------------------------


@pytest.fixture
def log(pki_dir: Path) -> tuple[list[LogRow], list[SignedCheckpoint]]:
    rows = chain_rows([entry(i) for i in range(20)])
    own = [
        countersigned(pki_dir, signed_checkpoint(pki_dir, 10, rows[9].entry_hash)),
        countersigned(pki_dir, signed_checkpoint(pki_dir, 20, rows[19].entry_hash)),
    ]
    return rows, own


def test_an_untouched_log_verifies(log: tuple[list[LogRow], list[SignedCheckpoint]], pki_dir: Path) -> None:
    rows, own = log
    report = verify_log(rows, own, own, ca=ca_of(pki_dir))
    assert report.ok, report.problem
    assert (report.entries, report.checkpoints, report.countersigned, report.witnessed) == (20, 2, 2, 2)
    assert report.summary().startswith("OK: jukinet://municipality/132080: 20 entries")


def test_one_changed_byte_is_found(log: tuple[list[LogRow], list[SignedCheckpoint]]) -> None:
    rows, own = log
    v = rows[6].values
    rows[6] = replace(rows[6], values=(v[0], v[1], v[2], v[3], v[4], v[5], v[6], "OJ"))
    report = verify_log(rows, own)
    assert report.bad_entry_id == 7
    assert "content does not match" in (report.problem or "")


def test_a_deleted_row_is_found(log: tuple[list[LogRow], list[SignedCheckpoint]]) -> None:
    rows, own = log
    del rows[4]
    report = verify_log(rows, own)
    assert report.bad_entry_id == 6
    assert "deleted, inserted or reordered" in (report.problem or "")


def test_reordered_rows_are_found(log: tuple[list[LogRow], list[SignedCheckpoint]]) -> None:
    rows, own = log
    rows[3], rows[8] = replace(rows[8], id=4), replace(rows[3], id=9)
    report = verify_log(rows, own)
    assert report.bad_entry_id == 4
    assert "reordered" in (report.problem or "")


def test_a_truncated_tail_is_found_by_the_checkpoints(log: tuple[list[LogRow], list[SignedCheckpoint]]) -> None:
    rows, own = log
    report = verify_log(rows[:17], own)
    assert "only 17 entries" in (report.problem or "")
    assert "truncated" in (report.problem or "")


def test_a_self_consistent_forgery_is_found_only_by_the_parents_countersigned_checkpoint(
    log: tuple[list[LogRow], list[SignedCheckpoint]], pki_dir: Path
) -> None:
    _, own = log
    # The insider rewrites the whole log consistently and re-signs checkpoints with the node's own key.
    forged = chain_rows([entry(i, subjects="99999999999") if i == 5 else entry(i) for i in range(20)])
    resigned = [signed_checkpoint(pki_dir, 20, forged[19].entry_hash)]
    assert verify_log(forged, resigned).ok  # locally consistent
    report = verify_log(forged, resigned, witnessed=own, ca=ca_of(pki_dir))
    assert not report.ok
    assert "checkpoint witnessed by jukinet://prefecture/13 at size 10" in (report.problem or "")
    assert "rewritten" in (report.problem or "")
    # Nor can the insider forge the parent's countersignature on its re-signed checkpoint.
    fake = replace(
        resigned[0],
        witness=PREFECTURE.uri,
        witnessed_us=NOW_US,
        countersignature=b"0" * 70,
        witness_cert=own[0].witness_cert,
    )
    assert "countersignature" in (verify_log(forged, [fake]).problem or "")


def test_a_checkpoint_of_another_node_or_unsigned_witnessed_checkpoint_is_refused(
    log: tuple[list[LogRow], list[SignedCheckpoint]], pki_dir: Path
) -> None:
    rows, own = log
    other = signed_checkpoint(pki_dir, 10, rows[9].entry_hash, PREFECTURE)
    assert "not of jukinet://municipality/132080" in (verify_log(rows, [own[0], other]).problem or "")
    bare = signed_checkpoint(pki_dir, 10, rows[9].entry_hash)
    assert "no countersignature" in (verify_log(rows, own, witnessed=[bare]).problem or "")
    report = verify_log(rows, own[:1])
    assert report.ok
    assert report.notes == ["10 entries after the last countersigned checkpoint are not witnessed yet"]
