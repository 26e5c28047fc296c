"""Wire interoperability with grpcio, in both directions, from code generated in the test.

grpcio-tools compiles proto/lattice/agent/v1/agent.proto into a temporary directory (nothing
is committed); a grpcio client then talks to our grpclib cell, and our grpclib agent talks to a
grpcio server. Each grpcio peer runs in its own Python process. This proves the wire format is
plain gRPC, not something only grpclib understands.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lattice.domain import agent

from .conftest import Pki, running_agent, running_cell

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[3]

CLIENT = """
import json, queue, sys
import grpc
sys.path.insert(0, {gen!r})
from interop.agent.v1 import agent_pb2 as pb, agent_pb2_grpc as rpc

port, cert, key, ca, cluster, claimed, out = sys.argv[1:]
creds = grpc.ssl_channel_credentials(
    root_certificates=open(ca, "rb").read(),
    private_key=open(key, "rb").read(),
    certificate_chain=open(cert, "rb").read(),
)
channel = grpc.secure_channel(f"127.0.0.1:{{port}}", creds)
outbox = queue.Queue()

def requests():
    while (message := outbox.get()) is not None:
        yield message

outbox.put(pb.AgentMessage(cluster_name=claimed, ready=pb.AgentReady(
    agent_version="grpcio", kubernetes_version="v1.34.0", state=pb.AGENT_STATE_READY)))
outbox.put(pb.AgentMessage(
    cluster_name=cluster, heartbeat=pb.Heartbeat(state=pb.AGENT_STATE_READY, sequence=1)))
seen = {{"acks": [], "commands": [], "error": None}}
try:
    for command in rpc.LatticeAgentStub(channel).Connect(requests(), timeout=60):
        kind = command.WhichOneof("command")
        if kind == "heartbeat_ack":
            seen["acks"].append(command.heartbeat_ack.sequence)
        elif kind == "status_request":
            seen["commands"].append(kind)
            outbox.put(pb.AgentMessage(cluster_name=cluster, status_response=pb.StatusResponse(
                command_id=command.command_id, state=pb.AGENT_STATE_READY,
                kubernetes_version="v1.34.0", agent_version="grpcio")))
        elif kind == "apply_manifests":
            seen["commands"].append(kind)
            seen["manifests"] = [m.decode() for m in command.apply_manifests.manifests]
            outbox.put(pb.AgentMessage(cluster_name=cluster, bootstrap_complete=pb.BootstrapComplete(
                command_id=command.command_id, success=True)))
            outbox.put(None)
except grpc.RpcError as error:
    seen["error"] = [error.code().name, error.details()]
outbox.put(None)
json.dump(seen, open(out, "w"))
"""

SERVER = """
import json, os, sys
from concurrent import futures
import grpc
sys.path.insert(0, {gen!r})
from interop.agent.v1 import agent_pb2 as pb, agent_pb2_grpc as rpc

port_file, cert, key, ca, out = sys.argv[1:]

class Cell(rpc.LatticeAgentServicer):
    def Connect(self, request_iterator, context):
        first = next(request_iterator)
        auth = context.auth_context()
        report = {{
            "first": first.WhichOneof("payload"),
            "cluster": first.cluster_name,
            "agent_version": first.ready.agent_version,
            "peer_cn": [v.decode() for v in auth.get("x509_common_name", [])],
            "heartbeats": 0,
        }}
        yield pb.CellCommand(command_id="s-1", status_request=pb.StatusRequest())
        yield pb.CellCommand(command_id="s-2")  # a command kind the agent cannot know
        for message in request_iterator:
            kind = message.WhichOneof("payload")
            if kind == "heartbeat":
                report["heartbeats"] += 1
                yield pb.CellCommand(heartbeat_ack=pb.HeartbeatAck(sequence=message.heartbeat.sequence))
            elif kind == "status_response":
                report["status"] = {{"command_id": message.status_response.command_id,
                                     "kubernetes_version": message.status_response.kubernetes_version,
                                     "state": message.status_response.state}}
            elif kind == "command_result":
                report["command_result"] = {{"command_id": message.command_result.command_id,
                                             "success": message.command_result.success,
                                             "error": message.command_result.error_message}}
            if "status" in report and "command_result" in report and report["heartbeats"] >= 2:
                with open(out + ".tmp", "w") as handle:
                    json.dump(report, handle)
                os.replace(out + ".tmp", out)
                return

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
rpc.add_LatticeAgentServicer_to_server(Cell(), server)
credentials = grpc.ssl_server_credentials(
    [(open(key, "rb").read(), open(cert, "rb").read())],
    root_certificates=open(ca, "rb").read(),
    require_client_auth=True,
)
port = server.add_secure_port("127.0.0.1:0", credentials)
server.start()
with open(port_file + ".tmp", "w") as handle:
    handle.write(str(port))
os.replace(port_file + ".tmp", port_file)
server.wait_for_termination(timeout=150)
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grpcio-generated")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-Iinterop/agent={ROOT / 'proto/lattice/agent'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "interop/agent/v1/agent.proto",
        ],
        check=True,
        capture_output=True,
    )
    assert (out / "interop/agent/v1/agent_pb2_grpc.py").exists()
    return out


async def _wait_for_file(path: Path, process: asyncio.subprocess.Process, within: float = 60) -> str:
    async with asyncio.timeout(within):
        while not await asyncio.to_thread(path.exists):
            if process.returncode is not None:
                _, stderr = await process.communicate()
                raise AssertionError(f"grpcio peer exited early: {stderr.decode()[-2000:]}")
            await asyncio.sleep(0.05)
    return await asyncio.to_thread(path.read_text)


@pytest.mark.parametrize("claimed", ["gc1", "someone-else"])
async def test_a_grpcio_client_talks_to_our_cell(
    cell_pki: Pki, generated: Path, tmp_path: Path, claimed: str
):
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CLIENT.format(gen=str(generated))))
    files = cell_pki.agent_files("gc1")
    out = tmp_path / "client.json"
    async with running_cell(cell_pki) as cell:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(cell.port),
            str(files.cert),
            str(files.key),
            str(files.ca),
            "gc1",
            claimed,
            str(out),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            if claimed == "gc1":
                status = await cell.wait_connected("gc1", within=30)
                assert status.agent_version == "grpcio"
                report = await cell.hub.send_command("gc1", agent.StatusQuery(), 10)
                assert report == agent.StatusReport(
                    report.command_id, agent.AgentState.READY, "v1.34.0", "grpcio"
                )
                applied = await cell.hub.send_command(
                    "gc1", agent.ApplyManifests((b"kind: ConfigMap\n",)), 10
                )
                assert applied == agent.BootstrapResult(applied.command_id, True)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    seen = json.loads(out.read_text())
    if claimed == "gc1":
        assert seen["error"] is None
        assert seen["acks"] == [1]
        assert seen["commands"] == ["status_request", "apply_manifests"]
        assert seen["manifests"] == ["kind: ConfigMap\n"]
    else:
        code, details = seen["error"]
        assert code == "PERMISSION_DENIED"
        assert "does not match the client certificate" in details


async def test_our_agent_talks_to_a_grpcio_cell(cell_pki: Pki, generated: Path, tmp_path: Path):
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(SERVER.format(gen=str(generated))))
    port_file, out = tmp_path / "port", tmp_path / "server.json"
    server = cell_pki.server
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(port_file),
        str(server.cert),
        str(server.key),
        str(server.ca),
        str(out),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        port = int(await _wait_for_file(port_file, process))
        async with running_agent(cell_pki.agent_files("gi1"), "gi1", port, interval=0.2) as a:
            report = json.loads(await _wait_for_file(out, process))
            assert a.rtts  # HeartbeatAcks from grpcio reached our agent
    finally:
        process.terminate()
        await process.wait()
    assert report["first"] == "ready"
    assert report["cluster"] == "gi1"
    assert report["peer_cn"] == ["gi1"]
    assert report["agent_version"] == "lattice/test"
    assert report["status"] == {"command_id": "s-1", "kubernetes_version": "v1.34.1", "state": 1}
    assert report["command_result"]["command_id"] == "s-2"
    assert report["command_result"]["success"] is False
    assert "unsupported command" in report["command_result"]["error"]
    assert report["heartbeats"] >= 2
