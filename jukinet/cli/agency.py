"""`jukinet agency lookup CODE --purpose P`: what an agency's own system does, from the command line.

Also the shared rendering of a provided record (table and JSON) for `jukinet disclose`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from jukinet.cli.client import client_channel, rpc_error_text
from jukinet.domain.errors import JukinetError
from jukinet.wire.v1 import provision_pb2, provision_pb2_grpc, types_pb2

T = TypeVar("T")
TIMEOUT_S = 10.0

agency_app = typer.Typer(no_args_is_help=True, help="Act as an agency system (certificate jukinet://agency/<id>).")

Node = Annotated[str, typer.Option("--node", help="Center address host:port.")]
PkiDir = Annotated[Path, typer.Option("--pki-dir", help="Folder holding ca.pem and the certificates.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def run_rpc(work: Coroutine[Any, Any, T]) -> T:
    """Runs the client coroutine; a refused call prints `CODE_NAME: details` to stderr and exits 1."""
    try:
        return asyncio.run(work)
    except grpc.aio.AioRpcError as error:
        print(rpc_error_text(error), file=sys.stderr)
        raise typer.Exit(1) from None
    except JukinetError as error:  # e.g. a malformed --as identity
        print(f"{error.code}: {error}", file=sys.stderr)
        raise typer.Exit(1) from None


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def record_json(record: provision_pb2.ProvidedRecord) -> dict[str, Any]:
    """The record with only its provided fields (all of them for a disclosure)."""
    fields = list(record.provided_fields)
    items = record.items
    values: dict[str, Any] = {
        "name": items.name,
        "alias": items.alias,
        "birth_date": items.birth_date,
        "sex": _enum_name(types_pb2.Sex.Name(items.sex), "SEX_") if items.sex else "",
        "address": items.address,
    }
    result: dict[str, Any] = {
        "resident_code": record.resident_code,
        "status": _enum_name(provision_pb2.ResidentStatus.Name(record.status), "RESIDENT_STATUS_"),
        "municipality_code": record.municipality_code,
        "items": {f: values[f] for f in fields if f in values},
        "provided_fields": fields,
    }
    if "history" in fields:
        result["history"] = [
            {
                "resident_code": h.resident_code,
                "previous_code": h.previous_code,
                "reason": _enum_name(types_pb2.ChangeReason.Name(h.reason), "CHANGE_REASON_"),
                "effective_date": h.effective_date,
                "municipality_code": h.municipality_code,
            }
            for h in record.history
        ]
    return result


def record_table(record: provision_pb2.ProvidedRecord, title: str) -> Table:
    data = record_json(record)
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("住民票コード", data["resident_code"])
    table.add_row("status", data["status"])
    table.add_row("municipality", data["municipality_code"])
    for field, value in data["items"].items():
        table.add_row(field, value)
    for number, change in enumerate(data.get("history", []), 1):
        previous = f" (was {change['previous_code']})" if change["previous_code"] else ""
        table.add_row(
            f"history {number}",
            f"{change['effective_date']} {change['reason']} {change['resident_code']}{previous}"
            f" at {change['municipality_code']}",
        )
    table.add_row("provided fields", " ".join(data["provided_fields"]))
    return table


@agency_app.command("lookup")
def lookup(
    code: Annotated[str, typer.Argument(help="住民票コード (11 digits).")],
    purpose: Annotated[str, typer.Option("--purpose", help="The statutory purpose granted to your agency.")],
    node: Node,
    pki_dir: PkiDir,
    as_: Annotated[str, typer.Option("--as", help="Your agency identity, jukinet://agency/<id>.")],
    as_json: AsJson = False,
) -> None:
    """Look up one resident at the center for a granted purpose (the provision is logged)."""

    async def fetch() -> provision_pb2.ProvidedRecord:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: provision_pb2_grpc.ProvisionServiceAsyncStub = provision_pb2_grpc.ProvisionServiceStub(channel)
            reply = await stub.LookupResident(
                provision_pb2.LookupResidentRequest(purpose=purpose, resident_code=code), timeout=TIMEOUT_S
            )
            return reply.record

    record = run_rpc(fetch())
    if as_json:
        print(json.dumps(record_json(record), ensure_ascii=False))
        return
    Console().print(record_table(record, f"{code} for {purpose}"))


AsAgency = Annotated[str, typer.Option("--as", help="Your agency identity, jukinet://agency/<id>.")]
Purpose = Annotated[str, typer.Option("--purpose", help="The statutory purpose granted to your agency.")]


@agency_app.command("search")
def search(
    name: Annotated[str, typer.Option(help="Name (required).")],
    purpose: Purpose,
    node: Node,
    pki_dir: PkiDir,
    as_: AsAgency,
    birth_date: Annotated[str, typer.Option(help="YYYY-MM-DD (with --sex).")] = "",
    sex: Annotated[str, typer.Option(help="male or female (with --birth-date).")] = "",
    address: Annotated[str, typer.Option(help="Address (instead of --birth-date and --sex).")] = "",
    as_json: AsJson = False,
) -> None:
    """Search by name + birth date + sex, or name + address (exact match after normalization)."""
    sex_value = {"": 0, "male": types_pb2.SEX_MALE, "female": types_pb2.SEX_FEMALE}.get(sex.lower())
    if sex_value is None:
        print("INVALID_ARGUMENT: --sex must be male or female", file=sys.stderr)
        raise typer.Exit(1)

    async def fetch() -> list[provision_pb2.ProvidedRecord]:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: provision_pb2_grpc.ProvisionServiceAsyncStub = provision_pb2_grpc.ProvisionServiceStub(channel)
            request = provision_pb2.SearchResidentsRequest(
                purpose=purpose,
                name=name,
                birth_date=birth_date,
                sex=sex_value,  # type: ignore[arg-type]
                address=address,
            )
            return list((await stub.SearchResidents(request, timeout=TIMEOUT_S)).records)

    records = run_rpc(fetch())
    if as_json:
        print(json.dumps([record_json(r) for r in records], ensure_ascii=False))
        return
    console = Console()
    console.print(f"{len(records)} match(es)")
    for record in records:
        console.print(record_table(record, record.resident_code))


@agency_app.command("bulk")
def bulk(
    codes_file: Annotated[Path, typer.Argument(help="A file with one 住民票コード per line.", exists=True)],
    purpose: Purpose,
    node: Node,
    pki_dir: PkiDir,
    as_: AsAgency,
    batch: Annotated[int, typer.Option(help="Codes per message (at most 5,000).")] = 2000,
) -> None:
    """Look up many residents in one stream; prints one JSON line per code (with its status)."""
    codes = [line.strip() for line in codes_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    batches = [codes[i : i + batch] for i in range(0, len(codes), batch)]
    counts = {"ok": 0, "refused": 0}

    async def run() -> None:
        async with client_channel(node, pki_dir, as_) as channel:
            stub: provision_pb2_grpc.ProvisionServiceAsyncStub = provision_pb2_grpc.ProvisionServiceStub(channel)
            requests = [
                provision_pb2.LookupResidentsRequest(purpose=purpose if i == 0 else "", resident_codes=chunk)
                for i, chunk in enumerate(batches)
            ]
            async for response in stub.LookupResidents(iter(requests)):
                for result in response.results:
                    ok = result.status_code == 0
                    counts["ok" if ok else "refused"] += 1
                    line: dict[str, Any] = {"resident_code": result.resident_code, "status_code": result.status_code}
                    if ok:
                        line["record"] = record_json(result.record)
                    else:
                        line["message"] = result.message
                    print(json.dumps(line, ensure_ascii=False))

    run_rpc(run())
    print(f"{counts['ok']} found, {counts['refused']} refused of {len(codes)}", file=sys.stderr)


@agency_app.command("follow")
def follow(
    purpose: Purpose,
    node: Node,
    pki_dir: PkiDir,
    as_: AsAgency,
    after: Annotated[int, typer.Option(help="The last feed seq you processed (0 = from the start).")] = 0,
    limit: Annotated[int, typer.Option(help="Stop after this many items (0 = follow until Ctrl-C).")] = 0,
) -> None:
    """Follow the change feed for a purpose; prints one JSON line per item. Resume with --after LAST_SEQ."""

    async def run() -> None:
        received = 0
        async with client_channel(node, pki_dir, as_) as channel:
            stub: provision_pb2_grpc.ProvisionServiceAsyncStub = provision_pb2_grpc.ProvisionServiceStub(channel)
            call = stub.FollowChanges(provision_pb2.FollowChangesRequest(purpose=purpose, after_seq=after))
            async for response in call:
                for item in response.items:
                    change = {
                        "resident_code": item.change.resident_code,
                        "previous_code": item.change.previous_code,
                        "reason": _enum_name(types_pb2.ChangeReason.Name(item.change.reason), "CHANGE_REASON_"),
                        "effective_date": item.change.effective_date,
                        "municipality_code": item.change.municipality_code,
                    }
                    print(
                        json.dumps(
                            {"seq": item.seq, "change": change, "record": record_json(item.record)}, ensure_ascii=False
                        ),
                        flush=True,
                    )
                    received += 1
                    if limit and received >= limit:
                        call.cancel()
                        return

    try:
        run_rpc(run())
    except KeyboardInterrupt:
        print("stopped; resume with --after <last seq printed>", file=sys.stderr)
