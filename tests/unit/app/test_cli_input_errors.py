"""Malformed input to ``lattice compile`` and ``lattice install -f``: one clear line naming the file
(and the line and column where there is one), the documented exit code, never a traceback."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from lattice.app import cli, installer, yamlio

EXAMPLE = Path(__file__).parents[3] / "examples" / "clusters" / "mgmt-docker.yaml"


def _compile(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    rc = cli.main(["compile", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.err.splitlines()


def _laughs(levels: int) -> str:
    """The billion laughs: each anchor is a list of nine aliases of the previous one."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _alias_chain(length: int) -> str:
    """Each anchor wraps the previous one in a list: shallow as written, deep once expanded."""
    return "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, length))


DEPTH = yamlio.MAX_DEPTH
DEEP_BLOCK = "".join("  " * i + "a:\n" for i in range(1000)) + "  " * 1000 + "1\n"

# (file content, the one error line expected after "<path>")
MALFORMED: list[tuple[bytes, str]] = [
    (b"\x00\xff\xfe", ":1:2: not UTF-8 text: invalid start byte 0xff"),
    (b"a: caf\xe9\n", ":1:7: not UTF-8 text: invalid continuation byte 0xe9"),
    (b"a: 1\nb: \xc3", ":2:4: not UTF-8 text: unexpected end of data 0xc3"),
    (b"a: b\x00c\n", ":1:5: invalid YAML: character U+0000 is not allowed in YAML"),
    (b"a: \x07\n", ":1:4: invalid YAML: character U+0007 is not allowed in YAML"),
    (("[" * 100_000).encode(), f":1:{DEPTH + 1}: invalid YAML: nested deeper than {DEPTH} levels"),
    (
        ("[" * 5000 + "]" * 5000).encode(),
        f":1:{DEPTH + 1}: invalid YAML: nested deeper than {DEPTH} levels",
    ),
    (DEEP_BLOCK.encode(), f":{DEPTH}:{2 * DEPTH - 1}: invalid YAML: nested deeper than {DEPTH} levels"),
    (_laughs(9).encode(), ":6:5: invalid YAML: expands to more than 100000 values"),
    (
        _alias_chain(DEPTH + 10).encode(),
        f":{DEPTH}:{len(str(DEPTH)) + 4}: invalid YAML: nested deeper than {DEPTH} levels "
        "once aliases are expanded",
    ),
    (b"a: &a [*a]\n", ":1:4: invalid YAML: the alias *a is used inside its own anchor"),
    (b"&r {x: *r}\n", ":1:1: invalid YAML: the alias *r is used inside its own anchor"),
    (b"a: !!int foo\n", ":1:4: invalid YAML: 'foo' is not a valid !!int"),
    (b"a: !!bool foo\n", ":1:4: invalid YAML: 'foo' is not a valid !!bool"),
    (b"a: !!int 0b2\n", ":1:4: invalid YAML: '0b2' is not a valid !!int"),
    (b"a: 2001-13-45\n", ":1:4: invalid YAML: '2001-13-45' is not a valid !!timestamp"),
    (b"a: " + b"9" * 5000 + b"\n", ":1:4: invalid YAML: '99999999999999999999...' is not a valid !!int"),
    (b"!!omap [a: 1]\n", ":1:1: invalid YAML: tag !!omap is not supported in a Kubernetes object"),
    (b"!!set {a, b}\n", ":1:1: invalid YAML: tag !!set is not supported in a Kubernetes object"),
    (b"a: !!binary aGVsbG8=\n", ":1:4: invalid YAML: tag !!binary is not supported in a Kubernetes object"),
    (
        b"a: !!python/object:os.system {}\n",
        ":1:4: invalid YAML: tag !!python/object:os.system is not supported in a Kubernetes object",
    ),
    (
        b"kind: !custom LatticeCluster\n",
        ":1:7: invalid YAML: tag !custom is not supported in a Kubernetes object",
    ),
    (b"? [a, b]\n: 1\n", ":1:3: invalid YAML: a map key must be a string, number, boolean or null"),
    (b"a:\n\tb: 1\n", ":2:1: invalid YAML: found character '\\t' that cannot start any token"),
    (b"a: 1\na: 2\n", ':2:1: invalid YAML: found duplicate key "a" with value "2" (original value: "1")'),
    (b"a: *nope\n", ":1:4: invalid YAML: found undefined alias 'nope'"),
    (b"", ": no LatticeCluster documents in this file"),
    (b"# only a comment\n---\n---\n", ": no LatticeCluster documents in this file"),
]


@pytest.mark.parametrize(("content", "expected"), MALFORMED, ids=lambda v: repr(v)[:40])
def test_malformed_file_is_one_located_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "in.yaml"
    path.write_bytes(content)
    rc, lines = _compile([str(path)], capsys)
    assert rc == 1
    assert lines == [f"{path}{expected}", "lattice compile: 1 error(s); nothing written"]


def test_utf16_with_a_byte_order_mark_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "utf16.yaml"
    path.write_bytes(EXAMPLE.read_text().encode("utf-16"))
    rc, lines = _compile([str(path)], capsys)
    assert rc == 0, lines


def test_utf8_byte_order_mark_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.read_bytes())
    rc, lines = _compile([str(path)], capsys)
    assert rc == 0, lines


def test_documents_that_are_not_lattice_clusters_are_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n- 1\n---\nplain\n")
    rc, lines = _compile([str(path)], capsys)
    assert rc == 1
    assert f"{path}:2: kind: must be LatticeCluster, got 'ConfigMap'" in lines
    assert f"{path}:5: <root>: a LatticeCluster must be an object, got list" in lines
    assert f"{path}:7: <root>: a LatticeCluster must be an object, got string" in lines
    assert all(line.startswith(str(path)) for line in lines[:-1])


def test_a_file_without_clusters_is_named_among_good_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    rc, lines = _compile([str(EXAMPLE), str(empty)], capsys)
    assert rc == 1
    assert lines == [
        f"{empty}: no LatticeCluster documents in this file",
        "lattice compile: 1 error(s); nothing written",
    ]


def test_unreadable_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = _compile([str(tmp_path), str(tmp_path / "missing.yaml")], capsys)
    assert rc == 1
    assert lines == [
        f"{tmp_path}: cannot read: Is a directory",
        f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory",
        "lattice compile: 2 error(s); nothing written",
    ]


def test_a_file_larger_than_the_limit_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (yamlio.MAX_BYTES + 1))
    rc, lines = _compile([str(path)], capsys)
    assert rc == 1
    assert lines[0] == f"{path}: larger than 4 MiB, the limit for an input file"


def test_endless_input_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = _compile(["/dev/zero"], capsys)
    assert rc == 1
    assert lines[0] == "/dev/zero: larger than 4 MiB, the limit for an input file"


def test_huge_values_and_odd_keys_stay_one_short_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(f'apiVersion: {"x" * 1_000_000}\n"a\\nb\\u0007": 1\n')
    rc, lines = _compile([str(path)], capsys)
    assert rc == 1
    assert all(len(line) <= 600 for line in lines)
    assert any(
        line.startswith(f"{path}:1: apiVersion: must be lattice.dev/v1alpha1, got 'xxx") for line in lines
    )
    assert any(line.endswith("characters more)") for line in lines)
    assert f'{path}:2: ["a\\nb\\u0007"]: unknown top-level field' in lines


def test_binary_on_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"\x00\xff\xfe"))
    monkeypatch.setattr(sys, "stdin", stdin)
    rc, lines = _compile(["-"], capsys)
    assert rc == 1
    assert lines[0] == "-:1:2: not UTF-8 text: invalid start byte 0xff"


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_unwritable_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out_dir = blocker if kind == "file" else blocker / "out"
    rc, lines = _compile(["-o", str(out_dir), str(EXAMPLE)], capsys)
    assert rc == 1
    reason = "File exists" if kind == "file" else "Not a directory"
    assert lines == [f"{out_dir}: cannot write: {reason}"]


# ------------------------------------------------------------------ lattice install -f


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\xff\xfe", ":1:2: not UTF-8 text: invalid start byte 0xff"),
        (("[" * 100_000).encode(), f":1:{DEPTH + 1}: invalid YAML: nested deeper than {DEPTH} levels"),
        (_laughs(9).encode(), ":6:5: invalid YAML: expands to more than 100000 values"),
        (b"", ": expected one LatticeCluster, found 0 documents"),
        (b"a: [1,\n", ":2:1: invalid YAML"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_install_file_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "mgmt[red].yaml"  # rich markup in a file name is printed, not interpreted
    path.write_bytes(content)
    rc = cli.main(["install", "-f", str(path), "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert err.startswith(f"lattice install: {path}{expected}")
    assert len(err.splitlines()) == 1


def test_install_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"^{tmp_path}: cannot read: Is a directory$"):
        installer.load_cluster(tmp_path)


def test_an_error_in_a_merged_key_is_located_at_its_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "merge.yaml"
    text = (
        EXAMPLE.read_text()
        .replace("  nodes:\n", "  nodes:\n    <<: {controlPlane: 2}\n")
        .replace("    controlPlane: 1\n", "")
    )
    path.write_text(text)
    rc, lines = _compile([str(path)], capsys)
    assert rc == 1
    nodes_line = text.splitlines().index("  nodes:") + 1
    reason = "must be odd so etcd keeps quorum (1, 3, 5, ...), got 2"
    assert lines[0] == f"{path}:{nodes_line}: spec.nodes.controlPlane: {reason}"


def test_documents_start_where_their_first_node_is() -> None:
    loaded = yamlio.load_documents("# a comment\n\nplain\n---\n\n- 1\n--- 3\n")
    assert isinstance(loaded, list)
    assert [(d.data, d.line) for d in loaded] == [("plain", 3), ([1], 6), (3, 7)]


def test_limits_leave_room_below_the_recursion_limit() -> None:
    """A document at the depth limit loads and converts even from deep inside a call stack."""

    def nested(depth: int) -> str:
        return "[" * (depth - 1) + "x" + "]" * (depth - 1)

    def at_stack_depth(frames: int) -> object:
        if frames:
            return at_stack_depth(frames - 1)
        loaded = yamlio.load_documents(nested(yamlio.MAX_DEPTH))
        assert isinstance(loaded, list)
        return yamlio.to_plain(loaded[0].data)

    assert sys.getrecursionlimit() - 400 > 0
    assert at_stack_depth(sys.getrecursionlimit() - 400) is not None
    assert isinstance(yamlio.load_documents(nested(yamlio.MAX_DEPTH + 1)), yamlio.YamlError)
