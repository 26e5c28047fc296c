"""YAML to and from plain data, safe types only, configured in this one place for the domain and
the adapters: the kubeconfigs and kubeadm documents they write, the multi-document streams they
send (:func:`dump_all`), and the files and streams they read (:func:`load`, :func:`load_all`).
The CLI's reading, which keeps line numbers for its errors, is :mod:`lattice.app.yamlio`.

Parse errors are ruamel's ``YAMLError``; callers say which input failed."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping
from typing import Any

from ruamel.yaml import YAML

__all__ = ["dump", "dump_all", "kubeconfig", "load", "load_all"]


def dump(data: Any) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def dump_all(documents: Iterable[Mapping[str, Any]]) -> str:
    """A multi-document stream in the given key order, each document starting with ``---``."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    yaml.width = 1 << 16
    yaml.explicit_start = True
    out = io.StringIO()
    yaml.dump_all([dict(doc) for doc in documents], out)
    return out.getvalue()


def load(text: str) -> Any:
    """One document (None for an empty one)."""
    return _loader().load(text)


def load_all(text: str) -> list[Any]:
    """Every non-empty document of a stream."""
    return [doc for doc in _loader().load_all(text) if doc is not None]


def _loader() -> YAML:
    return YAML(typ="safe", pure=True)


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
