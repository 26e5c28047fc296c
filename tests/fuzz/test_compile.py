"""Fuzz target ``compile``: documents and raw bytes through ``lattice compile``'s whole code path.

Invariant: exit code 0 with YAML on stdout, or exit code 1 with nothing on stdout and one
located line per problem (``FILE[:LINE[:COLUMN]]: reason``, printable, bounded) followed by the
count; never an exception.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.app import cli, yamlio
from lattice.app.cmd_compile import MAX_LINE
from tests.fuzz.plugin import fuzz
from tests.fuzz.strategies import cluster_documents, json_values, service_documents

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "clusters").glob("*.yaml"))
SUMMARY = re.compile(r"^lattice compile: (\d+) error\(s\); nothing written$")
# YAML's indicators and structures, for text that is almost YAML.
TOKENS = [
    "\n", "\n  ", "\n    ", "- ", ": ", "? ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ", "*b", "<<: ",
    "!!int ", "!!str ", "!!binary ", "!!set ", "!!omap ", "!local ", "!!python/object:os.system ",
    "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "'", '"', "|\n", ">-\n", "#", "\t",
    "apiVersion: lattice.dev/v1alpha1", "kind: LatticeCluster", "metadata:", "name: c1", "spec:",
    "provider:", "type: docker", "kubernetes:", "version: 1.35.0", "nodes:", "controlPlane: 1",
    "workers: 2", "cellRef: mgmt", "parentConfig:", "host: 10.0.0.1", "1e999", "0x1F", ".nan",
    "999999999999999999999", "2001-13-45", "\ufeff", "\x00", "\x85", "\u2028", "\ud800", "é",
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile")


def compile_files(paths: list[Path], extra: list[str]) -> tuple[int, str, str]:
    args = cli.build_parser().parse_args(["compile", *extra, *map(str, paths)])
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, like sys.stdout
    err = io.StringIO()
    rc = args.func(args, out=out, err=err)
    out.flush()
    assert isinstance(out.buffer, io.BytesIO)
    return rc, out.buffer.getvalue().decode("utf-8"), err.getvalue()


def check(paths: list[Path], extra: list[str]) -> None:
    rc, out, err = compile_files(paths, extra)
    lines = err.splitlines()
    if rc == 0:
        output_dir = next((a.partition("=")[2] for a in extra if a.startswith("--output-dir=")), None)
        if output_dir is None:
            loaded = yamlio.load_documents(out)
            assert isinstance(loaded, list), loaded
            assert loaded, "exit code 0 with nothing compiled"
        else:
            assert out == ""
            assert all(line.startswith("wrote ") for line in lines), err
        return
    assert rc == 1, (rc, err)
    assert out == "", "stdout written although compile failed"
    summary = SUMMARY.match(lines[-1]) if lines else None
    if summary is None:  # the one line of an output directory that cannot be written
        assert len(lines) == 1, err
        assert ": cannot write: " in lines[0], err
        return
    assert int(summary.group(1)) == len(lines) - 1, err
    prefixes = [re.escape(str(p)) for p in paths] + ["--cell-host"]
    located = re.compile(rf"^(?:{'|'.join(prefixes)})(?::\d+(?::\d+)?)?: \S")
    for line in lines[:-1]:
        assert located.match(line), f"not a located error: {line!r}"
        assert line.isprintable(), f"not printable: {line!r}"
        assert len(line) <= len(str(max(paths, key=lambda p: len(str(p))))) + MAX_LINE + 40, line


def _yaml(docs: list[Any]) -> str:
    return yamlio.dump_all(docs)


def _json(docs: list[Any]) -> str:
    return "".join(f"---\n{json.dumps(doc)}\n" for doc in docs)


documents = st.one_of(cluster_documents(), service_documents(), json_values)
flags = st.lists(
    st.one_of(
        st.just("--workload"),
        st.just("--cell-host=cell.example.com:8443"),
        st.sampled_from(
            ["cell.example.com", "10.0.0.1:443", "[::1]:8443", "c:http", ":", "a:b:c", "", "c:0"]
        ).map(lambda value: f"--cell-host={value}"),
        st.just("--output-dir=OUT"),
    ),
    max_size=2,
    unique=True,
)


def _flags(chosen: list[str], workdir: Path) -> list[str]:
    return [f"--output-dir={workdir / 'out'}" if f == "--output-dir=OUT" else f for f in chosen]


@given(
    batches=st.lists(st.lists(documents, min_size=0, max_size=3), min_size=1, max_size=2),
    encoding=st.sampled_from([_yaml, _json]),
    chosen=flags,
)
@fuzz("compile.documents", examples=100)
def test_documents(workdir: Path, batches: list[list[Any]], encoding: Any, chosen: list[str]) -> None:
    paths = []
    for index, docs in enumerate(batches):
        path = workdir / f"in{index}.yaml"
        path.write_text(encoding(docs), encoding="utf-8", errors="surrogatepass")
        paths.append(path)
    check(paths, _flags(chosen, workdir))


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a few bytes replaced, inserted or deleted, or cut short."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            where = draw(st.integers(0, len(out)))
            action = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
            byte = draw(st.integers(0, 255))
            if action == "replace" and where < len(out):
                out[where] = byte
            elif action == "insert":
                out.insert(where, byte)
            elif action == "delete" and where < len(out):
                del out[where]
            elif action == "cut":
                del out[where:]
        return bytes(out)

    return mutate()


def _raw() -> Iterator[st.SearchStrategy[bytes]]:
    yield st.binary(max_size=512)
    yield st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
    token_soup = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)
    yield token_soup.map(lambda t: t.encode("utf-8", "surrogatepass"))
    yield token_soup.map(lambda t: t.encode("utf-16", "surrogatepass"))
    for example in EXAMPLES:
        yield _mutations(example.read_bytes())


@given(data=st.one_of(list(_raw())), chosen=flags)
@fuzz("compile.raw", examples=200)
def test_raw_bytes(workdir: Path, data: bytes, chosen: list[str]) -> None:
    path = workdir / "raw.yaml"
    path.write_bytes(data)
    check([path], _flags(chosen, workdir))
