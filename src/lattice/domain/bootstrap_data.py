"""The bootstrap data the real kubeadm bootstrap provider (CABPK) renders, read the way a node
image's cloud-init reads it, for the local machines that boot from it.

CABPK writes a ``cloud-config`` (``bootstrap/kubeadm/pkg/cloudinit`` of Cluster API): a
``## template: jinja`` header, ``write_files`` (path, content, optional ``encoding`` of
``base64``/``gzip``/``gzip+base64``, ``permissions``, ``owner``, ``append``) and ``runcmd``.
Like CAPD's reference parser, only those two modules are understood, and every problem is
reported at once with the entry it is about. One ``runcmd`` entry is the kubeadm call
(``kubeadm init --config /run/kubeadm/kubeadm.yaml && echo success > …`` or the ``kubeadm join``
equivalent): :func:`kubeadm_step` recognises it so that a machine can replace exactly that
command and run every other one verbatim.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from attrs import frozen
from ruamel.yaml.error import YAMLError

from lattice.domain import yaml_text

__all__ = [
    "BootstrapData",
    "BootstrapDataError",
    "File",
    "KubeadmStep",
    "kubeadm_documents",
    "kubeadm_step",
    "parse_cloud_config",
]

HEADER = "#cloud-config"
_ENCODINGS = ("", "base64", "b64", "gzip", "gz", "gzip+base64", "gz+base64", "gzip+b64", "gz+b64")
_KUBEADM = re.compile(
    r"^\s*kubeadm (?P<phase>init|join) --config (?P<config>\S+)(?P<flags>(?: --?\S+(?: \d+)?)*)\s*"
    r"(?:&& echo success > (?P<success>\S+))?\s*$"
)


class BootstrapDataError(ValueError):
    """Bootstrap data a machine cannot boot from; the message lists every reason."""


@frozen
class File:
    path: str
    content: bytes
    permissions: int
    owner: str
    append: bool


@frozen
class KubeadmStep:
    phase: Literal["init", "join"]
    config_path: str
    success_path: str | None


@frozen
class BootstrapData:
    files: tuple[File, ...]
    commands: tuple[str, ...]

    def file(self, path: str) -> File | None:
        return next((f for f in self.files if f.path == path), None)


def _decode(content: str, encoding: str) -> bytes:
    raw = content.encode()
    if "b64" in encoding or "base64" in encoding:
        raw = base64.b64decode(raw, validate=False)
    if encoding.startswith("gz"):
        raw = gzip.decompress(raw)
    return raw


def _file(index: int, entry: Any, problems: list[str]) -> File | None:
    where = f"write_files[{index}]"
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: not a mapping")
        return None
    path = entry.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        problems.append(f"{where}.path: must be an absolute path, got {path!r}")
        return None
    encoding = str(entry.get("encoding") or "").lower()
    if encoding not in _ENCODINGS:
        problems.append(f"{where}.encoding: unknown encoding {encoding!r} for {path}")
        return None
    permissions_text = str(entry.get("permissions") or "0644")
    try:
        permissions = int(permissions_text, 8)
    except ValueError:
        problems.append(f"{where}.permissions: not an octal mode: {permissions_text!r}")
        return None
    raw_content = entry.get("content")
    if raw_content is not None and not isinstance(raw_content, str):
        # an unquoted scalar that YAML reads as a number or a boolean (base64 such as 31E5):
        # its text is lost, so say so instead of decoding the number's spelling
        problems.append(
            f"{where}.content: must be a string, got {type(raw_content).__name__} {raw_content!r} "
            f"for {path} (quote it)"
        )
        return None
    try:
        content = _decode(raw_content or "", encoding)
    except (binascii.Error, OSError, EOFError, zlib.error) as exc:
        problems.append(f"{where}.content: cannot decode {encoding} content of {path}: {exc}")
        return None
    return File(
        path=path,
        content=content,
        permissions=permissions,
        owner=str(entry.get("owner") or "root:root"),
        append=bool(entry.get("append", False)),
    )


def parse_cloud_config(text: str) -> BootstrapData:
    """The files and commands of a CABPK ``cloud-config``; :class:`BootstrapDataError` lists
    everything wrong with it."""
    lines = text.splitlines()
    if HEADER not in [line.strip() for line in lines[:2]]:
        raise BootstrapDataError(f"not a cloud-config: the first lines carry no {HEADER!r} header")
    try:
        data = yaml_text.load(text)
    except YAMLError as exc:
        raise BootstrapDataError(f"the cloud-config is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise BootstrapDataError("the cloud-config is not a mapping")
    problems: list[str] = []
    unknown = sorted(map(str, set(data) - {"write_files", "runcmd"}))
    if unknown:
        problems.append(f"unsupported cloud-init modules: {', '.join(unknown)}")
    files: list[File] = []
    raw_files = data.get("write_files") or []
    if not isinstance(raw_files, Sequence) or isinstance(raw_files, str):
        problems.append("write_files: not a list")
        raw_files = []
    for index, entry in enumerate(raw_files):
        parsed = _file(index, entry, problems)
        if parsed is not None:
            files.append(parsed)
    commands: list[str] = []
    raw_commands = data.get("runcmd") or []
    if not isinstance(raw_commands, Sequence) or isinstance(raw_commands, str):
        problems.append("runcmd: not a list")
        raw_commands = []
    for index, command in enumerate(raw_commands):
        if isinstance(command, str):
            commands.append(command)
        elif isinstance(command, Sequence) and all(isinstance(part, str) for part in command):
            commands.append(" ".join(_shell_quote(part) for part in command))
        else:
            problems.append(f"runcmd[{index}]: neither a string nor a list of strings")
    if problems:
        raise BootstrapDataError("; ".join(problems))
    return BootstrapData(files=tuple(files), commands=tuple(commands))


def _shell_quote(part: str) -> str:
    if part and re.fullmatch(r"[A-Za-z0-9_./=:@%+-]+", part):
        return part
    return "'" + part.replace("'", "'\"'\"'") + "'"


def kubeadm_step(command: str) -> KubeadmStep | None:
    """The kubeadm call CABPK writes, or ``None`` for any other command."""
    match = _KUBEADM.match(command)
    if match is None:
        return None
    phase: Literal["init", "join"] = "init" if match.group("phase") == "init" else "join"
    return KubeadmStep(phase=phase, config_path=match.group("config"), success_path=match.group("success"))


def kubeadm_documents(config: bytes) -> dict[str, Mapping[str, Any]]:
    """The kubeadm configuration file by kind (``ClusterConfiguration``, ``InitConfiguration``,
    ``JoinConfiguration``)."""
    try:
        docs = [d for d in yaml_text.load_all(config.decode()) if d]
    except (YAMLError, UnicodeDecodeError) as exc:
        raise BootstrapDataError(f"the kubeadm configuration is not valid YAML: {exc}") from exc
    by_kind: dict[str, Mapping[str, Any]] = {}
    for doc in docs:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("kind"), str):
            raise BootstrapDataError("the kubeadm configuration holds a document without a kind")
        by_kind[doc["kind"]] = doc
    return by_kind
