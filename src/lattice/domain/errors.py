"""Field-level errors that name the offending field and say what to do about it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from attrs import frozen

PathSegment = str | int


@frozen
class FieldError:
    """One problem with one field. ``path`` is in wire (camelCase) names, list items by index."""

    path: tuple[PathSegment, ...]
    reason: str

    @property
    def field(self) -> str:
        return render_path(self.path)

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def render_path(path: Sequence[PathSegment]) -> str:
    """``("spec", "provider", "kubernetes", "certSANs", 1)`` → ``spec.provider.kubernetes.certSANs[1]``.

    A key that would read ambiguously — empty, with a space, a dot, a bracket, a quote or a
    character that does not print — is quoted: ``metadata.annotations["lattice.dev/x"]``.
    """
    out = ""
    for segment in path:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif not _plain(segment):
            out += f"[{json.dumps(segment)}]"
        else:
            out += f".{segment}" if out else segment
    return out or "<root>"


def _plain(key: str) -> bool:
    return bool(key) and all(c.isprintable() and not c.isspace() and c not in '.[]"' for c in key)


class InvalidObject(ValueError):
    """Raised only at the edges (CLI, adapters) to carry a collection of :class:`FieldError`."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))
