"""`jukinet disclose CODE`: a center operator discloses to a resident what the network holds on them and
every provision of their data (本人確認情報開示, 提供状況開示)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from jukinet.cli.agency import AsJson, Node, PkiDir, record_json, record_table, run_rpc
from jukinet.cli.client import client_channel
from jukinet.domain.validate import JST
from jukinet.wire.v1 import disclosure_pb2, disclosure_pb2_grpc, provision_pb2

TIMEOUT_S = 30.0
PAGE_SIZE = 1000


def provision_json(p: disclosure_pb2.Provision) -> dict[str, Any]:
    return {
        "time": p.time.ToDatetime(tzinfo=dt.UTC).astimezone(JST).isoformat(),
        "agency": p.agency,
        "agency_name": p.agency_name,
        "purpose": p.purpose,
        "purpose_name": p.purpose_name,
        "fields": list(p.fields),
        "resident_code": p.resident_code,
        "channel": p.channel,
    }


def disclose(
    code: Annotated[str, typer.Argument(help="住民票コード (a retired one works too).")],
    node: Node,
    pki_dir: PkiDir,
    as_: Annotated[str, typer.Option("--as", help="Your operator identity, jukinet://operator/center/<id>.")],
    from_date: Annotated[str, typer.Option("--from", help="Provisions on or after this JST date, YYYY-MM-DD.")] = "",
    to_date: Annotated[str, typer.Option("--to", help="Provisions on or before this JST date, YYYY-MM-DD.")] = "",
    as_json: AsJson = False,
) -> None:
    """Disclose a resident's record and every provision of their data (center operator certificate)."""

    async def fetch() -> tuple[provision_pb2.ProvidedRecord, list[disclosure_pb2.Provision]]:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: disclosure_pb2_grpc.DisclosureServiceAsyncStub = disclosure_pb2_grpc.DisclosureServiceStub(channel)
            record: provision_pb2.ProvidedRecord | None = None
            provisions: list[disclosure_pb2.Provision] = []
            token = ""
            while True:
                reply = await stub.DiscloseResident(
                    disclosure_pb2.DiscloseResidentRequest(
                        resident_code=code,
                        from_date=from_date,
                        to_date=to_date,
                        page_size=PAGE_SIZE,
                        page_token=token,
                    ),
                    timeout=TIMEOUT_S,
                )
                if record is None:
                    record = reply.record
                provisions.extend(reply.provisions)
                if not reply.next_page_token or reply.next_page_token == token:
                    return record, provisions
                token = reply.next_page_token

    record, provisions = run_rpc(fetch())
    if as_json:
        print(
            json.dumps(
                {"record": record_json(record), "provisions": [provision_json(p) for p in provisions]},
                ensure_ascii=False,
            )
        )
        return
    out = Console()
    out.print(record_table(record, f"本人確認情報 of {code}"))
    period = f"{from_date or 'the beginning'} – {to_date or 'today'} (JST)"
    table = Table(title=f"provisions of {record.resident_code}'s data, {period}: {len(provisions)}")
    for column in ("time (JST)", "agency", "purpose", "fields", "channel", "code"):
        table.add_column(column)
    for p in provisions:
        table.add_row(
            p.time.ToDatetime(tzinfo=dt.UTC).astimezone(JST).strftime("%Y-%m-%d %H:%M:%S"),
            p.agency_name,
            p.purpose_name,
            " ".join(p.fields),
            p.channel,
            p.resident_code,
        )
    out.print(table)
