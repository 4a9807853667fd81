"""Real, independent clients call the center over mTLS with an agency certificate: the `buf curl` CLI (npm
@bufbuild/buf, schema from server reflection) and a Node @grpc/grpc-js client (tools/clients/lookup.js).
Neither shares any code with jukinet, so they check the wire contract, TLS and status codes from outside."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from jukinet.codes import resident_code_from_body
from jukinet.domain.identity import NodeId, Role
from jukinet.pki import paths_for, server_name
from jukinet.rpc.runtime import RunningNode
from jukinet.wire.v1 import relay_pb2, relay_pb2_grpc
from tests.helpers.nodes import AGENCIES, REPO, channel, event, start

pytestmark = pytest.mark.slow

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TOOLS = REPO / "tools"
BUF = TOOLS / "node_modules" / ".bin" / "buf"
LOOKUP_JS = TOOLS / "clients" / "lookup.js"
CENTER_NAME = server_name(NodeId(Role.CENTER))  # center.jukinet.invalid
METHOD = "jukinet.wire.v1.ProvisionService/LookupResident"
CLIENT_TIMEOUT = 60.0

ALICE = resident_code_from_body("3000000003")
BAD_CHECK_DIGIT = ALICE[:-1] + str((int(ALICE[-1]) + 1) % 10)
ADDRESS = "東京都調布市小島町1番"


def _missing_tools() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "`node` is not on PATH"
    for needed in (
        BUF,
        TOOLS / "node_modules" / "@grpc" / "grpc-js",
        TOOLS / "node_modules" / "@grpc" / "proto-loader",
    ):
        if not needed.exists():
            return f"{needed} is missing (run `make` or `cd tools && npm install`)"
    return None


@pytest.fixture(scope="module")
def node_bin() -> str:
    problem = _missing_tools()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"real-client tests need Node tools under CI: {problem}")
        pytest.skip(f"real-client tests need Node tools: {problem}")
    node = shutil.which("node")
    assert node is not None
    return node


@dataclass
class Center:
    node: RunningNode
    pki: Path

    @property
    def port(self) -> int:
        return self.node.port

    def agency_tls(self) -> dict[str, str]:
        paths = paths_for(self.pki, NodeId.parse("jukinet://agency/pension"))
        return {"ca": str(paths.ca), "cert": str(paths.cert), "key": str(paths.key)}


@pytest.fixture
async def center(node_bin: str, pki_dir: Path, tmp_path: Path) -> AsyncIterator[Center]:
    node = await start("center", "", f"sqlite:///{tmp_path / 'center.db'}", pki_dir, agencies=AGENCIES)
    try:
        async with channel(pki_dir, "jukinet://prefecture/13", node.address) as ch:
            stub = relay_pb2_grpc.RelayServiceStub(ch)
            call = stub.PushEvents(
                iter([relay_pb2.PushEventsRequest(origin="132080", events=[event(1, ALICE, address=ADDRESS)])])
            )
            assert [r.acked_seq async for r in call] == [1]
        yield Center(node, pki_dir)
    finally:
        await node.stop()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def _run(*argv: str) -> Result:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv[0]} did not finish in {CLIENT_TIMEOUT:.0f} s: {' '.join(argv)}") from None
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def _buf_curl(c: Center, path: str, *extra: str) -> Result:
    tls = c.agency_tls()
    return await _run(
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--servername",  # verify the node's server name, as jukinet's own clients do
        CENTER_NAME,
        "--cacert",
        tls["ca"],
        "--cert",
        tls["cert"],
        "--key",
        tls["key"],
        "--connect-timeout",
        "10",
        *extra,
        f"https://127.0.0.1:{c.port}" + (f"/{path}" if path else ""),
    )


async def _buf_lookup(c: Center, purpose: str, code: str) -> Result:
    body = json.dumps({"purpose": purpose, "resident_code": code})
    return await _buf_curl(c, METHOD, "-d", body)


async def _node_lookup(
    c: Center, node_bin: str, purpose: str, code: str, servername: str = "center.jukinet.invalid"
) -> dict[str, Any]:
    tls = c.agency_tls()
    result = await _run(
        node_bin,
        str(LOOKUP_JS),
        "--address",
        f"127.0.0.1:{c.port}",
        "--servername",
        servername,
        "--ca",
        tls["ca"],
        "--cert",
        tls["cert"],
        "--key",
        tls["key"],
        "--purpose",
        purpose,
        "--code",
        code,
    )
    assert result.code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    answer: dict[str, Any] = json.loads(lines[0])
    return answer


async def test_buf_curl_looks_up_a_record_through_reflection(center: Center) -> None:
    result = await _buf_lookup(center, "pension-benefit", ALICE)
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)["record"]
    assert record["residentCode"] == ALICE
    assert record["status"] == "RESIDENT_STATUS_ACTIVE"
    assert record["items"]["address"] == ADDRESS
    assert record["municipalityCode"] == "132080"


@pytest.mark.parametrize(
    ("purpose", "code", "status", "number"),
    [
        ("passport-issue", ALICE, "permission_denied", 7),
        ("pension-benefit", BAD_CHECK_DIGIT, "invalid_argument", 3),
    ],
)
async def test_buf_curl_gets_the_right_status(
    center: Center, purpose: str, code: str, status: str, number: int
) -> None:
    result = await _buf_lookup(center, purpose, code)
    assert result.code == 8 * number, (result.code, result.stderr)
    assert result.stdout.strip() == ""
    error = json.loads(result.stderr)
    assert error["code"] == status
    assert error.get("message")


async def test_buf_curl_lists_methods_and_checks_health(center: Center) -> None:
    listed = await _buf_curl(center, "", "--list-methods")
    assert listed.code == 0, listed.stderr
    methods = listed.stdout.split()
    assert {f"jukinet.wire.v1.ProvisionService/{m}" for m in ("LookupResident", "SearchResidents")} <= set(methods)
    health = await _buf_curl(center, "grpc.health.v1.Health/Check", "-d", "{}")
    assert health.code == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


async def test_node_grpc_js_client_looks_up_a_record(center: Center, node_bin: str) -> None:
    answer = await _node_lookup(center, node_bin, "pension-benefit", ALICE)
    assert answer["ok"] is True, answer
    record = answer["record"]
    assert record["resident_code"] == ALICE
    assert record["status"] == "RESIDENT_STATUS_ACTIVE"
    assert record["items"]["address"] == ADDRESS
    assert "address" in record["provided_fields"]


@pytest.mark.parametrize(
    ("purpose", "code", "status", "reason", "types"),
    [
        ("passport-issue", ALICE, "PERMISSION_DENIED", "WRONG_PURPOSE", ["google.rpc.ErrorInfo"]),
        (
            "pension-benefit",
            BAD_CHECK_DIGIT,
            "INVALID_ARGUMENT",
            "INVALID_FIELD",
            ["google.rpc.ErrorInfo", "google.rpc.BadRequest"],
        ),
    ],
)
async def test_node_grpc_js_client_gets_the_right_status(
    center: Center, node_bin: str, purpose: str, code: str, status: str, reason: str, types: list[str]
) -> None:
    """The status code, the message, and the rich details (decoded by protobufjs, not by our code)."""
    answer = await _node_lookup(center, node_bin, purpose, code)
    assert answer["ok"] is False, answer
    assert answer["code"] == status
    assert answer["details"]
    assert answer["rich"] == {"code": getattr(grpc.StatusCode, status).value[0], "reason": reason, "types": types}


async def test_node_grpc_js_client_refuses_a_center_it_was_not_told_to_expect(center: Center, node_bin: str) -> None:
    """An independent TLS stack checks the node name too: expecting prefecture 13, the client refuses the
    center's certificate and sends nothing."""
    answer = await _node_lookup(center, node_bin, "pension-benefit", ALICE, servername="prefecture-13.jukinet.invalid")
    assert answer["ok"] is False, answer
    assert answer["code"] == "UNAVAILABLE"
    assert (await _node_lookup(center, node_bin, "pension-benefit", ALICE))["ok"] is True
