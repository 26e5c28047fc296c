"""Test-only fault points: crash on purpose at a named step, every run.

With ``LATTICE_FAULT_AT=<point>[,<point>...]`` in its environment, a process that reaches one of
those points logs it and kills its own process group with SIGKILL: what a crash, an OOM kill or
a node loss does, but at a chosen step instead of wherever a poll happens to see it. Without the
variable (always, outside tests) :func:`hit` does nothing.

The points (:data:`POINTS`) are the cell's pivot steps, in order (``tests/e2e/test_pivot_faults.py``
kills the cell at each in turn and restarts it):

* ``pivot.exported`` - the source is exported and paused, step still Exporting;
* ``pivot.transferring`` - step Transferring recorded;
* ``pivot.importing`` - step Importing recorded, the command not sent yet;
* ``pivot.imported`` - the agent imported (its objects and the cluster's own LatticeCluster with
  its status), step Importing still recorded: the gap before PivotComplete;
* ``pivot.deleting_source`` - step DeletingSource recorded, nothing deleted yet;
* ``pivot.deleted`` - the source is deleted, step Complete not recorded yet.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

ENV = "LATTICE_FAULT_AT"
POINTS = (
    "pivot.exported",
    "pivot.transferring",
    "pivot.importing",
    "pivot.imported",
    "pivot.deleting_source",
    "pivot.deleted",
)


def armed(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The points armed in ``environ`` (default: this process's); unknown names are refused."""
    text = (os.environ if environ is None else environ).get(ENV, "")
    wanted = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(wanted - set(POINTS))
    if unknown:
        raise ValueError(f"{ENV}: unknown fault points {unknown}; known: {', '.join(POINTS)}")
    return wanted


def hit(point: str) -> None:
    """Kill this process group if ``point`` is armed."""
    if point not in armed():
        return
    log.error("fault injected at %s (%s): killing this process group", point, ENV)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)
