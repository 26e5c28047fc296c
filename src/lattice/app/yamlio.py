"""YAML in and out for the CLI: multi-document reading that remembers line numbers, and
deterministic dumping (block style, literal blocks for multi-line strings).

Reading is bounded, so that no input ends in a traceback: a file is at most :data:`MAX_BYTES`,
UTF-8 (or UTF-16/32 announced by a byte-order mark); a document nests at most :data:`MAX_DEPTH`
nodes deep and holds at most :data:`MAX_NODES` nodes, both counted with aliases expanded (the
"billion laughs" is refused, as is an alias used inside its own anchor); and it holds only what
JSON, and so a Kubernetes object, can: maps with scalar keys, lists, strings, numbers, booleans
and null (no ``!!binary``, ``!!set``, ``!!omap``, ``!!python/...`` or local tags). Every refusal
is a :class:`YamlError` with the line and column where the YAML parser gives one.
"""

from __future__ import annotations

import codecs
import io
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer, MaxDepthExceededError
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, StreamMark
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.representer import RoundTripRepresenter

from lattice.domain.errors import PathSegment

# A LatticeCluster is an etcd value (at most 1.5 MiB); a file of them is read whole, and the
# pure-Python YAML parser reads about 0.2 MiB/s of such documents: 4 MiB is a long batch.
MAX_BYTES = 4 * 2**20
# Nodes on the way from a document's root to its deepest value (the root is 1). The deepest
# LatticeCluster or LatticeService field is 6 deep; the parser, the constructor and to_plain each
# recurse about twice per level, well within Python's recursion limit of 1000.
MAX_DEPTH = 64
# Nodes in one document once aliases are expanded: what to_plain and the converters will walk.
MAX_NODES = 100_000

_CORE = "tag:yaml.org,2002:"
# Tags whose values are JSON's (timestamps: YAML resolves unquoted dates to them; the schema then
# says "must be a string"); "merge" is the ``<<`` key.
_JSON_TAGS = frozenset(
    _CORE + name for name in ("str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp")
)


@frozen
class Document:
    data: Any  # plain-ish data (ruamel's CommentedMap/Seq are dict/list subclasses)
    line: int  # 1-based line where the document starts


@frozen
class YamlError:
    line: int | None  # 1-based; None: about the file as a whole (it could not be read)
    reason: str
    column: int | None = None  # 1-based

    def located(self, filename: str | Path) -> str:
        """``FILE:LINE:COLUMN: reason`` (as much of the location as is known)."""
        where = "".join(f":{n}" for n in (self.line, self.column) if n is not None)
        return f"{filename}{where}: {self.reason}"


def read_documents(filename: str | Path) -> list[Document] | YamlError:
    """Read, decode and load a file (``-``: standard input)."""
    text = read_text(filename)
    if isinstance(text, YamlError):
        return text
    return load_documents(text)


def read_text(filename: str | Path) -> str | YamlError:
    """A file's text, at most :data:`MAX_BYTES` of it, decoded as YAML says (:func:`decode`)."""
    try:
        data = _read_stdin() if str(filename) == "-" else _read_file(Path(filename))
    except OSError as exc:
        return YamlError(None, f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_BYTES:
        return YamlError(None, f"larger than {MAX_BYTES // 2**20} MiB, the limit for an input file")
    return data if isinstance(data, str) else decode(data)


def _read_file(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(MAX_BYTES + 1)


def _read_stdin() -> bytes | str:
    binary = getattr(sys.stdin, "buffer", None)
    if binary is not None:
        data: bytes = binary.read(MAX_BYTES + 1)
        return data
    return sys.stdin.read(MAX_BYTES + 1)  # a text stream that has no bytes under it


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16-LE, whose mark begins it
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode(data: bytes) -> str | YamlError:
    """YAML's encodings: UTF-8, or UTF-16/UTF-32 announced by a byte-order mark."""
    codec = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode(codec)
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        label = codec.removesuffix("-sig").upper()
        return YamlError(line, f"not {label} text: {exc.reason} 0x{data[exc.start]:02x}", column)


def load_documents(text: str) -> list[Document] | YamlError:
    yaml = YAML(typ="rt")
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _JsonConstructor
    yaml.max_depth = MAX_DEPTH  # ruamel's own limit, checked while composing (which recurses)
    docs: list[Document] = []
    try:
        for data in yaml.load_all(text):
            if data is not None:
                docs.append(Document(data=data, line=yaml.composer.document_line))
    except MaxDepthExceededError as exc:
        return _marked(exc.problem_mark, f"invalid YAML: nested deeper than {MAX_DEPTH} levels")
    except MarkedYAMLError as exc:
        return _marked(exc.problem_mark or exc.context_mark, f"invalid YAML: {exc.problem or exc.context}")
    except ReaderError as exc:
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return YamlError(line, f"invalid YAML: character U+{character:04X} is not allowed in YAML", column)
    return docs


def _marked(mark: StreamMark | None, reason: str) -> YamlError:
    if mark is None:
        return YamlError(1, reason)
    return YamlError(mark.line + 1, reason, mark.column + 1)


class _Refused(MarkedYAMLError):
    """Valid YAML that is not a Kubernetes object or that would take too much to build."""

    def __init__(self, problem: str, node: Node) -> None:
        super().__init__(problem=problem, problem_mark=node.start_mark)


def _tag(node: Node) -> str:
    tag = str(node.tag)
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                raise _Refused("a map key must be a string, number, boolean or null", key)
            yield key
            yield value


class _BoundedComposer(Composer):
    """Checks each composed document before anything is built from it: JSON's tags only, and
    :data:`MAX_DEPTH` and :data:`MAX_NODES` with aliases expanded, without recursing."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # legal YAML (the later anchor wins); no stderr noise
        self.document_line = 1  # where the last document composed starts (1-based)

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check(node)
        self.document_line = node.start_mark.line + 1
        return node


def _check(root: Node) -> None:
    measured: dict[int, tuple[int, int]] = {}  # id(node) → (nodes, depth) once expanded
    open_nodes: set[int] = set()  # the current path from the root
    stack: list[tuple[Node, Iterator[Node]]] = []

    def enter(node: Node) -> None:
        if str(node.tag) not in _JSON_TAGS:
            raise _Refused(f"tag {_tag(node)} is not supported in a Kubernetes object", node)
        open_nodes.add(id(node))
        stack.append((node, _children(node)))

    enter(root)
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is not None:
            if id(child) in open_nodes:
                raise _Refused(f"the alias *{child.anchor} is used inside its own anchor", child)
            if id(child) not in measured:
                enter(child)
            continue
        stack.pop()
        open_nodes.discard(id(node))
        sizes = [measured[id(c)] for c in _children(node)]
        nodes = 1 + sum(n for n, _ in sizes)
        depth = 1 + max((d for _, d in sizes), default=0)
        if nodes > MAX_NODES:
            raise _Refused(f"expands to more than {MAX_NODES} values", node)
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded", node)
        measured[id(node)] = (nodes, depth)


class _JsonConstructor(RoundTripConstructor):
    """A value its tag cannot hold (``!!int foo``, an int of 5000 digits, the 13th month) is a
    located error, not the constructor's ValueError."""

    def construct_non_recursive_object(self, node: Node, tag: str | None = None) -> Any:
        try:
            return super().construct_non_recursive_object(node, tag)
        except (ValueError, LookupError, TypeError, ArithmeticError) as exc:
            if isinstance(node, ScalarNode):
                value = str(node.value)
                shown = value if len(value) <= 20 else value[:20] + "..."
                raise _Refused(f"{shown!r} is not a valid {_tag(node)}", node) from exc
            raise _Refused(f"cannot read this {_tag(node)}: {exc}", node) from exc


def line_of(doc: Document, path: Sequence[PathSegment]) -> int:
    """Best line for a field path: the deepest node of ``path`` that exists in the document
    (a key merged in with ``<<`` has no line of its own: its map's line stands)."""
    node = doc.data
    line = doc.line
    for segment in path:
        in_map = isinstance(node, CommentedMap) and isinstance(segment, str) and segment in node
        in_seq = isinstance(node, CommentedSeq) and isinstance(segment, int) and 0 <= segment < len(node)
        if not (in_map or in_seq):
            break
        position = node.lc.data.get(segment)
        if position is not None:
            line = position[0] + 1
        node = node[segment]
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
