"""The cell's doors under bad clients: the gRPC hub with a real agent (mTLS), and the webhook."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest

from lattice.adapters import tls
from lattice.adapters.conn_limits import ConnectionLimits
from lattice.adapters.registration_http import PayloadSettings, RegistrationServer, registration_app
from lattice.adapters.token_store_memory import InMemoryTokenStore

from .conftest import Pki, running_agent, running_cell

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(90)]


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):  # the server's HTTP/2 SETTINGS, then EOF
                pass
            return True
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


async def _tls_connect(
    port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")


async def test_a_connection_that_sends_nothing_after_its_handshake_is_closed(cell_pki: Pki) -> None:
    limits = ConnectionLimits(first_data_timeout=0.5)
    async with running_cell(cell_pki, limits=limits) as cell:
        reader, writer = await _tls_connect(cell.port, tls.client_context(cell_pki.agent_files("l1")))
        assert await _closed_by_server(reader, 5.0)
        writer.close()
        assert cell.server.server is not None
        assert cell.server.server.guard.idle_closed == 1
        assert cell.server.server.guard.connections == 0


async def test_a_handshake_that_never_starts_is_dropped(cell_pki: Pki) -> None:
    limits = ConnectionLimits(handshake_timeout=0.5)
    async with running_cell(cell_pki, limits=limits) as cell:
        reader, writer = await asyncio.open_connection("127.0.0.1", cell.port)  # plain TCP, silent
        assert await _closed_by_server(reader, 5.0)
        writer.close()


async def test_connections_over_the_limit_are_closed_and_the_agent_gets_in_when_one_frees(
    cell_pki: Pki,
) -> None:
    limits = ConnectionLimits(max_connections=2, first_data_timeout=60.0)
    context = tls.client_context(cell_pki.agent_files("l2"))
    async with running_cell(cell_pki, limits=limits) as cell:
        held = [await _tls_connect(cell.port, context) for _ in range(2)]
        server = cell.server.server
        assert server is not None
        # The server admits a connection once it has read the client's last handshake message,
        # which can come after the client is done: wait until both hold their slots, or a busy
        # machine lets the agent in first and refuses one of them (a CI run did).
        async with asyncio.timeout(10):
            while server.guard.connections < 2:  # noqa: ASYNC110 - polls the server's counter
                await asyncio.sleep(0.05)
        async with running_agent(cell_pki.agent_files("l3"), "l3", cell.port):
            async with asyncio.timeout(10):
                while server.guard.refused == 0:  # noqa: ASYNC110 - polls the server's counter
                    await asyncio.sleep(0.05)
            assert "l3" not in cell.hub.connected()
            for _, writer in held:
                writer.close()
            await cell.wait_connected("l3", within=15.0)


async def test_a_flood_of_bad_clients_does_not_stop_a_good_agent(cell_pki: Pki) -> None:
    limits = ConnectionLimits(handshake_timeout=1.0, first_data_timeout=1.0, max_connections=64)
    no_cert = tls.client_context(None, ca=cell_pki.server.ca)
    async with running_cell(cell_pki, limits=limits) as cell:
        stop = asyncio.Event()

        async def silent() -> None:  # opens TCP, says nothing, reconnects when dropped
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", cell.port)
                    await _closed_by_server(reader, 30.0)
                    writer.close()

        async def garbage() -> None:  # TLS without a certificate, then junk
            while not stop.is_set():
                with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                    reader, writer = await _tls_connect(cell.port, no_cert)
                    writer.write(b"GET / HTTP/1.1\r\n\r\n" * 50)
                    await _closed_by_server(reader, 30.0)
                    writer.close()
                await asyncio.sleep(0.01)

        flood = [asyncio.create_task(silent()) for _ in range(150)]
        flood += [asyncio.create_task(garbage()) for _ in range(20)]
        await asyncio.sleep(1.5)
        try:
            async with running_agent(cell_pki.agent_files("l4"), "l4", cell.port) as agent:
                await cell.wait_connected("l4", within=20.0)
                async with asyncio.timeout(20):
                    while len(agent.rtts) < 10:  # noqa: ASYNC110 - polls the agent's counter
                        await asyncio.sleep(0.05)
                assert max(agent.rtts) < 2.0
        finally:
            stop.set()
            for task in flood:
                task.cancel()
            await asyncio.gather(*flood, return_exceptions=True)


@contextlib.asynccontextmanager
async def limited_webhook(cell_pki: Pki, limits: ConnectionLimits) -> AsyncIterator[RegistrationServer]:
    app = registration_app(
        token_store=InMemoryTokenStore(),
        signer=cell_pki.ca,
        payload=PayloadSettings(grpc_endpoint="127.0.0.1:1", image="lattice:test"),
    )
    context = tls.server_context(cell_pki.server, require_client_cert=False, alpn=tls.HTTP1_ALPN)
    server = RegistrationServer(app, context, limits=limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_slow_webhook_client_is_cut_off_and_others_are_served(cell_pki: Pki) -> None:
    limits = ConnectionLimits(first_data_timeout=1.0, max_lifetime=1.5, max_per_client=4)
    client_context = tls.client_context(None, ca=cell_pki.server.ca, alpn=tls.HTTP1_ALPN)
    async with limited_webhook(cell_pki, limits) as server:
        reader, writer = await _tls_connect(server.port, client_context)

        async def trickle() -> None:  # slowloris: a header byte every 0.2 s, never finishing
            for byte in b"POST /api/clusters/register HTTP/1.1\r\nHost: cell\r\nX-Slow: " + b"a" * 1000:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)

        trickling = asyncio.create_task(trickle())
        try:
            assert await _closed_by_server(reader, 5.0)
        finally:
            trickling.cancel()
            writer.close()
        assert server.guard.expired == 1

        held = [await _tls_connect(server.port, client_context) for _ in range(4)]
        fifth_reader, fifth_writer = await _tls_connect(server.port, client_context)
        assert await _closed_by_server(fifth_reader, 5.0)  # over max_per_client
        assert server.guard.refused == 1
        fifth_writer.close()
        for _, writer in held:
            writer.close()

        async with httpx.AsyncClient(verify=client_context, timeout=10) as http:
            response = await http.post(
                f"https://127.0.0.1:{server.port}/api/clusters/register",
                json={"clusterName": "w1", "csr": "x"},
                headers={"Authorization": "Bearer t"},
            )
        assert response.status_code == 400  # served: a real answer naming the field
        assert response.json()["field"] == "csr"


async def _handshake_refused(port: int, context: ssl.SSLContext) -> bool:
    """True when the server closes the connection before a TLS session exists."""
    try:
        _, writer = await _tls_connect(port, context)
    except (ConnectionError, ssl.SSLError):
        return True
    writer.close()
    return False


async def test_an_address_that_opens_connections_too_fast_is_refused_before_tls(cell_pki: Pki) -> None:
    limits = ConnectionLimits(handshake_rate_per_client=0.01, handshake_burst_per_client=3)
    client_context = tls.client_context(None, ca=cell_pki.server.ca, alpn=tls.HTTP1_ALPN)
    async with limited_webhook(cell_pki, limits) as server:
        outcomes = [await _handshake_refused(server.port, client_context) for _ in range(5)]
        assert outcomes == [False, False, False, True, True]  # the burst, then one per 100 s
        assert server.guard.rate_limited == 2
        assert server.guard.handshakes == 0


async def test_handshakes_over_the_limit_are_refused_and_the_agent_gets_in_when_they_end(
    cell_pki: Pki,
) -> None:
    limits = ConnectionLimits(max_handshakes=2, handshake_timeout=60.0)
    async with running_cell(cell_pki, limits=limits) as cell:
        server = cell.server.server
        assert server is not None
        silent = [await asyncio.open_connection("127.0.0.1", cell.port) for _ in range(2)]
        async with asyncio.timeout(10):
            while server.guard.handshakes < 2:  # noqa: ASYNC110 - polls the server's counter
                await asyncio.sleep(0.05)
        async with running_agent(cell_pki.agent_files("l5"), "l5", cell.port):
            async with asyncio.timeout(10):
                while server.guard.rate_limited == 0:  # noqa: ASYNC110 - polls the server's counter
                    await asyncio.sleep(0.05)
            assert "l5" not in cell.hub.connected()
            for _, writer in silent:  # the silent handshakes end; their slots free
                writer.close()
            await cell.wait_connected("l5", within=30.0)
        async with asyncio.timeout(10):
            while server.guard.handshakes:  # noqa: ASYNC110 - polls the server's counter
                await asyncio.sleep(0.05)
        assert server.guard.handshake_failed == 2
