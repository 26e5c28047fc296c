"""Commands, replies, agent state and pivot validation."""

from __future__ import annotations

import attrs
import pytest

from lattice.domain import agent

PIVOT = agent.PivotManifests(
    cluster_name="c1",
    capi_namespace="capi-c1",
    pivot_id="p1",
    files=(agent.MoveFile("Cluster_capi-c1_c1.yaml", b"{}"),),
)


@pytest.mark.parametrize(
    ("command", "reply", "ok"),
    [
        (agent.StatusQuery(), agent.StatusReport("x", agent.AgentState.READY), True),
        (agent.StatusQuery(), agent.BootstrapResult("x", True), False),
        (agent.ApplyManifests(()), agent.BootstrapResult("x", True), True),
        (PIVOT, agent.PivotResult("x", "p1", True), True),
        (PIVOT, agent.CommandResult("x", True), False),
        (PIVOT, agent.CommandResult("x", False, "unsupported"), True),
        (agent.SyncResources(()), agent.CommandResult("x", True), True),
    ],
)
def test_answers(command, reply, ok):
    assert agent.answers(command, reply) is ok


def test_failure_replies_have_the_right_type():
    assert agent.failure_reply(agent.ApplyManifests(()), "i", "e") == agent.BootstrapResult("i", False, "e")
    assert agent.failure_reply(PIVOT, "i", "e") == agent.PivotResult("i", "p1", False, "e")
    assert agent.failure_reply(None, "i", "e") == agent.CommandResult("i", False, "e")
    assert agent.failure_reply(agent.StatusQuery(), "i", "e") == agent.CommandResult("i", False, "e")
    assert agent.failure_reply(agent.Unpivot("c1", "ns"), "i", "e") == agent.UnpivotExport("i", False, "e")
    assert agent.failure_reply(agent.UnpivotComplete("c1"), "i", "e") == agent.CommandResult("i", False, "e")
    assert agent.answers(agent.Unpivot("c1", "ns"), agent.UnpivotExport("i", True))
    assert not agent.answers(agent.Unpivot("c1", "ns"), agent.CommandResult("i", True))


H_OK = agent.ClusterHealth(3, 3)
H_BAD = agent.ClusterHealth(2, 3)


@pytest.mark.parametrize(
    ("kwargs", "state"),
    [
        (
            {"self_managed": False, "pivot_running": True, "pivot_failed": True, "health": None},
            agent.AgentState.PIVOTING,
        ),
        (
            {"self_managed": True, "pivot_running": False, "pivot_failed": True, "health": H_OK},
            agent.AgentState.FAILED,
        ),
        (
            {"self_managed": False, "pivot_running": False, "pivot_failed": False, "health": H_OK},
            agent.AgentState.PROVISIONING,
        ),
        (
            {"self_managed": True, "pivot_running": False, "pivot_failed": False, "health": H_BAD},
            agent.AgentState.DEGRADED,
        ),
        (
            {"self_managed": True, "pivot_running": False, "pivot_failed": False, "health": H_OK},
            agent.AgentState.READY,
        ),
        (
            {"self_managed": True, "pivot_running": False, "pivot_failed": False, "health": None},
            agent.AgentState.READY,
        ),
    ],
)
def test_derive_state(kwargs, state):
    assert agent.derive_state(**kwargs) is state


def test_a_valid_pivot_has_no_errors():
    assert list(agent.pivot_errors(PIVOT, "c1")) == []


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"cluster_name": "c2"}, "pivotManifests.clusterName", "belongs to"),
        ({"capi_namespace": ""}, "pivotManifests.capiNamespace", "empty"),
        ({"pivot_id": ""}, "pivotManifests.pivotId", "empty"),
        ({"files": ()}, "pivotManifests.files", "at least one"),
        (
            {"files": (agent.MoveFile("../etc/passwd", b""),)},
            "pivotManifests.files[0].name",
            "plain file name",
        ),
        ({"files": (agent.MoveFile("a/b", b""),)}, "pivotManifests.files[0].name", "plain file name"),
        ({"files": (agent.MoveFile(".hidden", b""),)}, "pivotManifests.files[0].name", "plain file name"),
        ({"files": (agent.MoveFile("..", b""),)}, "pivotManifests.files[0].name", "plain file name"),
        (
            {"files": (agent.MoveFile("a", b""), agent.MoveFile("a", b""))},
            "pivotManifests.files[1].name",
            "twice",
        ),
    ],
)
def test_pivot_errors(change, field, fragment):
    bad = attrs.evolve(PIVOT, **change)
    errors = list(agent.pivot_errors(bad, "c1"))
    assert any(e.field == field and fragment in e.reason for e in errors), errors


def test_too_many_pivot_files():
    many = tuple(agent.MoveFile(f"f{i}", b"") for i in range(agent.MAX_PIVOT_FILES + 1))
    command = agent.PivotManifests("c1", "ns", "p", many)
    assert any("more than" in e.reason for e in agent.pivot_errors(command, "c1"))


def test_unpivot_export_errors_name_the_file():
    good = agent.UnpivotExport("i", True, files=(agent.MoveFile("Cluster_ns_c1.yaml", b"{}"),))
    assert list(agent.unpivot_errors(good)) == []
    empty = list(agent.unpivot_errors(agent.UnpivotExport("i", True)))
    assert [(e.field, e.reason) for e in empty] == [("clusterDeleting.files", "must hold at least one file")]
    bad = agent.UnpivotExport(
        "i",
        True,
        files=(
            agent.MoveFile("../x.yaml", b""),
            agent.MoveFile("a.yaml", b""),
            agent.MoveFile("a.yaml", b""),
        ),
    )
    fields = [e.field for e in agent.unpivot_errors(bad)]
    assert fields == ["clusterDeleting.files[0].name", "clusterDeleting.files[2].name"]


def test_move_file_repr_hides_content():
    assert "secret" not in repr(agent.MoveFile("a", b"secret"))


def test_own_cluster_report_and_what_a_cell_keeps_of_it():
    own = {
        "status": {
            "phase": "Ready",
            "observedGeneration": 3,
            "version": "1.36.4",
            "conditions": [
                {"type": "Ready", "status": "True", "message": ""},
                {"type": "RollingOut", "status": "True", "message": "rolling out v1.36.4: ..."},
            ],
        }
    }
    report = agent.own_cluster_report(own)
    assert report == (
        "LatticeCluster.phase=Ready",
        "LatticeCluster.observedGeneration=3",
        "LatticeCluster.version=1.36.4",
        "LatticeCluster.RollingOut=True: rolling out v1.36.4: ...",
    )
    assert agent.own_cluster_report({}) == ("LatticeCluster.phase=Pending",)
    # A peer's input: only the report's lines, at most 8, each at most 1,024 characters.
    noisy = ("api-unreachable", *(f"LatticeCluster.x{i}" for i in range(20)), "LatticeCluster." + "y" * 5000)
    kept = agent.reported(noisy)
    assert kept == tuple(f"LatticeCluster.x{i}" for i in range(8))
    long = agent.reported(("LatticeCluster." + "y" * 5000,))
    assert len(long[0]) == agent.MAX_REPORTED_CHARS
    assert long[0].endswith("…")
