"""Strategies shared by the fuzz targets: JSON values, hostile text, and documents built from the
real CRD schemas that are *structured but wrong* (wrong types, missing and extra fields,
out-of-range numbers, strings that break patterns, odd unicode), plus the valid documents of
tests/unit/strategies.py so that the success paths are exercised as well."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from lattice.domain import crds
from tests.unit.strategies import cluster_docs, names

# Text that tends to break things: control characters, surrogates, line and paragraph
# separators, BOMs, right-to-left marks, combining marks, astral characters, YAML indicators.
ODD_CHARACTERS = (
    "\x00\x07\x1b\x7f\x85\xa0\u200b\u200e\u202e\u2028\u2029\ufeff\ufffd\ud800\udfff"
    "\U0001f600\u0301\t\r\n :-?[]{}#&*!|>'\"%@`,"
)
odd_text = st.text(st.sampled_from(ODD_CHARACTERS), max_size=12)
weird_strings = st.one_of(
    st.text(max_size=30),
    odd_text,
    st.sampled_from(
        [
            "",
            " ",
            "null",
            "~",
            "true",
            "no",
            "0x1F",
            "1e999",
            ".nan",
            "-.inf",
            "2001-12-14",
            "1.35",
            "v1.35.0",
            "1.35.0-rc.1+build",
            "999999999999999999999999",
            "a" * 64,
            "a" * 300,
            "Bad_Name",
            "..",
            "../../etc/passwd",
            "*",
            "-",
            "0.0.0.0/0",
            "::1",
            "fe80::1%eth0",
            "[::1]:443",
            "10.0.0.1/33",
            "300.1.1.1",
            "ssh-rsa AAAA",
            "ssh-ed25519 AAAA",
        ]
    ),
)
weird_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 2**31, 2**31 - 1, -(2**31), 2**63, 10**30, 65536, 65535]),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_scalars = st.one_of(st.none(), st.booleans(), weird_numbers, weird_strings)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(names, weird_strings), inner, max_size=4),
    ),
    max_leaves=12,
)


def _schema(kind: str) -> dict[str, Any]:
    for crd in crds.all_crds():
        if crd["spec"]["names"]["kind"] == kind:
            schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise LookupError(kind)


CLUSTER_SCHEMA = _schema("LatticeCluster")
SERVICE_SCHEMA = _schema("LatticeService")


@st.composite
def _wrong(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """A value that breaks ``schema``: another JSON type, or the right type out of range."""
    kind = schema.get("type")
    options: list[st.SearchStrategy[Any]] = [json_values]
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None:
            options.append(st.integers(max_value=low - 1))
        if high is not None:
            options.append(st.integers(min_value=high + 1))
        options.append(st.floats())
    if kind == "string":
        options.append(weird_strings)
        if "maxLength" in schema:
            options.append(st.just("x" * (schema["maxLength"] + 1)))
    if kind == "array":
        options.append(st.lists(json_values, min_size=schema.get("maxItems", 3) + 1, max_size=70))
    return draw(st.one_of(options))


@st.composite
def from_schema(draw: st.DrawFn, schema: dict[str, Any], wrongness: int, depth: int = 0) -> Any:
    """A value for ``schema``; each node is wrong with probability ``wrongness`` percent."""
    if draw(st.integers(0, 99)) < wrongness or depth > 8:
        return draw(_wrong(schema))
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return draw(json_values)
    kind = schema.get("type")
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    if kind == "object":
        out: dict[str, Any] = {}
        required = set(schema.get("required", ()))
        for key, sub in schema.get("properties", {}).items():
            if key in required or draw(st.booleans()):
                out[key] = draw(from_schema(sub, wrongness, depth + 1))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in draw(st.lists(st.one_of(names, weird_strings), max_size=3, unique=True)):
                out[key] = draw(from_schema(extra, wrongness, depth + 1))
        if draw(st.integers(0, 99)) < wrongness:  # an unknown field
            out[draw(st.one_of(names, weird_strings))] = draw(json_values)
        if required and draw(st.integers(0, 99)) < wrongness:  # a required field missing
            out.pop(draw(st.sampled_from(sorted(required))), None)
        return out
    if kind == "array":
        items = schema.get("items", {})
        return draw(
            st.lists(from_schema(items, wrongness, depth + 1), max_size=min(schema.get("maxItems", 4), 4))
        )
    if kind == "integer":
        return draw(st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31 - 1)))
    if kind == "number":
        return draw(st.floats(allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "string":
        if "pattern" in schema and draw(st.booleans()):
            return draw(st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= 63))
        return draw(st.one_of(names, weird_strings))
    return draw(json_values)


@st.composite
def cluster_documents(draw: st.DrawFn) -> Any:
    """LatticeCluster documents, from valid to thoroughly wrong."""
    wrongness = draw(st.sampled_from([0, 2, 10, 40]))
    if draw(st.booleans()):
        doc = draw(cluster_docs())
        if wrongness:
            doc = draw(_mutate(doc, wrongness))
        return doc
    doc = draw(from_schema(CLUSTER_SCHEMA, wrongness))
    if isinstance(doc, dict) and draw(st.integers(0, 99)) >= wrongness:
        doc.update({"apiVersion": "lattice.dev/v1alpha1", "kind": "LatticeCluster"})
        doc["metadata"] = {"name": draw(names)}
    return doc


@st.composite
def service_documents(draw: st.DrawFn) -> Any:
    """LatticeService documents, from valid to thoroughly wrong."""
    wrongness = draw(st.sampled_from([0, 2, 10, 40]))
    doc = draw(from_schema(SERVICE_SCHEMA, wrongness))
    if isinstance(doc, dict) and draw(st.integers(0, 99)) >= wrongness:
        doc.update({"apiVersion": "lattice.dev/v1alpha1", "kind": "LatticeService"})
        doc["metadata"] = {"name": draw(names), "namespace": draw(names)}
    return doc


@st.composite
def _mutate(draw: st.DrawFn, value: Any, wrongness: int) -> Any:
    """``value`` (a valid document) with some nodes replaced, removed or added."""
    if draw(st.integers(0, 99)) < wrongness:
        return draw(json_values)
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            if draw(st.integers(0, 99)) >= wrongness // 2:  # else: dropped
                out[key] = draw(_mutate(sub, wrongness))
        if draw(st.integers(0, 99)) < wrongness:
            out[draw(st.one_of(names, weird_strings))] = draw(json_values)
        return out
    if isinstance(value, list):
        return [draw(_mutate(item, wrongness)) for item in value]
    return value
