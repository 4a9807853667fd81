"""`jukinet demo`: a whole local network — 1 center, 2 prefectures, 3 municipalities — relaying
realistic synthetic resident changes over mutually authenticated TLS, ending with an agreement check."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jukinet.cli.client import client_channel
from jukinet.cli.netctl import CENTER, LocalNetwork, NodeProcess
from jukinet.cli.register_client import change_to_pb, is_ok, record_batches
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.model import RegisterChange
from jukinet.pki import slug
from jukinet.synthetic import Workload
from jukinet.wire.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    disclosure_pb2,
    disclosure_pb2_grpc,
    provision_pb2,
    provision_pb2_grpc,
    register_pb2_grpc,
)

console = Console()
MUNICIPALITIES = {"132080": "調布市", "132187": "福生市", "012084": "北見市"}
PREFECTURES = {"13": "東京都", "01": "北海道"}


AGENCY_REGISTRY = Path(__file__).resolve().parents[2] / "deploy" / "agencies.toml"
PENSION = NodeId(Role.AGENCY, "pension")


def start_network(root: Path, *, database_url: dict[str, str] | None = None) -> LocalNetwork:
    net = LocalNetwork(root, database_url=database_url or {})
    prefectures = [NodeId(Role.PREFECTURE, p) for p in PREFECTURES]
    municipalities = [NodeId(Role.MUNICIPALITY, m) for m in MUNICIPALITIES]
    net.prepare_pki([CENTER, *prefectures, *municipalities, PENSION])
    center = net.start(CENTER, agencies=AGENCY_REGISTRY if AGENCY_REGISTRY.exists() else None)
    pref_nodes = {p.code: net.start(p, upstream=center.listen) for p in prefectures}
    for m in municipalities:
        net.start(m, upstream=pref_nodes[m.prefecture].listen)
    return net


class Operator:
    """Admin calls to every node of a LocalNetwork, each with that node's operator certificate."""

    def __init__(self, net: LocalNetwork) -> None:
        self._net = net

    async def status(self, node: NodeProcess) -> admin_pb2.GetStatusResponse:
        async with client_channel(node.listen, self._net.pki_dir, node.operator) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            reply: admin_pb2.GetStatusResponse = await stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
            return reply

    async def digest(self, node: NodeProcess, municipality: str) -> admin_pb2.GetDigestResponse:
        async with client_channel(node.listen, self._net.pki_dir, node.operator) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            request = admin_pb2.GetDigestRequest(municipality_code=municipality)
            reply: admin_pb2.GetDigestResponse = await stub.GetDigest(request, timeout=30)
            return reply

    async def agreement(self) -> dict[str, dict[str, admin_pb2.GetDigestResponse]]:
        """For each municipality: its own digest and those of its prefecture and the center."""
        result: dict[str, dict[str, admin_pb2.GetDigestResponse]] = {}
        for code in MUNICIPALITIES:
            muni = self._net.nodes[slug(NodeId(Role.MUNICIPALITY, code))]
            pref = self._net.nodes[slug(NodeId(Role.PREFECTURE, code[:2]))]
            center = self._net.nodes[slug(CENTER)]
            result[code] = {
                "municipality": await self.digest(muni, code),
                "prefecture": await self.digest(pref, code),
                "center": await self.digest(center, code),
            }
        return result


def agrees(digests: dict[str, admin_pb2.GetDigestResponse]) -> bool:
    values = {(d.digest, d.registration_count, d.head_seq) for d in digests.values()}
    return len(values) == 1


async def wait_for_codes(net: LocalNetwork, op: Operator, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    for code in MUNICIPALITIES:
        node = net.nodes[slug(NodeId(Role.MUNICIPALITY, code))]
        while (await op.status(node)).free_codes == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{code} received no code pool within {limit_s:.0f}s; see {node.log}")
            await asyncio.sleep(0.2)


class Pusher:
    """Pushes changes to the municipalities as their register systems would, feeding results back."""

    def __init__(self, net: LocalNetwork, workload: Workload) -> None:
        self._net = net
        self._workload = workload
        self.accepted = 0
        self.refused: dict[str, int] = defaultdict(int)

    async def push(self, changes: list[tuple[str, RegisterChange]]) -> None:
        by_muni: dict[str, list[RegisterChange]] = defaultdict(list)
        for code, change in changes:
            by_muni[code].append(change)
        await asyncio.gather(*(self._push_one(code, batch) for code, batch in by_muni.items()))

    async def _push_one(self, code: str, changes: list[RegisterChange]) -> None:
        node = self._net.nodes[slug(NodeId(Role.MUNICIPALITY, code))]
        async with client_channel(node.listen, self._net.pki_dir, f"jukinet://register/{code}") as channel:
            stub = register_pb2_grpc.RegisterServiceStub(channel)
            by_id = {c.request_id: c for c in changes}
            batches = [[change_to_pb(c) for c in changes[i : i + 500]] for i in range(0, len(changes), 500)]
            async for results in record_batches(stub, batches):
                for result in results:
                    change = by_id[result.request_id]
                    if is_ok(result):
                        self.accepted += 1
                        self._workload.record_result(change, code, result.resident_code)
                    else:
                        self.refused[result.error_reason] += 1
                        self._workload.release(change)


async def run_demo(root: Path, residents: int, changes: int, seed: int) -> bool:
    net = start_network(root)
    op = Operator(net)
    try:
        nodes = Table(title="jukinet local network (mutual TLS gRPC on 127.0.0.1)")
        nodes.add_column("node", no_wrap=True)
        for column in ("gRPC", "dashboard (+ /metrics)"):
            nodes.add_column(column, overflow="fold")  # a narrow terminal wraps an address, never cuts it
        for node in net.nodes.values():
            nodes.add_row(node.identity.uri, node.listen, f"http://{node.metrics}/")
        console.print(nodes)
        console.print(f"run folder {root}: pki/, config/ (one TOML per node), data/ (SQLite), logs/ (JSON lines)")
        await wait_for_codes(net, op)
        workload = Workload(list(MUNICIPALITIES), seed=seed, run_id=f"demo{seed}")
        pusher = Pusher(net, workload)
        columns = (
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("registering residents", total=residents * len(MUNICIPALITIES))
            for code in MUNICIPALITIES:
                population = list(workload.initial_population(code, residents))
                for start in range(0, len(population), 1000):
                    await pusher.push([(code, c) for c in population[start : start + 1000]])
                    progress.update(task, completed=pusher.accepted + sum(pusher.refused.values()))
            task2 = progress.add_task("moves, births, deaths, …", total=changes)
            done = 0
            while done < changes:
                batch = workload.next_changes(min(600, changes - done))
                if not batch:
                    break
                await pusher.push(batch)
                done += len(batch)
                progress.update(task2, completed=done)
            task3 = progress.add_task("relay to the center", total=None)
            deadline = time.monotonic() + 180
            while True:
                digests = await op.agreement()
                if all(agrees(d) for d in digests.values()) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            progress.update(task3, total=1, completed=1)
        ok = report(net, pusher, digests, await _statuses(net, op))
        await code_check(net)
        if AGENCY_REGISTRY.exists():
            await agency_scene(net, workload)
        return ok
    finally:
        net.stop_all()


async def agency_scene(net: LocalNetwork, workload: Workload) -> None:
    """The pension body checks its recipients in bulk; one resident then learns who received their data."""
    center = net.nodes[slug(CENTER)]
    codes = [c for m in MUNICIPALITIES for c in workload.resident_codes(m)]
    async with client_channel(center.listen, net.pki_dir, PENSION.uri) as channel:
        stub = provision_pb2_grpc.ProvisionServiceStub(channel)
        requests = [
            provision_pb2.LookupResidentsRequest(
                purpose="pension-proof-of-life" if i == 0 else "", resident_codes=chunk
            )
            for i, chunk in enumerate(codes[j : j + 2000] for j in range(0, len(codes), 2000))
        ]
        found = 0
        async for response in stub.LookupResidents(iter(requests)):
            found += sum(1 for r in response.results if r.status_code == 0)
        one = codes[0]
        await stub.LookupResident(provision_pb2.LookupResidentRequest(purpose="pension-benefit", resident_code=one))
    console.print(f"agency jukinet://agency/pension checked {len(codes)} residents in one bulk stream: {found} found")
    async with client_channel(center.listen, net.pki_dir, center.operator) as channel:
        disclosure = await disclosure_pb2_grpc.DisclosureServiceStub(channel).DiscloseResident(
            disclosure_pb2.DiscloseResidentRequest(resident_code=one), timeout=10
        )
    table = Table(title=f"提供状況開示: who received the data of {one} ({disclosure.record.items.name})")
    for column in ("when (UTC)", "agency", "purpose", "fields", "how"):
        table.add_column(column)
    for p in disclosure.provisions:
        table.add_row(
            p.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            p.agency_name,
            p.purpose_name,
            " ".join(p.fields),
            p.channel,
        )
    console.print(table)


async def code_check(net: LocalNetwork, limit_s: float = 30) -> None:
    """Waits for the center's 住民票コード check to reach the last event, then says what it found."""
    center = net.nodes[slug(CENTER)]
    async with client_channel(center.listen, net.pki_dir, center.operator) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        deadline = time.monotonic() + limit_s
        while True:
            reply = await stub.ListCodeAnomalies(admin_pb2.ListCodeAnomaliesRequest(page_size=1000), timeout=10)
            if reply.unchecked_events == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    if reply.unchecked_events:
        console.print(f"[yellow]住民票コード check: {reply.unchecked_events} events not checked yet[/yellow]")
    elif not reply.anomalies:
        console.print("住民票コード check: every code was issued by the center; no retired code in use")
    else:
        counted = sorted(Counter(a.kind for a in reply.anomalies).items())
        kinds = ", ".join(f"{k} {n}{'+' if reply.next_page_token else ''}" for k, n in counted)
        console.print(f"[yellow]住民票コード check: {kinds} (see jukinet codes anomalies)[/yellow]")


async def _statuses(net: LocalNetwork, op: Operator) -> dict[str, admin_pb2.GetStatusResponse]:
    return {name: await op.status(node) for name, node in net.nodes.items()}


def report(
    net: LocalNetwork,
    pusher: Pusher,
    digests: dict[str, dict[str, admin_pb2.GetDigestResponse]],
    statuses: dict[str, admin_pb2.GetStatusResponse],
) -> bool:
    tiers = Table(title="per node")
    for column in ("node", "events", "active residents", "outbox", "access-log entries"):
        tiers.add_column(column, justify="right")
    for name, status in statuses.items():
        tiers.add_row(
            net.nodes[name].identity.uri,
            str(status.event_count),
            str(status.active_count),
            str(status.outbox_depth),
            str(status.access_log_count),
        )
    console.print(tiers)
    table = Table(title="does the center agree with every municipality?")
    for column in ("municipality", "records: municipality", "prefecture", "center", "last seq", "agreement"):
        table.add_column(column, justify="right")
    ok = True
    for code, d in digests.items():
        same = agrees(d)
        ok = ok and same
        table.add_row(
            f"{code} {MUNICIPALITIES[code]}",
            str(d["municipality"].registration_count),
            str(d["prefecture"].registration_count),
            str(d["center"].registration_count),
            str(d["center"].head_seq),
            "[green]in sync[/green]" if same else "[red]DIFFERENT[/red]",
        )
    console.print(table)
    refused = ", ".join(f"{k} {v}" for k, v in pusher.refused.items()) or "none"
    console.print(f"changes accepted: {pusher.accepted}; refused at the edge: {refused}")
    console.print("[green]every tier agrees[/green]" if ok else "[red]tiers disagree: see the logs[/red]")
    return ok


def demo(
    residents: Annotated[int, typer.Option(help="Initial residents per municipality.")] = 2000,
    changes: Annotated[int, typer.Option(help="Changes (moves, births, deaths, …) after the initial load.")] = 5000,
    directory: Annotated[
        Path, typer.Option("--dir", help="Run folder (recreated): PKI, configs, databases, logs.")
    ] = Path("demo-run"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 1,
) -> None:
    """Run the whole network locally end to end and check that every tier agrees."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    ok = False
    try:
        ok = asyncio.run(run_demo(directory.resolve(), residents, changes, seed))
    except KeyboardInterrupt:
        console.print(f"interrupted: every node was stopped; data and logs stay in {directory}/")
        raise typer.Exit(130) from None
    except (RuntimeError, grpc.aio.AioRpcError) as error:
        console.print(f"[red]demo failed:[/red] {error}")
    raise typer.Exit(0 if ok else 1)
