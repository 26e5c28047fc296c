"""The kubelet stand-in's config and status documents: round trips, and every problem named."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import local_kubelet as lk

TEXT = st.text(min_size=1, max_size=20)


@given(
    node=TEXT,
    version=TEXT,
    labels=st.dictionaries(TEXT, st.text(max_size=10), max_size=3),
    heartbeat=st.floats(min_value=0.1, max_value=600),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_config_round_trips(
    node: str, version: str, labels: dict[str, str], heartbeat: float, port: int | None
) -> None:
    control_plane = (
        None if port is None else lk.StaticControlPlane(dir="/m/cp", pki_dir="/m/pki", apiserver_port=port)
    )
    config = lk.KubeletConfig(
        node=node,
        provider_id=f"local://c/{node}",
        version=version,
        kubeconfig="/m/kubelet.conf",
        labels=labels,
        heartbeat_seconds=heartbeat,
        control_plane=control_plane,
    )
    assert lk.parse_config(lk.dump_config(config)) == config


def test_config_defaults() -> None:
    config = lk.parse_config(
        json.dumps({"node": "n", "providerID": "local://c/n", "version": "v1.36.3", "kubeconfig": "k"})
    )
    assert config.labels == {}
    assert config.heartbeat_seconds == 10.0
    assert config.control_plane is None


def test_config_errors_are_all_named() -> None:
    bad = {
        "node": "",
        "version": 3,
        "kubeconfig": "k",
        "labels": {"a": 1},
        "heartbeatSeconds": True,
        "controlPlane": {"dir": "d", "apiserverPort": 70000},
    }
    with pytest.raises(lk.KubeletFileError) as err:
        lk.parse_config(json.dumps(bad))
    message = str(err.value)
    for field in (
        "node:",
        "providerID:",
        "version:",
        "labels:",
        "heartbeatSeconds:",
        "controlPlane.pkiDir:",
        "controlPlane.apiserverPort:",
    ):
        assert field in message
    assert "kubeconfig:" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "not JSON"),
        ("[]", "a JSON object is required"),
        ('{"controlPlane": []}', "controlPlane: an object is required"),
        ('{"heartbeatSeconds": -1}', "heartbeatSeconds: a positive number"),
    ],
)
def test_malformed_config(text: str, expected: str) -> None:
    with pytest.raises(lk.KubeletFileError, match=expected):
        lk.parse_config(text)


@pytest.mark.parametrize("phase", list(lk.Phase))
def test_status_round_trips(phase: lk.Phase) -> None:
    status = lk.KubeletStatus(phase=phase, message="m", admin_kubeconfig="/a", node_uid="u")
    assert lk.parse_status(lk.dump_status(status)) == status


def test_status_errors_are_named() -> None:
    with pytest.raises(lk.KubeletFileError) as err:
        lk.parse_status(json.dumps({"phase": "Sleeping", "message": 1, "nodeUID": None}))
    message = str(err.value)
    assert "phase: one of Starting, ControlPlaneReady, NodeRegistered, Failed" in message
    assert "message: a string is required" in message
    assert "nodeUID: a string is required" in message
    assert lk.parse_status('{"phase": "Starting"}') == lk.KubeletStatus(phase=lk.Phase.STARTING)


@given(
    state=st.one_of(st.none(), st.sampled_from(lk.MachineState)),
    pid=st.one_of(st.none(), st.integers(1, 2**22)),
    message=st.text(max_size=30),
    control_plane=st.booleans(),
)
def test_machine_record_round_trips(
    state: lk.MachineState | None, pid: int | None, message: str, control_plane: bool
) -> None:
    record = lk.MachineRecord(state=state, pid=pid, message=message, control_plane=control_plane)
    assert lk.parse_record(lk.dump_record(record)) == record


def test_machine_record_reads_what_the_host_wrote_before() -> None:
    """The keys (and a record without a pid: a boot that failed before its kubelet started)."""
    written = json.dumps({"controlPlane": True, "message": "", "pid": 42, "state": "booted"}, sort_keys=True)
    assert lk.parse_record(written) == lk.MachineRecord(lk.MachineState.BOOTED, 42, "", True)
    failed = lk.parse_record('{"state": "failed", "message": "no"}')
    assert failed == lk.MachineRecord(lk.MachineState.FAILED, None, "no", False)


def test_machine_record_errors_are_all_named() -> None:
    with pytest.raises(lk.KubeletFileError) as err:
        lk.parse_record('{"state": "dozing", "pid": true, "message": 3, "controlPlane": "yes"}')
    text = str(err.value)
    assert text.startswith("machine.json: ")
    for field in ("state: one of booting, booted, failed", "pid: a positive", "message:", "controlPlane:"):
        assert field in text
    with pytest.raises(lk.KubeletFileError, match="not JSON"):
        lk.parse_record("{")
