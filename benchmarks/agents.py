"""Many agents against one cell, on loopback, with the real TLS and gRPC stack.

One cell process (the real ``AgentHub`` + ``CellGrpcServer``, mutual TLS) and several agent
processes, each hosting many ``AgentRunner``s, every one with its own certificate, TLS context
and TCP connection. Phases:

1. **capacity**: ``--streams`` agents connect; the cell's RSS growth divided by the number of
   streams is the memory per stream;
2. **heartbeats**: the extra agents leave, ``--agents`` stay; heartbeat round trips (agent sends
   Heartbeat, cell answers HeartbeatAck) are sampled for ``--rtt-seconds``;
3. **storm**: the cell is killed (SIGKILL) and restarted on the same port; the time until every
   one of the ``--agents`` has reconnected and resynchronised (AgentReady and ClusterHealth
   received by the new cell) is measured from the kill;
4. **flood**: a separate process hammers the cell with ``--flood`` bad clients (half open TCP
   and say nothing, half complete TLS without a client certificate and send junk, all
   reconnecting when dropped) while heartbeat round trips of the ``--agents`` are sampled
   again; the p99 is reported with its ratio to phase 2's;
5. **renewal**: every agent renews its certificate over its stream at once (a new key and CSR
   each, the cell signs); the time until all ``--agents`` hold a new certificate.

Every wait is bounded; the run stops by itself. The last lines are one JSON object per figure:
``{"metric": ..., "value": ..., "unit": ...}``.

    python benchmarks/agents.py                      # 5,000 streams, 2,000 agents (~2-3 min)
    python benchmarks/agents.py --streams 10000      # the stretch target
    python benchmarks/agents.py --tls-read-buffer 262144   # asyncio's default buffer, to compare
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from lattice.adapters import agent_cell, agent_client, agent_local, agent_renewal, cell_ca, pki, tls
from lattice.domain import agent
from lattice.domain.backoff import Backoff
from lattice.domain.heartbeat import HeartbeatPolicy

PER_PROCESS = 2500


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _name(index: int) -> str:
    return f"bench-{index:05d}"


# --- the cell process ------------------------------------------------------------------------


class LatestSink:
    """Keeps only the latest status per cluster (the in-memory test sink keeps all history)."""

    def __init__(self) -> None:
        self.latest: dict[str, agent.AgentStatus] = {}

    async def record(self, status: agent.AgentStatus) -> None:
        self.latest[status.cluster_name] = status


async def cell_main(args: argparse.Namespace) -> None:
    _raise_nofile()
    tls.set_ssl_read_buffer(args.tls_read_buffer)
    directory = Path(args.pki)
    files = tls.TlsFiles(directory / "server.crt", directory / "server.key", directory / "ca.crt")
    sink = LatestSink()
    authority = pki.CertificateAuthority(
        cert=pki.cert_from_pem((directory / "ca.crt").read_bytes()),
        key=pki.key_from_pem((directory / "ca.key").read_bytes()),
    )
    hub = agent_cell.AgentHub(
        sink=sink,
        heartbeat_policy=HeartbeatPolicy(interval=args.heartbeat_interval),
        signer=cell_ca.CellCertificateAuthority(authority),
    )
    server = agent_cell.CellGrpcServer(
        hub, tls.server_context(files, require_client_cert=True), port=args.port, backlog=4096
    )
    await server.start()
    _emit(event="listening", port=server.port, pid=os.getpid())
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        resynced = sum(
            1
            for status in sink.latest.values()
            if status.connection is agent.Connection.CONNECTED and status.health is not None
        )
        _emit(event="count", connected=len(hub.connected()), resynced=resynced, renewals=hub.renewals)
        await asyncio.sleep(0.2)
    await server.stop()


# --- an agents process -----------------------------------------------------------------------


async def agents_main(args: argparse.Namespace) -> None:
    _raise_nofile()
    tls.set_ssl_read_buffer(16 * 1024)
    directory = Path(args.pki)
    rtts: list[float] = []
    recording = False

    def on_rtt(value: float) -> None:
        if recording:
            rtts.append(value)

    runners: list[agent_client.AgentRunner] = []
    for index in range(args.first, args.first + args.count):
        name = _name(index)
        files = tls.TlsFiles(directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt")
        renewer = agent_renewal.CertificateRenewer(
            name, agent_renewal.read_credentials(files), None, rand=random.random, timeout=120.0
        )
        settings = agent_client.AgentSettings(
            cluster_name=name,
            host="127.0.0.1",
            port=args.port,
            agent_version="bench",
            heartbeat=HeartbeatPolicy(interval=args.heartbeat_interval, jitter=0.2, max_missed=3),
            backoff=Backoff(initial=0.5, maximum=args.max_backoff),
            connect_timeout=60.0,
        )
        probe = agent_local.StaticClusterProbe("v1.34.1", agent.ClusterHealth(1, 1))
        idle = agent_local.UnconfiguredApplier()
        runners.append(
            agent_client.AgentRunner(
                settings,
                renewer.context,
                applier=idle,
                importer=idle,
                probe=probe,
                on_heartbeat_rtt=on_rtt,
                renewer=renewer,
            )
        )
    stop = asyncio.Event()
    tasks = []
    for runner in runners:  # ramp up: a few ms apart, so the handshakes do not all collide
        tasks.append(asyncio.create_task(runner.run(stop)))
        await asyncio.sleep(args.ramp / max(1, len(runners)))
    _emit(event="started", count=len(runners))

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            line = await asyncio.wait_for(reader.readline(), 1.0)
        except TimeoutError:
            _emit(event="count", connected=sum(1 for r in runners if r.connected))
            continue
        command = line.decode().strip()
        if command == "record":
            rtts.clear()
            recording = True
        elif command == "report":
            recording = False
            _emit(event="rtts", values=rtts)
        elif command == "renew":
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(runner.renew_certificate() for runner in runners), return_exceptions=True
            )
            failed = [repr(o) for o in outcomes if isinstance(o, BaseException)]
            _emit(event="renewed", seconds=time.monotonic() - started, failed=len(failed), first=failed[:3])
        elif command in {"stop", ""}:
            break
    stop.set()
    await asyncio.wait(tasks, timeout=10)


# --- the flood process ----------------------------------------------------------------------------


async def flood_main(args: argparse.Namespace) -> None:
    """``--flood`` bad clients, each reconnecting as soon as the cell drops it."""
    _raise_nofile()
    directory = Path(args.pki)
    no_cert = tls.client_context(None, ca=directory / "ca.crt")
    stop = asyncio.Event()
    opened = 0

    async def silent() -> None:
        nonlocal opened
        while not stop.is_set():
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
                opened += 1
                await reader.read()
                writer.close()
            await asyncio.sleep(0.01)

    async def junk() -> None:
        nonlocal opened
        while not stop.is_set():
            with contextlib.suppress(OSError, ConnectionError):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", args.port, ssl=no_cert, server_hostname="127.0.0.1"
                )
                opened += 1
                writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096))
                while await reader.read(65536):
                    pass
                writer.close()
            await asyncio.sleep(0.01)

    half = args.flood // 2
    tasks = [asyncio.create_task(silent()) for _ in range(half)]
    tasks += [asyncio.create_task(junk()) for _ in range(args.flood - half)]
    _emit(event="flooding", clients=args.flood)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _emit(event="flooded", connections=opened)


# --- the orchestrator ---------------------------------------------------------------------------


class Child:
    """A child process whose JSON lines update ``latest``; ``events`` keeps the rest."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.latest: dict[str, Any] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "count":
                self.latest = event
            else:
                await self.events.put(event)

    async def expect(self, name: str, within: float) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                event = await self.events.get()
                if event.get("event") == name:
                    return event

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.send("stop")
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.reader.cancel()


async def _spawn(*args: str) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        limit=64 * 1024 * 1024,
    )  # fmt: skip
    return Child(process)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _wait(predicate: Any, within: float, period: float = 0.1) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(period)
    return predicate()


def _make_pki(directory: Path, count: int) -> None:
    ca = cell_ca.CellCertificateAuthority.generate("bench-cell-ca")
    ca.write_server_files(directory, ip_addresses=["127.0.0.1"])
    pki.write_private_file(directory / "ca.key", ca.authority.key_pem)
    for index in range(count):
        name = _name(index)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = ca.sign_agent_csr(pki.csr_to_pem(pki.new_csr(key, name)).decode(), name)
        (directory / f"{name}.crt").write_text(certificate)
        (directory / f"{name}.key").write_bytes(pki.key_to_pem(key))


def _progress(message: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def orchestrate(args: argparse.Namespace) -> list[dict[str, Any]]:
    _raise_nofile()
    samples: list[float] = []
    streams = max(args.streams, args.agents)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        directory = Path(tmp)
        started = time.monotonic()
        await asyncio.to_thread(_make_pki, directory, streams)
        _progress(f"{streams} agent identities in {time.monotonic() - started:.1f} s")
        common = ["--pki", str(directory), "--heartbeat-interval", str(args.heartbeat_interval)]
        cell_args = [
            "--role",
            "cell",
            *common,
            "--tls-read-buffer",
            str(args.tls_read_buffer),
            "--lifetime",
            "900",
        ]
        cell = await _spawn(*cell_args, "--port", "0")
        children: list[Child] = [cell]
        try:
            port = (await cell.expect("listening", 30))["port"]
            await asyncio.sleep(1.0)
            baseline = _rss_kib(cell.process.pid)

            processes = -(-args.agents // PER_PROCESS) + -(-(streams - args.agents) // PER_PROCESS)

            def spawn_group(first: int, count: int) -> list[asyncio.Task[Child]]:
                group = []
                for offset in range(0, count, PER_PROCESS):
                    size = min(PER_PROCESS, count - offset)
                    # every process starts its agents at its share of --connect-rate
                    ramp = size / (args.connect_rate / processes)
                    group.append(asyncio.create_task(_spawn(
                        "--role", "agents", *common, "--port", str(port), "--first", str(first + offset),
                        "--count", str(size), "--max-backoff", str(args.max_backoff),
                        "--ramp", f"{ramp:.2f}", "--lifetime", "900",
                    )))  # fmt: skip
                return group

            core = [await t for t in spawn_group(0, args.agents)]
            extra = [await t for t in spawn_group(args.agents, streams - args.agents)]
            children += core + extra

            # phase 1: capacity and memory
            t0 = time.monotonic()
            held = await _wait(lambda: cell.latest.get("connected", 0) >= streams, args.connect_timeout)
            connect_time = time.monotonic() - t0
            await asyncio.sleep(3.0)
            connected = cell.latest.get("connected", 0)
            rss = _rss_kib(cell.process.pid)
            _progress(f"capacity: {connected} streams in {connect_time:.1f} s; cell RSS {rss // 1024} MiB")
            per_stream = (rss - baseline) * 1024 / max(1, connected) / 1000
            results += [
                {"metric": "streams_held", "value": connected, "unit": "streams"},
                {"metric": "connect_time_all_streams", "value": round(connect_time, 1), "unit": "s"},
                {"metric": "cell_rss_baseline", "value": round(baseline / 1024, 1), "unit": "MiB"},
                {"metric": "cell_rss_with_streams", "value": round(rss / 1024, 1), "unit": "MiB"},
                {"metric": "memory_per_stream", "value": round(per_stream, 1), "unit": "KB"},
            ]
            if not held:
                print(f"# only {connected} of {streams} streams connected", file=sys.stderr)

            # phase 2: heartbeat round trips with --agents agents connected
            for child in extra:
                await child.stop()
            await _wait(lambda: cell.latest.get("connected", 0) <= args.agents, 60)
            await asyncio.sleep(args.settle)  # let the departures finish before sampling
            _progress(
                f"heartbeats: {cell.latest.get('connected', 0)} agents, sampling {args.rtt_seconds:.0f} s"
            )
            for child in core:
                await child.send("record")
            await asyncio.sleep(args.rtt_seconds)
            samples = []
            for child in core:
                await child.send("report")
                samples += (await child.expect("rtts", 30))["values"]
            if samples:
                results += [
                    {
                        "metric": "heartbeat_rtt_agents",
                        "value": cell.latest.get("connected", 0),
                        "unit": "agents",
                    },
                    {"metric": "heartbeat_rtt_samples", "value": len(samples), "unit": "samples"},
                    {
                        "metric": "heartbeat_rtt_p50",
                        "value": round(1000 * statistics.median(samples), 2),
                        "unit": "ms",
                    },
                    {
                        "metric": "heartbeat_rtt_p99",
                        "value": round(1000 * _percentile(samples, 0.99), 2),
                        "unit": "ms",
                    },
                ]

            # phase 3: restart storm
            _progress(f"storm: killing the cell with {cell.latest.get('connected', 0)} agents connected")
            cell.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await cell.process.wait()
            cell.reader.cancel()
            cell = await _spawn(*cell_args, "--port", str(port))
            children.append(cell)
            await cell.expect("listening", 30)
            resynced = await _wait(lambda: cell.latest.get("resynced", 0) >= args.agents, args.storm_timeout)
            storm = time.monotonic() - killed
            results += [
                {"metric": "storm_agents", "value": cell.latest.get("resynced", 0), "unit": "agents"},
                {"metric": "storm_resync_time", "value": round(storm, 1) if resynced else None, "unit": "s"},
            ]

            # phase 4: heartbeats while bad clients flood the cell
            flood = await _spawn("--role", "flood", *common, "--port", str(port), "--flood", str(args.flood))
            children.append(flood)
            await flood.expect("flooding", 30)
            await asyncio.sleep(3.0)
            _progress(f"flood: {args.flood} bad clients; sampling heartbeats {args.rtt_seconds:.0f} s")
            for child in core:
                await child.send("record")
            await asyncio.sleep(args.rtt_seconds)
            flooded: list[float] = []
            for child in core:
                await child.send("report")
                flooded += (await child.expect("rtts", 30))["values"]
            await flood.send("stop")
            bad = (await flood.expect("flooded", 30))["connections"]
            if flooded and samples:
                p99_flood = 1000 * _percentile(flooded, 0.99)
                p99_quiet = 1000 * _percentile(samples, 0.99)
                results += [
                    {"metric": "flood_bad_clients", "value": args.flood, "unit": "clients"},
                    {"metric": "flood_bad_connections_opened", "value": bad, "unit": "connections"},
                    {"metric": "heartbeat_rtt_samples_flood", "value": len(flooded), "unit": "samples"},
                    {"metric": "heartbeat_rtt_p99_flood", "value": round(p99_flood, 2), "unit": "ms"},
                    {
                        "metric": "heartbeat_rtt_p99_flood_vs_quiet",
                        "value": round(p99_flood / max(p99_quiet, 1e-6), 2),
                        "unit": "ratio",
                    },
                ]

            # phase 5: every agent renews its certificate at once
            _progress(f"renewal: {args.agents} agents renew at once")
            t0 = time.monotonic()
            for child in core:
                await child.send("renew")
            renewed = [await child.expect("renewed", args.storm_timeout) for child in core]
            renewal_time = time.monotonic() - t0
            failed = sum(event["failed"] for event in renewed)
            await asyncio.sleep(0.5)  # the cell reports its counters every 0.2 s
            signed = cell.latest.get("renewals", 0)
            for event in renewed:
                if event["first"]:
                    print(f"# renewal failures, for example: {event['first']}", file=sys.stderr)
            results += [
                {"metric": "renewal_agents", "value": args.agents - failed, "unit": "agents"},
                {"metric": "renewal_failed", "value": failed, "unit": "agents"},
                {"metric": "renewal_time_all_agents", "value": round(renewal_time, 1), "unit": "s"},
                {"metric": "cell_renewals_signed", "value": signed, "unit": "certificates"},
            ]
        finally:
            for child in children:
                await child.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=["orchestrate", "cell", "agents", "flood"], default="orchestrate")
    parser.add_argument("--flood", type=int, default=500, help="bad clients in the flood phase")
    parser.add_argument("--agents", type=int, default=2000, help="agents for the heartbeat and storm phases")
    parser.add_argument("--streams", type=int, default=5000, help="concurrent streams for the capacity phase")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("--rtt-seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the phases")
    parser.add_argument(
        "--tls-read-buffer",
        type=int,
        default=agent_cell.CELL_SSL_READ_BUFFER,
        help="the cell's asyncio TLS read buffer",
    )
    parser.add_argument("--max-backoff", type=float, default=10.0)
    parser.add_argument(
        "--connect-rate", type=float, default=250.0, help="new agents per second, all processes together"
    )
    parser.add_argument("--ramp", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--pki")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=900.0)
    args = parser.parse_args()
    random.seed()
    if args.role == "cell":
        asyncio.run(cell_main(args))
        return 0
    if args.role == "agents":
        asyncio.run(agents_main(args))
        return 0
    if args.role == "flood":
        asyncio.run(flood_main(args))
        return 0
    for result in asyncio.run(orchestrate(args)):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
