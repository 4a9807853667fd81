"""`jukinet`: run nodes, manage the PKI, import register files, read access logs, run the local demo."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from jukinet.cli.client import client_channel, rpc_error_text
from jukinet.config import ConfigError, load_config
from jukinet.domain.identity import NodeId, Role
from jukinet.pki import certificate_serial, create_ca, issue, paths_for, revoke
from jukinet.pki.peer import certificate_role as peer_role

app = typer.Typer(no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)
pki_app = typer.Typer(no_args_is_help=True, help="The network CA and node certificates.")
node_app = typer.Typer(no_args_is_help=True, help="Run a node, see its state, cut it off.")
log_app = typer.Typer(no_args_is_help=True, help="A node's access log.")
register_app = typer.Typer(no_args_is_help=True, help="Feed a municipality node like the register system does.")
app.add_typer(pki_app, name="pki")
app.add_typer(node_app, name="node")
app.add_typer(log_app, name="log")
app.add_typer(register_app, name="register")
console = Console(stderr=True)

# Node kinds are separate packages that jukinet itself never imports; the CLI loads the chosen one.
NODE_PACKAGES = {"municipality": "municipality_node", "prefecture": "prefecture_node", "center": "center"}

PkiDir = Annotated[Path, typer.Option("--pki-dir", help="Folder holding ca.pem and the certificates.")]


@pki_app.command("init")
def pki_init(directory: Annotated[Path, typer.Option("--dir", help="Folder for the CA.")]) -> None:
    """Create the network CA (ECDSA P-256) if it does not exist yet."""

    create_ca(directory)
    console.print(f"CA ready in {directory}/ca.pem")


@pki_app.command("issue")
def pki_issue(
    identity: Annotated[str, typer.Argument(help="jukinet://municipality/132080, jukinet://center, …")],
    directory: Annotated[Path, typer.Option("--dir", help="The CA folder.")],
    days: Annotated[int, typer.Option(help="Validity in days.")] = 90,
    role: Annotated[str, typer.Option(help="Operator role: viewer, clerk or security-admin.")] = "",
) -> None:
    """Issue a certificate whose URI SAN names the holder (operators: with --role)."""
    node = NodeId.parse(identity)
    if node.role is Role.OPERATOR and role not in ("viewer", "clerk", "security-admin"):
        console.print("[red]operators need --role viewer, clerk or security-admin[/red]")
        raise typer.Exit(2)
    paths = issue(directory, node, validity_days=days, role=role)
    console.print(f"issued {identity}: {paths.cert} (key {paths.key})")


@pki_app.command("renew")
def pki_renew(
    identity: Annotated[str, typer.Argument(help="The identity whose certificate to renew.")],
    directory: Annotated[Path, typer.Option("--dir", help="The CA folder.")],
    days: Annotated[int, typer.Option(help="Validity in days.")] = 90,
    revoke_old: Annotated[bool, typer.Option(help="Also revoke the certificate being replaced.")] = False,
) -> None:
    """Replace a certificate (new key, same identity and role); running nodes pick it up without a restart."""
    node = NodeId.parse(identity)
    old = paths_for(directory, node).cert
    if not old.exists():
        console.print(f"[red]no certificate for {identity} in {directory}[/red]; use `jukinet pki issue`")
        raise typer.Exit(2)
    serial = certificate_serial(old)
    role = peer_role(old)
    paths = issue(directory, node, validity_days=days, role=role)
    if revoke_old:
        revoke(directory, [serial])
    console.print(f"renewed {identity}: {paths.cert}" + (f"; serial {serial:x} revoked" if revoke_old else ""))


@pki_app.command("revoke")
def pki_revoke(
    identity: Annotated[str, typer.Argument(help="The identity whose current certificate to revoke.")],
    directory: Annotated[Path, typer.Option("--dir", help="The CA folder.")],
) -> None:
    """Revoke an identity's current certificate: every node refuses it on its next call (UNAUTHENTICATED)."""
    cert = paths_for(directory, NodeId.parse(identity)).cert
    if not cert.exists():
        console.print(f"[red]no certificate for {identity} in {directory}[/red]")
        raise typer.Exit(2)
    serial = certificate_serial(cert)
    path = revoke(directory, [serial])
    console.print(f"revoked {identity} (serial {serial:x}); CRL {path}")


@node_app.command("run")
def node_run(config: Annotated[Path, typer.Option("--config", help="Node TOML file.")]) -> None:
    """Run one node (municipality, prefecture or center) from its TOML configuration."""
    try:
        cfg = load_config(config)
    except ConfigError as error:
        console.print(f"[red]config error:[/red] {error}")
        raise typer.Exit(2) from None
    bootstrap = importlib.import_module(f"{NODE_PACKAGES[cfg.kind]}.bootstrap")
    from jukinet.rpc.runtime import run_node

    run_node(cfg, bootstrap.build)


def _switch(node: str, pki_dir: Path, operator: str, reason: str | None) -> bool:
    from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc

    async def call() -> bool:
        async with client_channel(node, pki_dir, operator) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            if reason is None:
                return (await stub.Resume(admin_pb2.ResumeRequest(), timeout=10)).cut_off
            return (await stub.CutOff(admin_pb2.CutOffRequest(reason=reason), timeout=10)).cut_off

    try:
        return asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        console.print(rpc_error_text(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


@node_app.command("cutoff")
def node_cutoff(
    node: Annotated[str, typer.Option(help="Node address host:port.")],
    pki_dir: PkiDir,
    as_: Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/<node>/<id>.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the access log, shown to peers).")] = "emergency",
) -> None:
    """Emergency cut-off: stop all traffic on the node's links at once (peers keep their outboxes)."""
    _switch(node, pki_dir, as_, reason)
    console.print(f"{node} is cut off; `jukinet node resume` reopens its links")


@node_app.command("resume")
def node_resume(
    node: Annotated[str, typer.Option(help="Node address host:port.")],
    pki_dir: PkiDir,
    as_: Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/<node>/<id>.")],
) -> None:
    """Reopen a cut-off node's links; the outboxes on both sides drain."""
    _switch(node, pki_dir, as_, None)
    console.print(f"{node} is open again")


@log_app.command("show")
def log_show(
    node: Annotated[str, typer.Option(help="Node address host:port.")],
    pki_dir: PkiDir,
    as_: Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/<node>/<id>.")],
    resident: Annotated[str, typer.Option(help="Only entries about this 住民票コード.")] = "",
    caller: Annotated[str, typer.Option(help="Only entries of this peer URI.")] = "",
    limit: Annotated[int, typer.Option(help="How many entries (newest first).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show a node's access log (operator certificate required)."""
    from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc

    async def fetch() -> list[admin_pb2.AccessLogEntry]:
        async with client_channel(node, pki_dir, as_) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            entries: list[admin_pb2.AccessLogEntry] = []
            token = ""
            while len(entries) < limit:
                reply = await stub.ListAccessLog(
                    admin_pb2.ListAccessLogRequest(
                        page_size=min(1000, limit - len(entries)),
                        page_token=token,
                        resident_code=resident,
                        caller=caller,
                    ),
                    timeout=10,
                )
                entries.extend(reply.entries)
                token = reply.next_page_token
                if not token:
                    break
            return entries

    try:
        entries = asyncio.run(fetch())
    except grpc.aio.AioRpcError as error:
        console.print(rpc_error_text(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        for e in entries:
            print(
                json.dumps(
                    {
                        "id": e.id,
                        "time": e.time.ToDatetime(tzinfo=dt.UTC).isoformat(),
                        "request_id": e.request_id,
                        "direction": e.direction,
                        "peer": e.peer,
                        "method": e.method,
                        "purpose": e.purpose,
                        "subjects": list(e.subjects),
                        "outcome": e.outcome,
                    },
                    ensure_ascii=False,
                )
            )
        return
    table = Table(title=f"access log of {node}")
    for column in ("id", "time (UTC)", "dir", "peer", "method", "subjects", "outcome"):
        table.add_column(column)
    for e in entries:
        subjects = " ".join(e.subjects[:3]) + (f" (+{len(e.subjects) - 3})" if len(e.subjects) > 3 else "")
        table.add_row(
            str(e.id),
            e.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            e.direction,
            e.peer,
            e.method.rsplit("/", 1)[-1],
            subjects,
            e.outcome,
        )
    Console().print(table)


def _register_commands() -> None:
    from jukinet.cli import agency, audit, codes, demo, disclose, node_status, register_import

    register_app.command("import")(register_import.import_file)
    node_app.command("status")(node_status.status)
    node_app.command("digest")(node_status.digest)
    app.command("demo")(demo.demo)
    app.command("disclose")(disclose.disclose)
    app.add_typer(agency.agency_app, name="agency")
    app.add_typer(audit.audit_app, name="audit")
    app.add_typer(codes.codes_app, name="codes")


_register_commands()

if __name__ == "__main__":
    app()
