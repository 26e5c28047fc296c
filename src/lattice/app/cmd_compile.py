"""``lattice compile`` and ``lattice crds``: golden-file review of what Lattice would apply.

``lattice compile FILE...`` reads LatticeCluster documents (multi-document YAML), validates all of
them, and prints the compiled CAPI objects as one YAML stream (or ``-o DIR``: one file per
cluster). Every error is printed as ``FILE:LINE: field.path: reason``; nothing is written for a
batch with an invalid cluster, and the exit code is 1.

A child's registration endpoint comes from its cell: the document in the same batch whose name
is the child's ``cellRef`` and which has ``parentConfig``; or ``--cell-host`` when the cell is
not among the inputs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from attrs import frozen

from lattice.app import yamlio
from lattice.domain import capi, crds, serde, validation
from lattice.domain.errors import FieldError


@frozen
class SourcedCluster:
    filename: str
    document: yamlio.Document
    valid: validation.ValidCluster


@frozen
class Located:
    filename: str
    line: int
    error: FieldError

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.error}"


MAX_LINE = 500


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """One printable line of at most ``limit`` characters (plus the count of those cut): a key
    with a newline in it or a value of a million characters stays one short, readable line."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(shown) - limit} characters more)"


def register(subparsers: Any) -> None:
    compile_parser = subparsers.add_parser(
        "compile",
        help="compile LatticeCluster YAML into Cluster API manifests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compile_parser.add_argument("files", nargs="+", metavar="FILE", help="YAML files ('-' = stdin)")
    compile_parser.add_argument(
        "-o", "--output-dir", type=Path, help="write <cluster>.yaml files here instead of stdout"
    )
    compile_parser.add_argument(
        "--cell-host",
        metavar="HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]",
        help="the cell's endpoint for children whose cell is not among the inputs "
        "(an IPv6 address in brackets: [ADDR]:8443)",
    )
    compile_parser.add_argument(
        "--workload",
        action="store_true",
        help="also print the objects the agent applies inside each new cluster",
    )
    compile_parser.set_defaults(func=run_compile)

    crds_parser = subparsers.add_parser("crds", help="print the Lattice CustomResourceDefinitions")
    crds_parser.set_defaults(func=run_crds)


def run_crds(_: argparse.Namespace, out: TextIO | None = None) -> int:
    (out or sys.stdout).write(yamlio.dump_all(crds.all_crds()))
    return 0


def run_compile(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    clusters: list[SourcedCluster] = []
    problems: list[Located | str] = []
    for filename in args.files:
        loaded = yamlio.read_documents(filename)
        if isinstance(loaded, yamlio.YamlError):
            problems.append(loaded.located(filename))
            continue
        if not loaded:
            problems.append(f"{filename}: no LatticeCluster documents in this file")
        for document in loaded:
            result = _parse(document)
            if isinstance(result, list):
                problems.extend(Located(filename, yamlio.line_of(document, e.path), e) for e in result)
            else:
                clusters.append(SourcedCluster(filename, document, result))

    cell_host = capi.ParentEndpoint.parse(args.cell_host, "--cell-host") if args.cell_host else None
    if isinstance(cell_host, FieldError):
        problems.append(str(cell_host))
        cell_host = None
    contexts: dict[str, capi.CompileContext] = {}
    problems.extend(_duplicates(clusters))
    for item in clusters:
        context = resolve_context(item.valid, [c.valid for c in clusters], cell_host)
        if isinstance(context, FieldError):
            problems.append(Located(item.filename, yamlio.line_of(item.document, context.path), context))
        else:
            contexts[item.valid.name] = context

    if problems:
        for problem in problems:
            err.write(f"{one_line(str(problem))}\n")
        err.write(f"lattice compile: {len(problems)} error(s); nothing written\n")
        return 1

    outputs = [
        (item.valid.name, _objects(item.valid, contexts[item.valid.name], workload=args.workload))
        for item in clusters
    ]
    if args.output_dir is not None:
        try:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            for name, objects in outputs:
                (args.output_dir / f"{name}.yaml").write_text(yamlio.dump_all(objects), encoding="utf-8")
                err.write(f"wrote {args.output_dir / f'{name}.yaml'} ({len(objects)} objects)\n")
        except OSError as exc:
            where = one_line(str(exc.filename or args.output_dir))
            err.write(f"{where}: cannot write: {exc.strerror or exc}\n")
            return 1
    else:
        out.write(yamlio.dump_all([obj for _, objects in outputs for obj in objects]))
    return 0


def _objects(
    valid: validation.ValidCluster, context: capi.CompileContext, *, workload: bool
) -> list[capi.Manifest]:
    objects = list(capi.compile_cluster(valid, context))
    if workload:
        objects.extend(capi.compile_workload_manifests(valid))
    return objects


def _parse(document: yamlio.Document) -> validation.ValidCluster | list[FieldError]:
    cluster = serde.cluster_from_dict(yamlio.to_plain(document.data))
    if isinstance(cluster, list):
        return cluster
    return validation.validate_cluster(cluster)


def _duplicates(clusters: Sequence[SourcedCluster]) -> list[Located]:
    seen: dict[str, SourcedCluster] = {}
    out: list[Located] = []
    for item in clusters:
        first = seen.setdefault(item.valid.name, item)
        if first is not item:
            error = FieldError(
                ("metadata", "name"),
                f"duplicate cluster name {item.valid.name!r} (first at "
                f"{first.filename}:{first.document.line})",
            )
            out.append(Located(item.filename, yamlio.line_of(item.document, error.path), error))
    return out


def resolve_context(
    valid: validation.ValidCluster,
    batch: Sequence[validation.ValidCluster],
    cell_host: capi.ParentEndpoint | None,
) -> capi.CompileContext | FieldError:
    """Find a cluster's cell among the batch (or ``--cell-host``)."""
    cell_ref = valid.spec.cell_ref
    if cell_ref is None:
        return capi.CompileContext(parent=None)
    for other in batch:
        parent_config = other.spec.parent_config
        if other.name == cell_ref and parent_config is not None:
            return capi.CompileContext(parent=capi.ParentEndpoint.of(parent_config))
        if other.name == cell_ref:
            return FieldError(("spec", "cellRef"), f"{cell_ref!r} is not a cell: it has no spec.parentConfig")
    if cell_host is not None:
        return capi.CompileContext(parent=cell_host)
    return FieldError(
        ("spec", "cellRef"),
        f"cell {cell_ref!r} is not among the input documents; add it or pass --cell-host",
    )
