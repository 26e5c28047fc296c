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

The agent's points (:data:`AGENT_POINTS`), armed with its ``--fault-at`` flag, which a cell adds
to the agent's Deployment of the clusters named in its own ``LATTICE_AGENT_FAULT_AT``
(``<cluster>=<point>[+<point>...][;...]``) at registration:

* ``agent.import.received`` - a pivot's objects arrived, nothing imported yet;
* ``agent.import.done`` - all imported, the reply to the cell not sent yet.

A killed agent is restarted by its kubelet with the same flag, so the test removes the flag
from the Deployment (``tests/e2e/test_pivot_faults.py``).
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


AGENT_ENV = "LATTICE_AGENT_FAULT_AT"
AGENT_POINTS = ("agent.import.received", "agent.import.done")


def parse(text: str, known: tuple[str, ...] = POINTS, source: str = ENV) -> frozenset[str]:
    """The points named in ``text`` (separated by ``,`` or ``+``); unknown names are refused."""
    wanted = frozenset(part.strip() for part in text.replace("+", ",").split(",") if part.strip())
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown fault points {unknown}; known: {', '.join(known)}")
    return wanted


def armed(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The points armed in ``environ`` (default: this process's); unknown names are refused."""
    return parse((os.environ if environ is None else environ).get(ENV, ""))


def agent_faults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A cell's ``LATTICE_AGENT_FAULT_AT``: the agent points to arm, per cluster."""
    text = (os.environ if environ is None else environ).get(AGENT_ENV, "")
    found: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        cluster, sep, points = entry.partition("=")
        if not sep or not cluster.strip():
            raise ValueError(f"{AGENT_ENV}: {entry!r} is not <cluster>=<point>[+<point>...]")
        parse(points, AGENT_POINTS, AGENT_ENV)
        found[cluster.strip()] = points.strip()
    return found


def hit(point: str, points: frozenset[str] | None = None) -> None:
    """Kill this process group if ``point`` is armed (in ``points``, default this process's
    environment)."""
    if point not in (armed() if points is None else points):
        return
    log.error("fault injected at %s (%s): killing this process group", point, ENV)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)
