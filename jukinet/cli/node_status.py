"""`jukinet node status` and `jukinet node digest`: what a node holds, for its operators (viewer role or
above), with the same calls the demo uses to check that the tiers agree."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from jukinet.cli.agency import AsJson, PkiDir, run_rpc
from jukinet.cli.client import client_channel
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc

TIMEOUT_S = 30.0
NodeAddress = Annotated[str, typer.Option("--node", help="Node address host:port.")]
Operator = Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/<node>/<id>.")]


def status_json(s: admin_pb2.GetStatusResponse) -> dict[str, Any]:
    return {
        "node": s.node,
        "events": s.event_count,
        "active_residents": s.active_count,
        "outbox_depth": s.outbox_depth,
        "free_codes": s.free_codes,
        "access_log_entries": s.access_log_count,
        "cut_off": s.cut_off,
        "origins": [{"origin": o.origin, "head_seq": o.head_seq, "forwarded_seq": o.forwarded_seq} for o in s.origins],
    }


def status(node: NodeAddress, pki_dir: PkiDir, as_: Operator, as_json: AsJson = False) -> None:
    """A node's record counts, outbox depth, per-origin positions and link state."""

    async def call() -> admin_pb2.GetStatusResponse:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: admin_pb2_grpc.AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(channel)
            reply: admin_pb2.GetStatusResponse = await stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=TIMEOUT_S)
            return reply

    found = status_json(run_rpc(call()))
    if as_json:
        print(json.dumps(found, ensure_ascii=False))
        return
    console = Console()
    link = "[red]CUT OFF[/red] (jukinet node resume reopens it)" if found["cut_off"] else "open"
    console.print(
        f"{found['node']}: {found['events']:,} events, {found['active_residents']:,} active residents, "
        f"outbox {found['outbox_depth']:,}, free codes {found['free_codes']:,}, "
        f"access log {found['access_log_entries']:,} entries, links {link}"
    )
    if found["origins"]:
        table = Table(title="per origin")
        for column in ("origin", "head seq (stored here)", "forwarded seq (acknowledged upstream)"):
            table.add_column(column, justify="right")
        for o in found["origins"]:
            table.add_row(o["origin"], f"{o['head_seq']:,}", f"{o['forwarded_seq']:,}")
        console.print(table)


def digest(
    municipality: Annotated[str, typer.Argument(help="全国地方公共団体コード of the municipality, 6 digits.")],
    node: NodeAddress,
    pki_dir: PkiDir,
    as_: Operator,
    as_json: AsJson = False,
) -> None:
    """Count and SHA-256 over what a node holds for one municipality: the same at every tier means they agree."""

    async def call() -> admin_pb2.GetDigestResponse:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: admin_pb2_grpc.AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(channel)
            request = admin_pb2.GetDigestRequest(municipality_code=municipality)
            reply: admin_pb2.GetDigestResponse = await stub.GetDigest(request, timeout=TIMEOUT_S)
            return reply

    d = run_rpc(call())
    found = {
        "municipality_code": d.municipality_code,
        "registrations": d.registration_count,
        "active": d.active_count,
        "head_seq": d.head_seq,
        "sha256": d.digest.hex(),
    }
    if as_json:
        print(json.dumps(found))
        return
    print(
        f"{d.municipality_code}: {d.registration_count:,} registrations ({d.active_count:,} active), "
        f"last seq {d.head_seq:,}, sha256 {d.digest.hex()}"
    )
