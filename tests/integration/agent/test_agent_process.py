"""``lattice agent`` as a real process: it dials out, obeys, stops on SIGTERM, and never listens."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from lattice.domain import agent
from lattice.ports.agent import AgentNotConnected, CommandTimeout

from .conftest import Pki, running_cell

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

TCP_LISTEN = "0A"
TCP_ESTABLISHED = "01"
UNIX_ACCEPTCON = 0x00010000


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def inet_sockets(pid: int, table: str) -> list[tuple[int, str, int]]:
    """(inode, state, remote port) of every entry of /proc/<pid>/net/<table>."""
    rows = []
    for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        rows.append((int(fields[9]), fields[3], remote_port))
    return rows


def listening_unix_inodes(pid: int) -> set[int]:
    found = set()
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[3], 16) & UNIX_ACCEPTCON:
            found.add(int(fields[6]))
    return found


def agent_command(cell_pki: Pki, port: int, record: Path, *extra: str) -> list[str]:
    files = cell_pki.agent_files("proc1")
    return [
        sys.executable, "-m", "lattice.app.cli", "agent",
        "--parent", f"127.0.0.1:{port}", "--cluster-name", "proc1",
        "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca),
        "--heartbeat-interval", "0.3", "--backoff-initial", "0.1", "--backoff-max", "1",
        "--record-dir", str(record), "--kubernetes-version", "v1.34.1", *extra,
    ]  # fmt: skip


async def test_the_agent_process_dials_out_and_never_listens(cell_pki: Pki, tmp_path: Path):
    record = tmp_path / "record"
    async with running_cell(cell_pki) as cell:
        process = await asyncio.create_subprocess_exec(
            *agent_command(cell_pki, cell.port, record), stderr=asyncio.subprocess.PIPE
        )
        try:
            status = await cell.wait_connected("proc1", within=30)
            assert status.kubernetes_version == "v1.34.1"
            assert status.agent_version.startswith("lattice/")

            # let it heartbeat and do some work, so every socket it might ever open exists
            pivot = agent.PivotManifests(
                "proc1", "capi-proc1", "p-1", (agent.MoveFile("Cluster_capi-proc1_proc1.yaml", b"{}"),)
            )
            assert (await cell.hub.send_command("proc1", pivot, 10)).success
            assert (await cell.hub.send_command("proc1", agent.ApplyManifests((b"kind: X\n",)), 10)).success
            await asyncio.sleep(1.0)

            owned = socket_inodes(process.pid)
            assert owned, "the agent holds no sockets at all?"
            tcp = inet_sockets(process.pid, "tcp") + inet_sockets(process.pid, "tcp6")
            mine = [(inode, state, port) for inode, state, port in tcp if inode in owned]
            assert [row for row in mine if row[1] == TCP_LISTEN] == []
            assert any(state == TCP_ESTABLISHED and port == cell.port for _, state, port in mine), mine
            udp = inet_sockets(process.pid, "udp") + inet_sockets(process.pid, "udp6")
            assert [row for row in udp if row[0] in owned] == []
            assert listening_unix_inodes(process.pid) & owned == set()

            assert (record / "pivot-p-1" / "Cluster_capi-proc1_proc1.yaml").read_bytes() == b"{}"
            assert len(list((record / "applied").iterdir())) == 1

            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 15)
            assert process.returncode == 0, stderr.decode()[-2000:]
            await cell.sink.wait_for(
                lambda latest: latest["proc1"].connection is agent.Connection.DISCONNECTED, 10
            )
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lattice.app.cli",
        *args,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_require_fips_refuses_to_start_without_a_fips_provider(cell_pki: Pki, tmp_path: Path):
    code, stderr = await _run_cli(*agent_command(cell_pki, 1, tmp_path)[3:], "--require-fips")
    assert code == 3
    assert "--require-fips: refusing to start" in stderr
    assert "FIPS provider" in stderr
    code, stderr = await _run_cli("fips-check", "--require-fips")
    assert code == 3
    assert "no FIPS provider is active" in stderr


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("--parent", "nowhere"), "must be HOST:PORT"),
        (("--parent", "::1:50051"), "[ADDR]:PORT"),
        (("--parent", "host:http"), "must be a number"),
        (("--parent", "host:70000"), "1-65535"),
        (("--cluster-name", "Bad_Name"), "lowercase"),
        (("--cert", "/nonexistent.crt"), "does not exist"),
        (("--heartbeat-interval", "0"), "interval"),
    ],
)
async def test_configuration_errors_exit_2_with_a_reason(cell_pki: Pki, tmp_path: Path, change, fragment):
    args = agent_command(cell_pki, 50051, tmp_path)[3:]
    index = args.index(change[0])
    args[index + 1] = change[1]
    code, stderr = await _run_cli(*args)
    assert code == 2
    assert fragment in stderr


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (("--discovery-base-domain", "example.com"), ("needs --kubeconfig",)),
        (
            (
                "--discovery-base-domain", "example.com", "--kubeconfig", "/nonexistent",
                "--gateway-port", "0", "--query-timeout", "0", "--discovery-refresh", "-1",
                "--service-resync", "0",
            ),
            ("--gateway-port 0", "--query-timeout 0", "--discovery-refresh -1", "--service-resync 0"),
        ),
    ],
)  # fmt: skip
async def test_discovery_flag_errors_are_all_reported(cell_pki: Pki, tmp_path: Path, extra, fragments):
    args = agent_command(cell_pki, 50051, tmp_path)[3:]
    code, stderr = await _run_cli(*args, *extra)
    assert code == 2
    for fragment in fragments:
        assert fragment in stderr


@pytest.mark.parametrize(
    ("point", "imported"), [("agent.import.received", False), ("agent.import.done", True)]
)
async def test_an_armed_fault_point_kills_the_agent_at_that_step_of_an_import(
    cell_pki: Pki, tmp_path: Path, point: str, imported: bool
) -> None:
    record = tmp_path / "record"
    async with running_cell(cell_pki) as cell:
        process = await asyncio.create_subprocess_exec(
            *agent_command(cell_pki, cell.port, record, "--fault-at", point),
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # the fault kills the agent's whole process group
        )
        try:
            await cell.wait_connected("proc1", within=30)
            pivot = agent.PivotManifests(
                "proc1", "capi-proc1", "p-1", (agent.MoveFile("Cluster_capi-proc1_proc1.yaml", b"{}"),)
            )
            with pytest.raises((AgentNotConnected, CommandTimeout)):  # the stream ends, no reply
                await cell.hub.send_command("proc1", pivot, 10)
            _, stderr = await asyncio.wait_for(process.communicate(), 15)
            assert process.returncode == -signal.SIGKILL
            assert f"fault injected at {point}" in stderr.decode()
            assert (record / "pivot-p-1" / "Cluster_capi-proc1_proc1.yaml").exists() is imported
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_an_unknown_fault_point_is_refused(cell_pki: Pki, tmp_path: Path) -> None:
    code, err = await _run_cli(*agent_command(cell_pki, 1, tmp_path / "r", "--fault-at", "agent.nowhere")[3:])
    assert code == 2
    assert "--fault-at: unknown fault points ['agent.nowhere']" in err
