"""Starting and stopping a local network of node processes (used by the demo, tests and benchmarks)."""

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jukinet.domain.identity import NodeId, Role
from jukinet.pki import create_ca, ensure, slug

CENTER = NodeId(Role.CENTER)


@dataclass
class NodeProcess:
    identity: NodeId
    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    listen: str = ""
    metrics: str = ""

    @property
    def operator(self) -> str:
        return f"jukinet://operator/{slug(self.identity)}/demo"

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalNetwork:
    """Node processes on 127.0.0.1 under one run folder, each with its own SQLite file (by default)."""

    root: Path
    database_url: dict[str, str] = field(default_factory=dict)  # slug -> URL override (e.g. PostgreSQL)
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    extra_config: str = ""

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    def prepare_pki(self, identities: list[NodeId]) -> None:
        create_ca(self.pki_dir)
        for identity in identities:
            ensure(self.pki_dir, identity)
            if identity.role in (Role.CENTER, Role.PREFECTURE, Role.MUNICIPALITY):
                ensure(self.pki_dir, NodeId(Role.OPERATOR, "demo", slug(identity)), role="security-admin")
            if identity.role is Role.MUNICIPALITY:
                ensure(self.pki_dir, NodeId(Role.REGISTER, identity.code))

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
        kind = identity.role.value
        url = self.database_url.get(name, f"sqlite:///{self.root / 'data' / (name + '.db')}")
        config = self.root / "config" / f"{name}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "[node]",
            f'kind = "{kind}"',
            f'code = "{identity.code}"',
            f'listen = "{listen}"',
            f'database = "{url}"',
            f'pki_dir = "{self.pki_dir}"',
            'metrics_listen = "127.0.0.1:0"',
        ]
        if agencies is not None:
            lines.append(f'agencies = "{agencies}"')
        if upstream:
            lines += ["", "[upstream]", f'address = "{upstream}"']
        config.write_text("\n".join(lines) + "\n" + self.extra_config, encoding="utf-8")
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "jukinet.cli.main", "node", "run", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
                start_new_session=True,
            )
        node = NodeProcess(identity, config, log, process)
        self.nodes[name] = node
        ready = _read_ready(process, timeout)
        if ready is None:
            self.stop_all()
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"{identity.uri} did not start within {timeout:.0f}s; log {log}:\n{tail}")
        node.listen = ready["listen"]
        node.metrics = ready["metrics"]
        return node

    def restart(self, name: str, *, timeout: float = 60) -> NodeProcess:
        """Starts a stopped node again on the same address (same config file)."""
        old = self.nodes[name]
        text = old.config.read_text(encoding="utf-8")
        text = text.replace('listen = "127.0.0.1:0"', f'listen = "{old.listen}"')
        old.config.write_text(text, encoding="utf-8")
        upstream = ""
        for line in text.splitlines():
            if line.startswith("address = "):
                upstream = line.split('"')[1]
        return self.start(old.identity, upstream=upstream, listen=old.listen, timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILL: the node gets no chance to clean up."""
        node = self.nodes[name]
        node.process.kill()
        node.process.wait(timeout=10)

    def stop(self, name: str, timeout: float = 15) -> None:
        node = self.nodes[name]
        if node.alive():
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=10)
        if node.process.stdout:
            node.process.stdout.close()

    def stop_all(self) -> None:
        for name in reversed(list(self.nodes)):
            if self.nodes[name].alive():
                self.nodes[name].process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name in reversed(list(self.nodes)):
            node = self.nodes[name]
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=10)
            if node.process.stdout:
                node.process.stdout.close()


def _read_ready(process: subprocess.Popen[bytes], timeout: float) -> dict[str, str] | None:
    assert process.stdout is not None  # noqa: S101
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        readable, _, _ = select.select([process.stdout], [], [], 0.2)
        if not readable:
            continue
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            return None
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("event") == "node_ready":
                return {k: str(v) for k, v in message.items()}
    return None
