"""YAML text from plain data (block style, safe types only): one writer for kubeconfigs and the
kubeadm configuration documents the domain and adapters produce."""

from __future__ import annotations

import base64
import io
from typing import Any

from ruamel.yaml import YAML

__all__ = ["dump", "kubeconfig"]


def dump(data: Any) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def kubeconfig(name: str, *, url: str, ca: bytes, cert: bytes, key: bytes, user: str) -> str:
    """A kubeconfig with one cluster, one client-certificate user and one current context."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": url, "certificate-authority-data": b64(ca)}}],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
            "current-context": name,
        }
    )
