"""`jukinet audit`: verify a node's tamper-evident access log offline; acknowledge a child's audit alert."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from jukinet.audit import Report, SignedCheckpoint, verify_log
from jukinet.cli.agency import run_rpc
from jukinet.cli.client import client_channel

audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident access log: verify it, acknowledge alerts.")


def _url(database: str) -> str:
    if "://" in database:
        return database
    path = Path(database)
    if not path.exists():
        raise typer.BadParameter(f"{database}: no such SQLite file (or pass a database URL)")
    return f"sqlite:///{path}"


def verify_databases(
    database: str, parent_database: str = "", node: str = "", ca: x509.Certificate | None = None
) -> Report:
    """Recomputes the node's chain, checks its checkpoints and, given the parent's database, the checkpoints
    the parent witnessed for it (since the latest acknowledged rebase)."""
    from jukinet.storage import audit_repo, make_engine  # imported here: keeps every other command's start fast

    engine = make_engine(_url(database), create_schema=False)
    try:
        with engine.connect() as conn:
            own = [c.signed for c in audit_repo.own_checkpoints(conn)]
            node = node or (own[0].checkpoint.node if own else "")
            witnessed: list[SignedCheckpoint] = []
            skipped = 0
            if parent_database:
                if not node:
                    raise typer.BadParameter("the node has no checkpoints yet: name it with --node")
                parent = make_engine(_url(parent_database), create_schema=False)
                try:
                    with parent.connect() as parent_conn:
                        witnessed, skipped = audit_repo.witnessed_of(parent_conn, node)
                finally:
                    parent.dispose()
            report = verify_log(audit_repo.log_rows(conn), own, witnessed, node=node, ca=ca)
    finally:
        engine.dispose()
    if skipped:
        report.notes.append(f"{skipped} witnessed checkpoints before the latest acknowledged alert were not compared")
    return report


def verify(
    database: Annotated[str, typer.Option("--database", help="The node's database URL (or SQLite file).")],
    parent_database: Annotated[
        str, typer.Option("--parent-database", help="The parent's database: compare with what it witnessed.")
    ] = "",
    node: Annotated[str, typer.Option("--node", help="The node's identity URI (default: from its checkpoints).")] = "",
    pki_dir: Annotated[
        Path | None, typer.Option("--pki-dir", help="Also check that every signing certificate is from this CA.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Recompute a node's hash chain and verify every checkpoint signature and countersignature: prints OK, or
    the first bad entry and exits 1."""
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes()) if pki_dir is not None else None
    report = verify_databases(database, parent_database, node, ca)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "node": report.node,
                    "entries": report.entries,
                    "checkpoints": report.checkpoints,
                    "countersigned": report.countersigned,
                    "witnessed": report.witnessed,
                    "problem": report.problem,
                    "bad_entry_id": report.bad_entry_id,
                    "notes": report.notes,
                },
                ensure_ascii=False,
            )
        )
    else:
        print(report.summary())
        for note in report.notes:
            print(f"  note: {note}")
    if not report.ok:
        raise typer.Exit(1)


def acknowledge(
    child: Annotated[str, typer.Argument(help="The flagged child's identity, e.g. jukinet://municipality/132080.")],
    node: Annotated[str, typer.Option("--node", help="Address host:port of the parent that flagged it.")],
    pki_dir: Annotated[Path, typer.Option("--pki-dir", help="Folder holding ca.pem and the certificates.")],
    as_: Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/<node>/<id>.")],
    note: Annotated[str, typer.Option(help="What you found and did (kept with the alert).")] = "",
) -> None:
    """Acknowledge a child's audit alert (security-admin): its next checkpoint becomes the new baseline."""
    from jukinet.wire.v1 import audit_pb2, audit_pb2_grpc

    async def call() -> audit_pb2.AcknowledgeAuditAlertResponse:
        async with client_channel(node, pki_dir, as_) as channel:
            stub = audit_pb2_grpc.AuditServiceStub(channel)
            request = audit_pb2.AcknowledgeAuditAlertRequest(node=child, note=note)
            reply: audit_pb2.AcknowledgeAuditAlertResponse = await stub.AcknowledgeAuditAlert(request, timeout=10)
            return reply

    reply = run_rpc(call())
    flagged = reply.flagged_time.ToDatetime(tzinfo=dt.UTC).isoformat()
    print(f"acknowledged: {child} was flagged at {flagged}: {reply.reason}")


audit_app.command("verify")(verify)
audit_app.command("ack")(acknowledge)
