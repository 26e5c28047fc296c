"""Fuzz target ``api_proxy.frames``: what an agent may send the cell's API proxy relay.

Inputs: any sequence of ``ApiProxyFromAgent`` frames (generated from the protobuf descriptor:
any frame kind, any sizes, request ids among the open ones, finished ones and unknown ones)
against a relay with requests open, the consumer taking bodies as they come.

Invariant: :meth:`ProxyRelay.on_frame` never raises; no request ever holds more body bytes than
its window; a request ends at most once (a head, then data, then an end, or a failure with a
status); every violation is counted and cancels only its own request.
"""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from lattice.adapters.api_proxy_cell import ProxyFailed, ProxyRelay
from lattice.domain.api_proxy import ProxyLimits
from lattice.proto.agent.v1 import agent_pb2 as pb
from tests.fuzz.plugin import fuzz
from tests.fuzz.test_agent_wire import messages

WINDOW = 64
IDS = ["r0", "r1", "r2", "unknown", ""]


@st.composite
def frames(draw: st.DrawFn) -> pb.ApiProxyFromAgent:
    frame = draw(messages(pb.ApiProxyFromAgent.DESCRIPTOR))
    assert isinstance(frame, pb.ApiProxyFromAgent)
    frame.request_id = draw(st.sampled_from(IDS))
    if frame.HasField("data") and draw(st.booleans()):
        frame.data = b"x" * draw(st.integers(0, 2 * WINDOW))
    return frame


async def _exercise(sequence: list[pb.ApiProxyFromAgent]) -> None:
    sent: list[pb.CellCommand] = []

    async def send(cluster: str, command: pb.CellCommand) -> None:
        sent.append(command)

    ids = iter(IDS)
    relay = ProxyRelay(send, ProxyLimits(window_bytes=WINDOW, head_timeout=0.01), new_id=lambda: next(ids))
    exchanges = [await relay.open("c", pb.ApiProxyRequest(method="GET", path="/api")) for _ in range(3)]
    for frame in sequence:
        relay.on_frame("c", frame)  # never raises
        for exchange in exchanges:
            queued = sum(len(i) for i in exchange.queue._queue if isinstance(i, bytes))
            assert queued <= WINDOW
            assert exchange.outstanding >= 0
    for exchange in exchanges:
        try:
            await relay.response_head(exchange)
            async with asyncio.timeout(0.01):
                async for _ in relay.body(exchange):
                    pass
        except (ProxyFailed, TimeoutError):
            pass
    await asyncio.sleep(0)  # the cancels of violations are sent by tasks
    assert relay.open_count("c") == sum(not e.finished for e in exchanges) == 0


@given(st.lists(frames(), max_size=20))
@fuzz("api_proxy.frames", examples=300)
def test_any_frames_from_an_agent(sequence: list[pb.ApiProxyFromAgent]) -> None:
    asyncio.run(_exercise(sequence))
