"""`jukinet register import FILE`: push a CSV or JSON Lines file of changes to a municipality node."""

from __future__ import annotations

import asyncio
import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from jukinet.cli.client import client_channel, rpc_error_text
from jukinet.cli.register_client import is_ok, record_batches
from jukinet.wire.v1 import register_pb2, register_pb2_grpc, types_pb2

console = Console(stderr=True)
COLUMNS = (
    "request_id",
    "reason",
    "resident_code",
    "effective_date",
    "name",
    "alias",
    "birth_date",
    "sex",
    "address",
)
_SEX = {"male": 1, "m": 1, "男": 1, "1": 1, "female": 2, "f": 2, "女": 2, "2": 2}


def _reason(value: str) -> int:
    text = value.strip().upper().removeprefix("CHANGE_REASON_")
    if text.isdigit():
        return int(text)
    return types_pb2.ChangeReason.Value(f"CHANGE_REASON_{text}") if text else 0


def row_to_pb(row: dict[str, Any]) -> register_pb2.RegisterChange:
    """One file row as a RegisterChange; unknown values become 0 so the node refuses them with a reason."""

    try:
        reason = _reason(str(row.get("reason", "")))
    except ValueError:
        reason = 999  # an unknown number: the node answers INVALID_ARGUMENT naming the field
    pb = register_pb2.RegisterChange(
        request_id=str(row.get("request_id", "")),
        reason=reason,  # type: ignore[arg-type]
        resident_code=str(row.get("resident_code", "") or ""),
        effective_date=str(row.get("effective_date", "")),
    )
    if any(row.get(k) for k in ("name", "birth_date", "sex", "address")):
        pb.items.CopyFrom(
            types_pb2.IdentityItems(
                name=str(row.get("name", "")),
                alias=str(row.get("alias", "") or ""),
                birth_date=str(row.get("birth_date", "")),
                sex=_SEX.get(str(row.get("sex", "")).strip().lower(), 0),  # type: ignore[arg-type]
                address=str(row.get("address", "")),
            )
        )
    return pb


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as error:
                        value = {"request_id": f"line-{number}", "_error": str(error)}
                    yield value if isinstance(value, dict) else {"request_id": f"line-{number}"}
        return
    with path.open(encoding="utf-8-sig", newline="") as handle:
        yield from csv.DictReader(handle)


def import_file(
    file: Annotated[Path, typer.Argument(help="CSV (with a header row) or JSON Lines file.", exists=True)],
    node: Annotated[str, typer.Option(help="Municipality node address host:port.")],
    pki_dir: Annotated[Path, typer.Option("--pki-dir", help="Folder with ca.pem and your certificate.")],
    municipality: Annotated[str, typer.Option(help="Your municipality code; you act as jukinet://register/<code>.")],
    batch: Annotated[int, typer.Option(help="Changes per message.")] = 1000,
    rejects: Annotated[
        Path | None, typer.Option(help="Write refused rows with reasons to this JSON Lines file.")
    ] = None,
) -> None:
    """Import resident changes and print accepted/rejected counts.

    Columns: request_id, reason (BIRTH, MOVE_IN, … or its number), resident_code, effective_date,
    name, alias, birth_date, sex (male/female/男/女), address. Exit code 3 when some rows were refused."""
    rows = [row_to_pb(r) for r in read_rows(file)]
    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    outcome: Counter[str] = Counter()
    refused: list[dict[str, str]] = []

    async def run() -> None:
        async with client_channel(node, pki_dir, f"jukinet://register/{municipality}") as channel:
            stub = register_pb2_grpc.RegisterServiceStub(channel)
            columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("import", total=len(rows))
                async for results in record_batches(stub, batches):
                    for result in results:
                        if is_ok(result):
                            outcome["accepted"] += 1
                        else:
                            outcome["rejected"] += 1
                            refused.append(
                                {
                                    "request_id": result.request_id,
                                    "reason": result.error_reason,
                                    "field": result.field,
                                    "message": result.message,
                                }
                            )
                    progress.advance(task, len(results))

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(rpc_error_text(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"accepted {outcome['accepted']}, rejected {outcome['rejected']} of {len(rows)} rows")
    for item in refused[:10]:
        console.print(f"  {item['request_id']}: {item['message']}")
    if rejects is not None:
        with rejects.open("w", encoding="utf-8") as handle:
            for item in refused:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    if outcome["rejected"]:
        raise typer.Exit(3)
