"""The connection counters and limits shared by the cell's gRPC server and webhook."""

from __future__ import annotations

import pytest

from lattice.adapters.conn_limits import ConnectionGuard, ConnectionLimits


def test_slots_are_taken_per_client_and_overall_and_given_back() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=3, max_per_client=2), "test")
    assert guard.admit("a") is None
    assert guard.admit("a") is None
    assert guard.admit("a") == "a already has 2 connections open (the limit)"
    assert guard.admit("b") is None
    assert guard.admit("c") == "3 connections already open (the limit)"
    guard.release("a")
    assert guard.admit("c") is None
    for client in ("a", "b", "c"):
        guard.release(client)
    assert guard.connections == 0
    assert dict(guard.per_client) == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"handshake_timeout": 0},
        {"first_data_timeout": -1},
        {"max_lifetime": 0},
        {"max_connections": 0},
        {"max_per_client": 0},
    ],
)
def test_limits_that_would_refuse_everything_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ConnectionLimits(**kwargs)  # type: ignore[arg-type]
