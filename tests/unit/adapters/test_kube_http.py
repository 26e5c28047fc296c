"""Responses of a Kubernetes API server turned into the port's results and errors
(``lattice.adapters.kube_http.decode``; the requests themselves: tests/integration/test_kube_http.py)."""

from __future__ import annotations

import pytest

from lattice.adapters import kube_http
from lattice.ports import kube


def test_a_server_error_keeps_what_the_server_said() -> None:
    """5xx bodies are often plain text, 4xx bodies a metav1.Status, sometimes neither."""
    with pytest.raises(kube.Unavailable, match="etcdserver: request timed out"):
        kube_http.decode(500, b"etcdserver: request timed out\n")
    with pytest.raises(kube.Unavailable, match="storage is"):
        kube_http.decode(429, b'{"kind": "Status", "message": "storage is (re)initializing"}')
    with pytest.raises(kube.Gone, match="too old"):
        kube_http.decode(410, b'{"message": "too old resource version"}')
    with pytest.raises(kube.KubeError, match="HTTP 418: <html>"):
        kube_http.decode(418, b"<html>")
    with pytest.raises(kube.KubeError, match=r"HTTP 405: \[1\]"):
        kube_http.decode(405, b"[1]")  # JSON, not an object
    with pytest.raises(kube.Unavailable, match="HTTP 502"):
        kube_http.decode(502, b"")
    assert kube_http.decode(200, b"") == {}
