"""`jukinet codes anomalies`: the 住民票コード the center found that need reconciling (never issued, or
retired and still registered as active elsewhere), for a center operator with role clerk or above."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from jukinet.cli.agency import Node, PkiDir, run_rpc
from jukinet.cli.client import client_channel
from jukinet.domain.validate import JST
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc

TIMEOUT_S = 30.0
codes_app = typer.Typer(no_args_is_help=True, help="住民票コード reconciliation at the center.")


def anomaly_json(a: admin_pb2.CodeAnomaly) -> dict[str, Any]:
    found: dict[str, Any] = {
        "id": a.id,
        "detected": _jst(a.detected_time),
        "resident_code": a.resident_code,
        "kind": a.kind,
        "municipality_code": a.municipality_code,
        "event": f"{a.origin}#{a.seq}",
        "detail": a.detail,
    }
    if a.replaced_by:
        found["replaced_by"] = a.replaced_by
    if a.HasField("resolved_time"):
        found |= {"resolved": _jst(a.resolved_time), "resolved_by": a.resolved_by, "resolution": a.resolution}
    return found


def _jst(stamp: Any) -> str:
    return str(stamp.ToDatetime(tzinfo=dt.UTC).astimezone(JST).isoformat())


@codes_app.command("anomalies")
def anomalies(
    node: Node,
    pki_dir: PkiDir,
    as_: Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/center/<id>.")],
    kind: Annotated[str, typer.Option(help="Only this kind: unissued or retired_in_use.")] = "",
    all_: Annotated[bool, typer.Option("--all", help="Resolved ones too (default: open ones only).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="How many (newest first).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List the codes the center holds but never issued, or that a code change retired and that another
    municipality still registers; reconcile each with the municipality named."""

    async def fetch() -> tuple[list[admin_pb2.CodeAnomaly], int]:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: admin_pb2_grpc.AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(channel)
            found: list[admin_pb2.CodeAnomaly] = []
            token = ""
            unchecked = 0
            while len(found) < limit:
                reply = await stub.ListCodeAnomalies(
                    admin_pb2.ListCodeAnomaliesRequest(
                        page_size=min(1000, limit - len(found)), page_token=token, kind=kind, include_resolved=all_
                    ),
                    timeout=TIMEOUT_S,
                )
                found.extend(reply.anomalies)
                unchecked = reply.unchecked_events
                token = reply.next_page_token
                if not token:
                    break
            return found, unchecked

    found, unchecked = run_rpc(fetch())
    if as_json:
        for a in found:
            print(json.dumps(anomaly_json(a), ensure_ascii=False))
        return
    console = Console()
    if not found:
        console.print("no code anomalies recorded" if all_ else "no open code anomalies")
    else:
        table = Table(title=f"code anomalies at {node}")
        columns = ("id", "detected (JST)", "住民票コード", "kind", "municipality", "event", "detail")
        for column in (*columns, "resolved") if all_ else columns:
            table.add_column(column)
        for a in found:
            row = anomaly_json(a)
            cells = [
                str(a.id),
                row["detected"][:19],
                a.resident_code,
                a.kind,
                a.municipality_code,
                row["event"],
                a.detail,
            ]
            if all_:
                cells.append(f"{row['resolved'][:16]} {a.resolved_by}: {a.resolution}" if "resolved" in row else "")
            table.add_row(*cells)
        console.print(table)
    if unchecked:
        console.print(f"{unchecked:,} applied events are not checked yet (the center checks them every second)")


@codes_app.command("resolve")
def resolve(
    anomaly_id: Annotated[int, typer.Argument(min=1, help="The anomaly's id (from `jukinet codes anomalies`).")],
    resolution: Annotated[str, typer.Option(help="What was done, for the record (at most 300 characters).")],
    node: Node,
    pki_dir: PkiDir,
    as_: Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/center/<id>.")],
) -> None:
    """Record that an anomaly was reconciled (say, the municipality corrected the code by 職権修正): once, with
    your identity and the time; it leaves the open list and the gauge."""

    async def call() -> admin_pb2.ResolveCodeAnomalyResponse:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: admin_pb2_grpc.AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(channel)
            request = admin_pb2.ResolveCodeAnomalyRequest(id=anomaly_id, resolution=resolution)
            reply: admin_pb2.ResolveCodeAnomalyResponse = await stub.ResolveCodeAnomaly(request, timeout=TIMEOUT_S)
            return reply

    reply = run_rpc(call())
    a = reply.anomaly
    print(f"code anomaly {a.id} ({a.resident_code}, {a.kind}) resolved by {a.resolved_by}: {a.resolution}")
