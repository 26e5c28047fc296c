"""YAML in and out for the CLI: multi-document reading that remembers line numbers, and
deterministic dumping (block style, literal blocks for multi-line strings)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

from attrs import frozen
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.representer import RoundTripRepresenter

from lattice.domain.errors import PathSegment


@frozen
class Document:
    data: Any  # plain-ish data (ruamel's CommentedMap/Seq are dict/list subclasses)
    line: int  # 1-based line where the document starts


@frozen
class YamlError:
    line: int
    reason: str


def load_documents(text: str) -> list[Document] | YamlError:
    yaml = YAML(typ="rt")
    try:
        docs = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        return YamlError(line, f"invalid YAML: {exc.problem or exc.context}")
    out: list[Document] = []
    for doc in docs:
        if doc is None:
            continue
        line = doc.lc.line + 1 if isinstance(doc, (CommentedMap, CommentedSeq)) else 1
        out.append(Document(data=doc, line=line))
    return out


def line_of(doc: Document, path: Sequence[PathSegment]) -> int:
    """Best line for a field path: the deepest node of ``path`` that exists in the document."""
    node = doc.data
    line = doc.line
    for segment in path:
        if isinstance(node, CommentedMap) and isinstance(segment, str) and segment in node:
            line = node.lc.key(segment)[0] + 1
            node = node[segment]
        elif isinstance(node, CommentedSeq) and isinstance(segment, int) and 0 <= segment < len(node):
            line = node.lc.item(segment)[0] + 1
            node = node[segment]
        else:
            break
    return line


def to_plain(value: Any) -> Any:
    """ruamel containers and scalars → dict/list/str/int/bool/float/None."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


class _Representer(RoundTripRepresenter):
    pass


def _represent_str(representer: RoundTripRepresenter, data: str) -> Any:
    style = "|" if "\n" in data else None
    return representer.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Representer.add_representer(str, _represent_str)


def dump_all(objects: Iterable[Any]) -> str:
    yaml = YAML(typ="rt")
    yaml.Representer = _Representer
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=2, offset=0)
    buffer = io.StringIO()
    yaml.dump_all(list(objects), buffer)
    return buffer.getvalue()
