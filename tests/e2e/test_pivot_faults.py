"""Pivot robustness and hierarchy on real control planes: faults injected mid-pivot converge to
every object present exactly once on exactly one side; a child that is a cell creates its own
children, whose agents dial their direct parent."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters.binaries import Toolchain
from lattice.app import faults
from lattice.domain import pivot_export
from tests.e2e.conftest import (
    Cell,
    child_kubeconfig,
    kubectl,
    local_cluster,
    machines_dir,
    wait_deleted,
    wait_for,
)
from tests.moved import MOVED_KINDS, move_graph

pytestmark = pytest.mark.e2e


def pivot_step(cell: Cell, name: str) -> str:
    status = cell.lc(name).get("status") or {}
    return str((status.get("pivot") or {}).get("step", ""))


def moved_objects(toolchain: Toolchain, kubeconfig: Path, name: str) -> list[dict[str, Any]]:
    """The objects of ``name``'s move graph in one cluster (none once its namespace is gone)."""
    out = kubectl(toolchain, kubeconfig, "get", MOVED_KINDS, "-n", f"capi-{name}", "-o", "json")
    return move_graph(json.loads(out)["items"], name)


REQUIRED_KINDS = {"Cluster", "KubeadmControlPlane", "MachineDeployment", "Secret"}
BEFORE_DELETION = ("Exporting", "Transferring", "Importing")


def graph_until_step(
    cell: Cell, toolchain: Toolchain, name: str, steps: tuple[str, ...]
) -> tuple[str, list[dict[str, Any]]]:
    """Wait for a pivot step in ``steps``; return it with the source's move graph as last listed
    before the source deletion began.

    Each poll lists the graph first and reads the step second: a pivot step read before
    ``DeletingSource`` proves the graph listed just before it was the exported one, whole.
    Listing after the step was seen (as this test did first) raced the deletion waves when the
    pivot moved on quickly (seen in CI: KubeadmControlPlane and MachineDeployment already gone).
    """
    whole: list[dict[str, Any]] = []
    deadline = time.monotonic() + 240
    seen = ""
    # A tight loop (no 0.5 s pause as in wait_for): the Importing step lasts about a second.
    while time.monotonic() < deadline:
        graph = moved_objects(toolchain, cell.kubeconfig, name)
        seen = pivot_step(cell, name)
        if seen in BEFORE_DELETION and {o["kind"] for o in graph} >= REQUIRED_KINDS:
            whole = graph
        if seen in steps and whole:
            return seen, whole
        time.sleep(0.05)
    tail = "\n".join(cell.log.read_text(errors="replace").splitlines()[-40:]) if cell.log.exists() else ""
    raise AssertionError(f"pivot step {' or '.join(steps)} not seen in 240 s (last: {seen!r})\n{tail}")


def assert_moved_exactly_once(
    cell: Cell, toolchain: Toolchain, name: str, before: list[dict[str, Any]]
) -> None:
    """``before``: the source's objects before its deletion began. Each is now on the child only,
    with the same content hash (spec, data, labels, annotations, owners by kind and name)."""
    assert {o["kind"] for o in before} >= REQUIRED_KINDS
    child = child_kubeconfig(cell, name)
    on_cell = moved_objects(toolchain, cell.kubeconfig, name)
    on_child = moved_objects(toolchain, child, name)
    report = pivot_export.compare_sides(before, on_cell, on_child)
    assert report.moved_exactly_once, f"{report}\n{_changes(before, on_child, report.changed)}"
    ids = [str(pivot_export.object_id(o)) for o in on_child]
    assert len(ids) == len(set(ids)), ids
    assert all(not o["spec"].get("paused") for o in on_child if o["kind"] == "Cluster")


def _changes(before: list[dict[str, Any]], after: list[dict[str, Any]], ids: tuple[str, ...]) -> str:
    """For each object in ``ids``: its labels, annotations and spec before and after, where they differ."""

    def by_id(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {str(pivot_export.object_id(o)): o for o in objects}

    old, new = by_id(before), by_id(after)
    lines = []
    for oid in ids:
        for part in ("labels", "annotations", "spec"):
            was = old[oid].get(part, old[oid]["metadata"].get(part))
            now = new[oid].get(part, new[oid]["metadata"].get(part))
            if was != now:
                lines.append(
                    f"{oid} {part}: before {json.dumps(was)[:1500]}\n  after {json.dumps(now)[:1500]}"
                )
    return "\n".join(lines)


def test_cell_killed_at_every_pivot_step_then_restarted_converges(cell: Cell, toolchain: Toolchain) -> None:
    """The cell dies at each pivot step in turn (a test-only fault point, lattice.app.faults, so
    the same steps every run), is restarted each time, and the pivot still converges: every
    object of the source's move graph ends on the child exactly once."""
    cell.stop_operator()
    cell.start_operator(faults=faults.POINTS[0])
    cell.control_plane.apply([local_cluster("fault-1", cell.name, workers=1)])
    before: list[dict[str, Any]] = []
    for index, point in enumerate(faults.POINTS):
        if index:
            cell.start_operator(faults=point)
        assert cell.operator is not None
        code = cell.operator.wait(420 if index == 0 else 240)
        log = cell.log.read_text(errors="replace")
        assert code == -signal.SIGKILL, f"the operator exited with {code} before {point}\n{log[-3000:]}"
        assert f"fault injected at {point}" in log
        cell.operator = None
        if index == 0:
            # Exported and paused, and nothing runs that could change it: the graph to move.
            before = moved_objects(toolchain, cell.kubeconfig, "fault-1")
            assert {o["kind"] for o in before} >= REQUIRED_KINDS
        print(f"\ncell killed at {point} (pivot step {pivot_step(cell, 'fault-1')!r})")
    cell.start_operator()
    wait_for(
        lambda: cell.lc("fault-1").get("status", {}).get("phase") == "Ready",
        240,
        "Ready after the last restart",
        cell.log,
    )
    assert_moved_exactly_once(cell, toolchain, "fault-1", before)

    # Deleted, and the cell killed again while it takes the objects back: the restarted cell
    # resumes from status.unpivot and the deletion completes with nothing of fault-1 left.
    cell.kubectl("delete", "lc", "fault-1", "--wait=false")

    def unpivot_step() -> str:
        status = cell.lc("fault-1").get("status") or {}
        return str((status.get("unpivot") or {}).get("step", ""))

    killed_at = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed_at:
        killed_at = unpivot_step()
        time.sleep(0.05)
    assert killed_at, "the unpivot never started"
    assert cell.operator is not None
    os.killpg(cell.operator.pid, signal.SIGKILL)
    cell.operator.wait(30)
    cell.operator = None
    cell.start_operator()
    took = wait_deleted(cell, "fault-1")
    print(
        f"cell killed at unpivot step {killed_at}; the restarted cell finished the deletion in {took:.1f} s"
    )


def _agent_logs_say(cell: Cell, child: str, text: str) -> bool:
    """Whether any agent pod of ``child`` (each restart or new pod of the Deployment) logged ``text``."""
    logs = machines_dir(cell).glob(f"{child}-*/pods/lattice-system_lattice-agent-*/container.log")
    return any(text in log.read_text(errors="replace") for log in logs)


def _arm_agent(toolchain: Toolchain, kubeconfig: Path, point: str | None) -> None:
    """Set (or, with None, drop) the agent Deployment's ``--fault-at`` on the child: the
    Deployment controller and the scheduler replace the pod, which its kubelet stand-in runs."""
    deployment = json.loads(
        kubectl(
            toolchain, kubeconfig, "get", "deployment", "lattice-agent", "-n", "lattice-system", "-o", "json"
        )
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    if "--fault-at" in args:
        at = args.index("--fault-at")
        del args[at : at + 2]
    if point is not None:
        args += ["--fault-at", point]
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": args}]
    kubectl(
        toolchain, kubeconfig, "patch", "deployment", "lattice-agent", "-n", "lattice-system",
        "--type=json", "-p", json.dumps(patch),
    )  # fmt: skip


def test_agent_killed_at_each_import_step_converges(cell: Cell, toolchain: Toolchain) -> None:
    """The child's agent dies at each step of the import in turn (test-only fault points armed
    through the cell: ``--fault-at`` in the agent's Deployment), and the pivot still converges:
    every object of the source's move graph ends on the child exactly once."""
    cell.stop_operator()
    cell.start_operator(agent_faults=f"fault-2={faults.AGENT_POINTS[0]}")
    try:
        cell.control_plane.apply([local_cluster("fault-2", cell.name, workers=1)])
        _, before = graph_until_step(cell, toolchain, "fault-2", ("Importing",))
        kubeconfig = child_kubeconfig(cell, "fault-2")
        for index, point in enumerate(faults.AGENT_POINTS):
            if index:
                _arm_agent(toolchain, kubeconfig, point)
            wait_for(
                lambda point=point: _agent_logs_say(cell, "fault-2", f"fault injected at {point}"),
                240,
                f"the agent killed at {point}",
                cell.log,
            )
            assert pivot_step(cell, "fault-2") in BEFORE_DELETION  # the cell waits for the agent
            print(f"\nagent killed at {point}")
        _arm_agent(toolchain, kubeconfig, None)
        wait_for(lambda: cell.lc("fault-2").get("status", {}).get("phase") == "Ready", 240, "Ready", cell.log)
        assert_moved_exactly_once(cell, toolchain, "fault-2", before)
    finally:
        cell.stop_operator()
        cell.start_operator()
