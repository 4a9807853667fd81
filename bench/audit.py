"""Relay throughput with the hash-chained access log and checkpoints on, against the same relay with the
access log reduced to a plain insert, in the same run.

    .venv/bin/python bench/audit.py [--changes N] [--rounds R] [--quick] [--keep] [--dir DIR]

Each round starts a fresh network (center, prefecture 13, municipality 132080: node processes on
127.0.0.1, SQLite) and measures what bench/relay.py measures end to end: N creates pushed as the register
system in batches of 2,000 with 4 in flight, timed from the first push until the center's cursor for
132080 reaches N. Two modes, run alternately (plain, chain, chain, plain, …) so that drift of the machine
hits both alike:

chain
    The nodes as shipped: every access-log row carries prev_hash/entry_hash (one indexed head read per
    append, SHA-256 over the canonical bytes), and every node signs a checkpoint every --every entries or
    --interval seconds (default 1 s: 60 times the shipped 60 s, so that checkpoints really happen during
    the run); municipality and prefecture submit theirs to the parent, which verifies the extension over
    the entry digests and countersigns.

plain
    The same node processes with SqlTx.append_access replaced by the plain insert it was before (constant
    hash columns, no head read, no hashing) and no checkpointer.

After each chain round the nodes are stopped and `jukinet audit verify` logic checks every node's log and
the parent's witnessed checkpoints. `overhead` = 1 - with_chain_per_s / plain_per_s (mean over rounds).

The relay writes one access-log row per batch per hop, so the end-to-end figures are dominated by the
events themselves; `append_access_us` adds the cost of one SqlTx.append_access call in isolation (SQLite
file, WAL), chained and plain, for an entry naming 1 resident and one naming 2,000 (a relayed batch): each
call in its own transaction, and (`_in_txn`) all in one transaction, the CPU cost alone.

Progress goes to stderr, a summary to stdout, and the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.relay import (
    MUNICIPALITY,
    POOL_SIZE,
    PREFECTURE,
    machine_info,
    people,
    run_in_folder,
    run_network,
    say,
)
from jukinet.cli.netctl import CENTER, LocalNetwork, NodeProcess, _read_ready
from jukinet.domain.identity import NodeId
from jukinet.domain.validate import today_jst
from jukinet.pki import slug

SCRIPT = Path(__file__).resolve()
MODES = ("chain", "plain")


# -- the node processes -------------------------------------------------------------------------------


def run_bench_node(mode: str, config_path: Path, every: int, interval_s: float) -> None:
    """A node process as `jukinet node run` starts it, with the access log reduced to a plain insert (plain)
    or with the checkpoint interval of this bench (chain)."""
    from jukinet.audit import GENESIS
    from jukinet.cli.main import NODE_PACKAGES
    from jukinet.config import load_config
    from jukinet.rpc import checkpointer
    from jukinet.rpc.runtime import run_node
    from jukinet.services.ports import AccessEntry
    from jukinet.storage import rows
    from jukinet.storage.sql_tx import _INSERT_ACCESS, SqlTx

    config = load_config(config_path)
    if mode == "plain":

        def plain_append_access(self: SqlTx, entries: Sequence[AccessEntry]) -> None:
            self._append(
                _INSERT_ACCESS,
                [
                    (
                        rows.to_us(e.at),
                        e.request_id[:128],
                        e.direction,
                        e.peer[:200],
                        e.method[:120],
                        e.purpose[:64],
                        " ".join(e.subjects),
                        e.outcome[:32],
                        GENESIS,
                        GENESIS,
                    )
                    for e in entries
                ],
            )

        async def no_checkpoints(self: checkpointer.Checkpointer, stop: asyncio.Event) -> None:
            await stop.wait()

        SqlTx.append_access = plain_append_access  # type: ignore[method-assign]
        checkpointer.Checkpointer.run = no_checkpoints  # type: ignore[method-assign]
    else:
        original = checkpointer.Checkpointer.__init__

        def init(self: checkpointer.Checkpointer, **kwargs: Any) -> None:
            original(self, **{**kwargs, "every": every, "interval_s": interval_s, "poll_s": min(1.0, interval_s)})

        checkpointer.Checkpointer.__init__ = init  # type: ignore[method-assign]
    bootstrap = importlib.import_module(f"{NODE_PACKAGES[config.kind]}.bootstrap")
    run_node(config, bootstrap.build)


@dataclass
class BenchNetwork(LocalNetwork):
    """LocalNetwork whose node processes run through this script in one of the two modes."""

    mode: str = "chain"
    every: int = 10_000
    interval_s: float = 1.0

    def start(
        self,
        identity: NodeId,
        *,
        upstream: str = "",
        listen: str = "127.0.0.1:0",
        timeout: float = 60,
        agencies: Path | None = None,
    ) -> NodeProcess:
        name = slug(identity)
        config = self.root / "config" / f"{name}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "[node]",
            f'kind = "{identity.role.value}"',
            f'code = "{identity.code}"',
            f'listen = "{listen}"',
            f'database = "sqlite:///{self.root / "data" / (name + ".db")}"',
            f'pki_dir = "{self.pki_dir}"',
            'metrics_listen = "127.0.0.1:0"',
        ]
        if upstream:
            lines += ["", "[upstream]", f'address = "{upstream}"']
        config.write_text("\n".join(lines) + "\n" + self.extra_config, encoding="utf-8")
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, str(SCRIPT), "--node", self.mode, str(config), str(self.every), str(self.interval_s)]
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log_file, env=env, start_new_session=True
            )
        node = NodeProcess(identity, config, log, process)
        self.nodes[name] = node
        ready = _read_ready(process, timeout)
        if ready is None:
            self.stop_all()
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"{identity.uri} did not start within {timeout:.0f}s; log {log}:\n{tail}")
        node.listen, node.metrics = ready["listen"], ready["metrics"]
        return node


# -- after a chain round ----------------------------------------------------------------------------------


def audit_summary(root: Path) -> dict[str, Any]:
    """Every node's log verified (with its parent's witnessed checkpoints) once the nodes are stopped."""
    from jukinet.cli.audit import verify_databases

    def db(identity: NodeId) -> str:
        return str(root / "data" / f"{slug(identity)}.db")

    checks = {
        slug(MUNICIPALITY): verify_databases(db(MUNICIPALITY), db(PREFECTURE)),
        slug(PREFECTURE): verify_databases(db(PREFECTURE), db(CENTER)),
        slug(CENTER): verify_databases(db(CENTER)),
    }
    return {
        name: {
            "ok": r.ok,
            "problem": r.problem,
            "entries": r.entries,
            "checkpoints": r.checkpoints,
            "countersigned": r.countersigned,
            "witnessed_by_parent": r.witnessed,
        }
        for name, r in checks.items()
    }


# -- one append in isolation ------------------------------------------------------------------------------


def measure_append(work: Path, calls: int = 2000) -> dict[str, float]:
    """Microseconds per SqlTx.append_access call, chained and plain: each in its own transaction (commit and
    fsync included), and all in one transaction (`_in_txn`: the CPU cost alone)."""
    import datetime as dt
    import time
    from functools import partial

    from jukinet.audit import GENESIS
    from jukinet.services.ports import AccessEntry
    from jukinet.storage import SqlTx, make_engine, rows
    from jukinet.storage.sql_tx import _INSERT_ACCESS

    def plain(tx: SqlTx, entries: list[AccessEntry]) -> None:
        tx._append(
            _INSERT_ACCESS,
            [
                (rows.to_us(e.at), e.request_id, e.direction, e.peer, e.method, e.purpose, " ".join(e.subjects),
                 e.outcome, GENESIS, GENESIS)
                for e in entries
            ],
        )  # fmt: skip

    results: dict[str, float] = {}
    for subjects in (1, 2000):
        entry = AccessEntry(
            at=dt.datetime.now(dt.UTC),
            request_id="8f14e45fceea167a5a36dedd4bea2543:132080:1-2000",
            peer=PREFECTURE.uri,
            method="/jukinet.wire.v1.RelayService/PushEvents",
            outcome="OK",
            subjects=tuple(f"{i:011d}" for i in range(subjects)),
        )
        for mode in ("plain", "chain", "plain", "chain"):
            for batched in (False, True):
                engine = make_engine(f"sqlite:///{work / f'append-{mode}-{subjects}-{batched}.db'}")
                try:
                    with engine.connect() as conn:
                        tx = SqlTx(conn)
                        append = tx.append_access if mode == "chain" else partial(plain, tx)
                        started = time.perf_counter()
                        if batched:  # many calls in one transaction: the CPU cost alone
                            with conn.begin():
                                for _ in range(calls):
                                    append([entry])
                        else:
                            for _ in range(calls):
                                with conn.begin():
                                    append([entry])
                        elapsed = (time.perf_counter() - started) / calls * 1e6
                finally:
                    engine.dispose()
                key = f"{mode}_{subjects}" + ("_in_txn" if batched else "")
                results[key] = round(min(results.get(key, elapsed), elapsed), 1)
    return results


# -- the whole run ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    machine = machine_info()
    say(f"audit bench: {args.changes:,} changes, {args.rounds} round(s) per mode; run {root}")
    pool = people(MUNICIPALITY.code, POOL_SIZE, args.seed, today_jst())
    order = [MODES[(i + 1) % 2] if (i // 2) % 2 == 0 else MODES[i % 2] for i in range(2 * args.rounds)]
    rounds: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    for index, mode in enumerate(order):
        folder = root / f"{index}-{mode}"
        net = BenchNetwork(folder, mode=mode, every=args.every, interval_s=args.interval)
        net.prepare_pki([CENTER, PREFECTURE, MUNICIPALITY])
        say(f"round {index + 1}/{len(order)}: {mode}")
        try:
            e2e = await run_network(net, args.changes, pool, random.Random(args.seed), f"audit{os.getpid()}")
        finally:
            net.stop_all()
        per_s = e2e["accepted"] / e2e["e2e_seconds"]
        say(f"  {mode}: {per_s:,.0f} events/s ({e2e['e2e_seconds']:.1f}s)")
        rounds.append(
            {
                "mode": mode,
                "events_per_s": round(per_s, 1),
                "e2e_seconds": round(e2e["e2e_seconds"], 3),
                "node_cpu_s": e2e["node_cpu_s"],
                "digest_agrees": e2e["digest_agrees"],
                "access_log": {name: s["access_log"] for name, s in e2e["node_status"].items()},
            }
        )
        if mode == "chain":
            audits.append(audit_summary(folder))
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    say("one append_access call in isolation")
    with tempfile.TemporaryDirectory(prefix="append-", dir=root) as work:
        append_us = measure_append(Path(work))
    chain = statistics.fmean(r["events_per_s"] for r in rounds if r["mode"] == "chain")
    plain = statistics.fmean(r["events_per_s"] for r in rounds if r["mode"] == "plain")
    verified = all(node["ok"] for audit in audits for node in audit.values())
    return {
        "bench": "audit",
        "changes": args.changes,
        "rounds_per_mode": args.rounds,
        "checkpoint_every": args.every,
        "checkpoint_interval_s": args.interval,
        "with_chain_per_s": round(chain, 1),
        "plain_per_s": round(plain, 1),
        "overhead": round(1 - chain / plain, 4),
        "target_overhead": 0.15,
        "verify_ok": verified,
        "append_access_us": append_us,
        "all_digests_agree": all(r["digest_agrees"] for r in rounds),
        "rounds": rounds,
        "audit": audits,
        "machine": machine,
    }


def print_summary(result: dict[str, Any]) -> None:
    print(f"audit: {result['changes']:,} changes, {result['rounds_per_mode']} round(s) per mode")
    for r in result["rounds"]:
        print(f"  {r['mode']:<6} {r['events_per_s']:>10,.0f} events/s  ({r['e2e_seconds']:.1f}s)")
    print(f"  with chain {result['with_chain_per_s']:>10,.0f} events/s (mean)")
    print(f"  plain      {result['plain_per_s']:>10,.0f} events/s (mean)")
    print(f"  overhead   {result['overhead']:>10.1%}  (target <= {result['target_overhead']:.0%})")
    a = result["append_access_us"]
    print(
        f"  one append_access, plain -> chained: 1 subject {a['plain_1']:.0f} -> {a['chain_1']:.0f} µs"
        f" ({a['plain_1_in_txn']:.1f} -> {a['chain_1_in_txn']:.1f} µs CPU), 2,000 subjects"
        f" {a['plain_2000']:.0f} -> {a['chain_2000']:.0f} µs"
        f" ({a['plain_2000_in_txn']:.1f} -> {a['chain_2000_in_txn']:.1f} µs CPU)"
    )
    for audit in result["audit"]:
        text = ", ".join(
            f"{name} {'OK' if a['ok'] else 'BAD'} ({a['entries']} entries, {a['checkpoints']} checkpoints,"
            f" {a['countersigned']} countersigned)"
            for name, a in audit.items()
        )
        print(f"  verify: {text}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=None, help="changes per round (default 200,000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 2; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="20,000 changes, one round per mode")
    parser.add_argument("--every", type=int, default=10_000, help="checkpoint every N entries (default 10,000)")
    parser.add_argument("--interval", type=float, default=1.0, help="or every T seconds (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="run folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (PKI, DBs, logs)")
    parser.add_argument("--node", nargs=4, metavar=("MODE", "CONFIG", "EVERY", "INTERVAL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.changes is None:
        args.changes = 20_000 if args.quick else 200_000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.changes <= 0 or args.rounds <= 0 or args.every <= 0 or args.interval <= 0:
        parser.error("--changes, --rounds, --every and --interval must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.node:
        mode, config, every, interval = args.node
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode}")
        run_bench_node(mode, Path(config), int(every), float(interval))
        return 0
    return run_in_folder(args, "audit", lambda root: run(args, root), print_summary)


if __name__ == "__main__":
    sys.exit(main())
