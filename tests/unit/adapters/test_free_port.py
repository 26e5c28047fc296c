"""free_port hands out listening ports below the kernel's ephemeral range, where no outgoing
connection can take them before their server binds (a CI flake: an operator's health port,
chosen from the ephemeral range, was in use by the time the restarted operator bound it)."""

from __future__ import annotations

import socket
from pathlib import Path

from lattice.adapters import controlplane
from lattice.adapters.controlplane import LISTEN_PORTS_FROM, free_port, listening_port_range


def test_the_range_ends_below_the_ephemeral_one(tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    assert listening_port_range(ranges) == (LISTEN_PORTS_FROM, 32767)
    ranges.write_text("10500 60999\n")
    assert listening_port_range(ranges) is None  # too narrow: the kernel picks
    ranges.write_text("garbage\n")
    assert listening_port_range(ranges) is None
    assert listening_port_range(tmp_path / "missing") is None


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    span = listening_port_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        if span is not None:
            assert span[0] <= port <= span[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((controlplane.LOOPBACK, port))


def test_a_taken_port_is_skipped() -> None:
    span = listening_port_range()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind((controlplane.LOOPBACK, 0 if span is None else span[0]))
        held.listen()
        taken = held.getsockname()[1]
        assert all(free_port() != taken for _ in range(200))
