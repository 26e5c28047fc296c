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
    python benchmarks/agents.py --streams 5000 --agents 5000 --storm-only   # the 5,000-agent storm
    python benchmarks/agents.py --breakdown 500      # where a stream's memory goes (~10 min)

``--breakdown N`` runs only the memory breakdown, each part a ``stream_bytes_<part>`` line:
N bare mutual-TLS connections (the same TLS context and read buffer, an empty protocol:
``stream_bytes_bare_mtls``), then N agent streams with grpclib's default HTTP/2 settings (the
baseline, ``stream_bytes_total_baseline``) and with the cell's (``stream_bytes_total`` and
their ratio), each as RSS growth; then both again under tracemalloc, grouped by the package of
the allocating line (``stream_bytes_<package>``) and of the innermost frame in ours, grpclib,
h2, hpack or ssl (``stream_bytes_by_owner_<package>``); ``stream_bytes_native`` is the RSS
growth that tracemalloc does not see (OpenSSL). The 30 largest lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.config import Configuration

from lattice.adapters import agent_client, agent_hub, agent_local, agent_renewal, cell_ca, pki, tls
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
    hub = agent_hub.AgentHub(
        sink=sink,
        heartbeat_policy=HeartbeatPolicy(interval=args.heartbeat_interval),
        signer=cell_ca.CellCertificateAuthority(authority),
    )
    server = agent_hub.CellGrpcServer(
        hub,
        tls.server_context(files, require_client_cert=True),
        port=args.port,
        backlog=4096,
        config=Configuration() if args.grpc_defaults else agent_hub.CELL_GRPC_CONFIG,
    )
    await server.start()
    _emit(event="listening", port=server.port, pid=os.getpid())
    if args.trace:
        await _trace_breakdown(args.expect, lambda: len(hub.connected()))
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


PACKAGES = (
    ("lattice", "/lattice/"),
    ("grpclib", "/grpclib/"),
    ("h2", "/h2/"),
    ("hpack", "/hpack/"),
    ("ssl", "/asyncio/sslproto.py"),
    ("ssl", "/ssl.py"),
    ("asyncio", "/asyncio/"),
    ("protobuf", "/protobuf/"),
)


def _package(filename: str) -> str:
    for name, marker in PACKAGES:
        if marker in filename:
            return name
    return "other"


def _owner(traceback: Any) -> str:
    """The innermost frame in our code or an HTTP/2 or TLS package (who asked for the object)."""
    for frame in reversed(traceback):
        package = _package(frame.filename)
        if package not in {"asyncio", "other"}:
            return package
    return _package(traceback[-1].filename)


async def _trace_breakdown(expect: int, connected: Any) -> None:
    """Trace the cell's Python allocations from 0 streams to ``expect`` streams and report them.

    tracemalloc sees what Python allocates (objects, bytearrays, dicts); OpenSSL's own
    allocations (the SSL object, its record buffers, the peer certificate chain) go through
    C ``malloc`` and appear only in the RSS: ``native`` (in :func:`breakdown`) is an untraced
    run's RSS growth minus what was traced here.
    """
    await asyncio.sleep(1.0)
    gc.collect()
    rss0 = _rss_kib(os.getpid()) * 1024
    tracemalloc.start(16)
    overhead0 = tracemalloc.get_tracemalloc_memory()
    _emit(event="tracing")
    stable_since = time.monotonic()
    last = -1
    while True:  # every stream in and no new one for 3 s (or 99 % of them and none for 20 s)
        now = connected()
        if now != last:
            stable_since, last = time.monotonic(), now
        stable = time.monotonic() - stable_since
        if (now >= expect and stable >= 3.0) or (now >= 0.99 * expect and stable >= 20.0):
            break
        await asyncio.sleep(0.5)
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    overhead = tracemalloc.get_tracemalloc_memory() - overhead0
    tracemalloc.stop()
    rss = _rss_kib(os.getpid()) * 1024
    streams = connected()
    by_package: dict[str, int] = {}
    by_owner: dict[str, int] = {}
    by_line: dict[tuple[str, int, str], list[int]] = {}
    for trace in snapshot.traces:
        inner = trace.traceback[-1]
        package = _package(inner.filename)
        by_package[package] = by_package.get(package, 0) + trace.size
        owner = _owner(trace.traceback)
        by_owner[owner] = by_owner.get(owner, 0) + trace.size
        key = (inner.filename, inner.lineno, owner)
        entry = by_line.setdefault(key, [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    traced = sum(by_package.values())
    top = sorted(by_line.items(), key=lambda item: -item[1][0])[:30]
    _emit(
        event="breakdown",
        streams=streams,
        rss_delta=rss - rss0,
        traced=traced,
        tracemalloc_overhead=overhead,
        by_package=by_package,
        by_owner=by_owner,
        lines=[
            {
                "where": f"{_short(filename)}:{lineno}",
                "owner": owner,
                "bytes_per_stream": round(size / max(1, streams)),
                "blocks_per_stream": round(count / max(1, streams), 2),
            }
            for (filename, lineno, owner), (size, count) in top
        ],
    )


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --- the bare mutual-TLS baseline -------------------------------------------------------------


async def bare_cell_main(args: argparse.Namespace) -> None:
    """A server with the cell's TLS context and read buffer and nothing else: each connection
    is an asyncio TLS transport and an empty protocol. Its RSS growth per connection is the
    floor the gRPC cell is compared with."""
    _raise_nofile()
    tls.set_ssl_read_buffer(args.tls_read_buffer)
    directory = Path(args.pki)
    files = tls.TlsFiles(directory / "server.crt", directory / "server.key", directory / "ca.crt")
    context = tls.server_context(files, require_client_cert=True)
    held: set[asyncio.BaseTransport] = set()

    class Hold(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport_ = transport
            held.add(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            held.discard(self.transport_)

        transport_: asyncio.BaseTransport

    def factory() -> asyncio.Protocol:
        return Hold()

    server = await asyncio.get_running_loop().create_server(
        factory, "127.0.0.1", 0, ssl=context, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    _emit(event="listening", port=port, pid=os.getpid())
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        _emit(event="count", connected=len(held))
        await asyncio.sleep(0.2)
    server.close()


async def bare_agents_main(args: argparse.Namespace) -> None:
    """``--count`` mutual-TLS connections, each its own identity and context, held open."""
    _raise_nofile()
    tls.set_ssl_read_buffer(16 * 1024)
    directory = Path(args.pki)
    writers = []
    for index in range(args.first, args.first + args.count):
        name = _name(index)
        files = tls.TlsFiles(directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt")
        context = tls.client_context(files)
        for _attempt in range(20):
            try:
                _reader, writer = await asyncio.open_connection(
                    "127.0.0.1", args.port, ssl=context, server_hostname="127.0.0.1"
                )
            except OSError:
                await asyncio.sleep(0.5)
                continue
            writers.append(writer)
            break
        await asyncio.sleep(args.ramp / max(1, args.count))
    _emit(event="started", count=len(writers))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()
    for writer in writers:
        writer.close()


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

            if args.storm_only:
                return results

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


async def _hold_streams(
    directory: Path, count: int, cell_args: list[str], *, bare: bool = False, trace: bool = False
) -> dict[str, Any]:
    """Start a cell (``bare``: the TLS-only server), connect ``count`` agents, measure, stop."""
    common = ["--pki", str(directory)]
    role = "bare-cell" if bare else "cell"
    extra = ["--trace", "--expect", str(count)] if trace else []
    cell = await _spawn("--role", role, *common, *cell_args, *extra, "--port", "0", "--lifetime", "900")
    children = [cell]
    try:
        port = (await cell.expect("listening", 30))["port"]
        if trace:
            await cell.expect("tracing", 30)
        else:
            await asyncio.sleep(1.0)
        baseline = _rss_kib(cell.process.pid)
        per = -(-count // 2)  # two agent processes: the cell's two cores are shared with them
        for first in range(0, count, per):
            size = min(per, count - first)
            children.append(await _spawn(
                "--role", "bare-agents" if bare else "agents", *common, "--port", str(port),
                "--first", str(first), "--count", str(size), "--ramp", f"{size / 50:.2f}",
                "--heartbeat-interval", "10", "--lifetime", "900",
            ))  # fmt: skip
        if trace:
            breakdown = await cell.expect("breakdown", 600)
            return {"streams": breakdown["streams"], "breakdown": breakdown}
        held = await _wait(lambda: cell.latest.get("connected", 0) >= count, 600)
        await asyncio.sleep(3.0)
        rss = _rss_kib(cell.process.pid)
        connected = cell.latest.get("connected", 0)
        if not held:
            _progress(f"only {connected} of {count} connected")
        return {"streams": connected, "bytes_per_stream": (rss - baseline) * 1024 / max(1, connected)}
    finally:
        for child in reversed(children):
            await child.stop()


async def breakdown(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Where a stream's memory goes: the bare TLS floor, then the cell with grpclib's default
    HTTP/2 settings (the baseline) and with the cell's, each by RSS, then traced."""
    _raise_nofile()
    count = args.breakdown
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        directory = Path(tmp)
        await asyncio.to_thread(_make_pki, directory, count)
        buffer = ["--tls-read-buffer", str(args.tls_read_buffer)]
        _progress(f"bare mutual TLS: {count} connections")
        bare = await _hold_streams(directory, count, buffer, bare=True)
        _progress(f"cell, grpclib's HTTP/2 settings: {count} streams")
        default = await _hold_streams(directory, count, [*buffer, "--grpc-defaults"])
        _progress(f"cell, the cell's HTTP/2 settings: {count} streams")
        lean = await _hold_streams(directory, count, buffer)
        results += [
            {"metric": "breakdown_streams", "value": lean["streams"], "unit": "streams"},
            {"metric": "stream_bytes_bare_mtls", "value": round(bare["bytes_per_stream"]), "unit": "bytes"},
            {
                "metric": "stream_bytes_total_baseline",
                "value": round(default["bytes_per_stream"]),
                "unit": "bytes",
            },
            {"metric": "stream_bytes_total", "value": round(lean["bytes_per_stream"]), "unit": "bytes"},
            {
                "metric": "stream_bytes_total_vs_baseline",
                "value": round(lean["bytes_per_stream"] / max(1.0, default["bytes_per_stream"]), 3),
                "unit": "ratio",
            },
            {
                "metric": "stream_bytes_above_bare",
                "value": round(lean["bytes_per_stream"] - bare["bytes_per_stream"]),
                "unit": "bytes",
            },
        ]
        runs = (("", buffer, lean), ("_baseline", [*buffer, "--grpc-defaults"], default))
        for label, cell_args, untraced in runs:
            _progress(f"traced cell{label}: {count} streams")
            traced = (await _hold_streams(directory, count, cell_args, trace=True))["breakdown"]
            streams = max(1, traced["streams"])
            for package, size in sorted(traced["by_package"].items()):
                results.append(
                    {
                        "metric": f"stream_bytes{label}_{package}",
                        "value": round(size / streams),
                        "unit": "bytes",
                    }
                )
            for owner, size in sorted(traced["by_owner"].items()):
                results.append(
                    {
                        "metric": f"stream_bytes{label}_by_owner_{owner}",
                        "value": round(size / streams),
                        "unit": "bytes",
                    }
                )
            # OpenSSL's allocations are not Python's: the untraced run's RSS growth less what was traced
            native = untraced["bytes_per_stream"] - traced["traced"] / streams
            results += [
                {
                    "metric": f"stream_bytes{label}_python_traced",
                    "value": round(traced["traced"] / streams),
                    "unit": "bytes",
                },
                {"metric": f"stream_bytes{label}_native", "value": round(native), "unit": "bytes"},
            ]
            for line in traced["lines"]:
                print(f"# {label or 'cell'}: {json.dumps(line)}", file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--role",
        choices=["orchestrate", "cell", "agents", "flood", "bare-cell", "bare-agents"],
        default="orchestrate",
    )
    parser.add_argument(
        "--breakdown",
        type=int,
        default=0,
        metavar="N",
        help="only measure where the memory of N streams goes (bare TLS, baseline, traced) and exit",
    )
    parser.add_argument(
        "--grpc-defaults", action="store_true", help="the cell uses grpclib's HTTP/2 settings"
    )
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--flood", type=int, default=500, help="bad clients in the flood phase")
    parser.add_argument("--agents", type=int, default=2000, help="agents for the heartbeat and storm phases")
    parser.add_argument("--streams", type=int, default=5000, help="concurrent streams for the capacity phase")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("--rtt-seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the phases")
    parser.add_argument(
        "--tls-read-buffer",
        type=int,
        default=agent_hub.CELL_SSL_READ_BUFFER,
        help="the cell's asyncio TLS read buffer",
    )
    parser.add_argument("--max-backoff", type=float, default=10.0)
    parser.add_argument(
        "--connect-rate", type=float, default=250.0, help="new agents per second, all processes together"
    )
    parser.add_argument("--ramp", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument(
        "--storm-only", action="store_true", help="stop after the storm (no flood, no renewal phase)"
    )
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
    if args.role == "bare-cell":
        asyncio.run(bare_cell_main(args))
        return 0
    if args.role == "bare-agents":
        asyncio.run(bare_agents_main(args))
        return 0
    if args.breakdown:
        for result in asyncio.run(breakdown(args)):
            print(json.dumps(result), flush=True)
        return 0
    for result in asyncio.run(orchestrate(args)):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
