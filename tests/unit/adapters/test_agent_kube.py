"""The agent reads manifest streams as YAML, and JSON fast (a cell's CRD list is megabytes)."""

from __future__ import annotations

import json

import pytest

from lattice.adapters.agent_kube import parse_manifests
from lattice.ports.agent import ExecutionError


def test_yaml_and_json_streams_and_lists_flattened() -> None:
    yaml_stream = b"apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\nkind: ConfigMap\n"
    items = [{"kind": "Secret", "metadata": {"name": "s"}}, {"kind": "Secret", "metadata": {"name": "t"}}]
    json_stream = b"  " + json.dumps({"apiVersion": "v1", "kind": "List", "items": items}).encode()
    parsed = parse_manifests([yaml_stream, json_stream])
    assert [o["kind"] for o in parsed] == ["Namespace", "ConfigMap", "Secret", "Secret"]


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b'{"kind": ', "manifest stream 0 is not valid YAML"),
        (b"- a\n- b\n", "manifest stream 0 holds a non-object document"),
        (b'{"apiVersion": "v1"}', "manifest stream 0 holds a non-object document"),
    ],
)
def test_bad_streams_are_named(stream: bytes, message: str) -> None:
    with pytest.raises(ExecutionError, match=message):
        parse_manifests([stream])
