"""Fixtures shared by every test directory, and the order the test files run in."""

from __future__ import annotations

import pytest

# tests.fuzz.plugin: the fuzz suite's hypothesis profiles and its cases-per-target summary
# (loaded here so that --hypothesis-profile=long works from any path, and under pytest-xdist).
pytest_plugins = ("lattice.testing.fixtures", "tests.fuzz.plugin")

HEAVIEST_FIRST = ("e2e", "integration", "fuzz", "unit")
"""Test directories by how long their files take, longest first."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the long files first. scripts/test.sh hands whole files to two workers in collection
    order (``--dist loadfile --no-loadscope-reorder``): with the E2E files (minutes each) at the
    start and the unit files (milliseconds each) at the end, the workers finish together.
    pytest-xdist's default order, files with the most tests first, put the E2E files (one to
    three tests each) last, and one worker ran the final ones alone (the run of 2026-12-07:
    its two workers' sums of test durations differed by about 400 s, so one of them sat idle for
    minutes). The sort is stable: within a directory, files and tests keep pytest's order."""

    def rank(item: pytest.Item) -> int:
        parts = item.nodeid.split("/")
        kind = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
        return HEAVIEST_FIRST.index(kind) if kind in HEAVIEST_FIRST else len(HEAVIEST_FIRST)

    items.sort(key=rank)
