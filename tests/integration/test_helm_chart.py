"""The Helm chart ``charts/lattice`` rendered by the real helm (built from its Go module by
``scripts/build-addons.sh``): the objects of ``lattice deploy-manifests`` and ``lattice crds``
for the defaults and for other values, ``helm lint --strict`` clean, bad values refused by the
schema with the value named, ``lattice install --via helm`` rendering the same objects as
``--via manifests``, and ``helm install`` on a real kube-apiserver leaving exactly the objects
the manifests describe."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from lattice.adapters.addons_bundle import RenderError, locate_addons
from lattice.adapters.chart import OperatorChart, locate_chart, locate_operator_chart
from lattice.adapters.controlplane import ControlPlane
from lattice.app import installer
from lattice.domain import capi, deploy, install_plan
from lattice.testing.fixtures import ControlPlaneFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lattice"
MGMT = REPO / "examples" / "install" / "local-mgmt.yaml"

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    """The add-ons bundle's helm; a missing bundle fails here, naming the script that builds it."""
    path = locate_addons().helm
    assert path.is_file(), f"{path} is missing: run bash scripts/build-addons.sh"
    return path


def _helm(
    helm: Path, *args: str, home: Path, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, env=env, cwd=REPO, timeout=120
    )


def _template(helm: Path, tmp_path: Path, *args: str) -> list[Obj]:
    result = _helm(helm, "template", "lattice", str(CHART), "-n", "lattice-system", *args, home=tmp_path)
    assert result.returncode == 0, result.stderr
    return _documents(result.stdout)


def _lattice(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, f"lattice {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def _documents(text: str) -> list[Obj]:
    return [doc for doc in YAML(typ="safe", pure=True).load_all(text) if doc]


def _by_key(objects: Iterable[Obj]) -> dict[tuple[str, str, str, str], Obj]:
    keyed = {
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objects
    }
    return dict(sorted(keyed.items()))


def _assert_same(rendered: list[Obj], expected: list[Obj]) -> None:
    """The same objects, each exactly (helm orders them by kind, the manifests by dependency)."""
    assert len(rendered) == len(expected)
    got, want = _by_key(rendered), _by_key(expected)
    assert list(got) == list(want)
    for key, obj in want.items():
        assert got[key] == obj, key


# ------------------------------------------------------------------ equal to the manifests


def test_the_defaults_render_exactly_what_deploy_manifests_prints(helm: Path, tmp_path: Path) -> None:
    rendered = _template(helm, tmp_path)
    _assert_same(rendered, _documents(_lattice("deploy-manifests")))
    assert [o["kind"] for o in rendered] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ]
    for obj in rendered:  # no chart or release labels of helm's own
        assert obj["metadata"]["labels"] == deploy.LABELS


def test_the_chart_crds_are_what_lattice_crds_prints(helm: Path, tmp_path: Path) -> None:
    rendered = _template(helm, tmp_path, "--include-crds")
    crds = [o for o in rendered if o["kind"] == "CustomResourceDefinition"]
    _assert_same(crds, _documents(_lattice("crds")))
    _assert_same([o for o in rendered if o not in crds], _documents(_lattice("deploy-manifests")))


@pytest.mark.parametrize(
    ("flags", "values"),
    [
        (
            ["--image", "registry.local:5000/team/lattice:1.2.3", "--replicas", "3", "--cluster-name", "foo"],
            [
                "--set",
                "image.repository=registry.local:5000/team/lattice",
                "--set-string",
                "image.tag=1.2.3",
                "--set",
                "replicas=3",
                "--set",
                "clusterName=foo",
            ],
        ),
        (
            ["--image", "ghcr.io/lattice-dev/lattice@sha256:" + "c" * 64, "--replicas", "1"],
            ["--set", "image.digest=sha256:" + "c" * 64, "--set", "replicas=1"],
        ),
        (["--replicas", "0", "--cluster-name", "mgmt"], ["--set", "replicas=0,clusterName=mgmt"]),
    ],
    ids=["image-replicas-cluster", "digest", "scaled-to-zero"],
)
def test_values_render_what_deploy_manifests_prints_with_the_same_flags(
    helm: Path, tmp_path: Path, flags: list[str], values: list[str]
) -> None:
    _assert_same(_template(helm, tmp_path, *values), _documents(_lattice("deploy-manifests", *flags)))


def test_cell_values_render_the_operator_a_cell_delivers(helm: Path, tmp_path: Path) -> None:
    """cell.* gives the arguments and state volume a cell gives a child that is a cell itself."""
    spec: Obj = {
        "provider": {"type": "aws"},
        "parentConfig": {
            "host": "cell.example.com",
            "bootstrapPort": 9443,
            "grpcPort": 9051,
            "proxyPort": 9444,
        },
    }
    expected = install_plan.child_operator("mgmt", spec, None, deploy.DEFAULT_IMAGE)
    rendered = _template(
        helm,
        tmp_path,
        "--set",
        "replicas=1,clusterName=mgmt,cell.enabled=true,cell.host=cell.example.com",
        "--set",
        "cell.bootstrapPort=9443,cell.grpcPort=9051,cell.proxyPort=9444",
    )
    _assert_same(rendered, expected.manifests())


def test_cell_proxy_port_0_renders_a_cell_without_the_api_proxy(helm: Path, tmp_path: Path) -> None:
    spec: Obj = {"provider": {"type": "aws"}, "parentConfig": {"host": "cell.example.com", "proxyPort": 0}}
    expected = install_plan.child_operator("mgmt", spec, None, deploy.DEFAULT_IMAGE)
    assert expected.options.proxy_port is None  # no --proxy-port: off, the operator's default
    rendered = _template(
        helm,
        tmp_path,
        "--set",
        "replicas=1,clusterName=mgmt,cell.enabled=true,cell.host=cell.example.com,cell.proxyPort=0",
    )
    _assert_same(rendered, expected.manifests())


def test_the_other_values_land_where_they_say(helm: Path, tmp_path: Path) -> None:
    rendered = _by_key(
        _template(
            helm,
            tmp_path,
            "--set",
            "metrics.enabled=true,metrics.port=9090,namespace.create=false,image.pullPolicy=Always",
            "--set",
            "nodeSelector.role=infra,podAnnotations.team=platform,imagePullSecrets[0].name=regcred",
            "--set",
            "tolerations[0].key=infra,tolerations[0].operator=Exists,extraArgs={--log-level,debug}",
            "--set",
            "cell.enabled=true,cell.host=fd00::1,cell.bindHost=::,cell.agentImage=r.io/l:2",
            "--set",
            "resources.limits.memory=1Gi",
        )
    )
    kinds = [kind for _, kind, _, _ in rendered]
    assert "Namespace" not in kinds
    service = rendered[("v1", "Service", "lattice-system", "lattice-operator-metrics")]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": "probes"}
    ]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "lattice-operator"}
    pod = rendered[("apps/v1", "Deployment", "lattice-system", "lattice-operator")]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"team": "platform"}
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"role": "infra"}
    assert spec["tolerations"] == [{"key": "infra", "operator": "Exists"}]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["volumes"] == [{"name": "state", "emptyDir": {}}]
    (container,) = spec["containers"]
    assert container["imagePullPolicy"] == "Always"
    assert container["ports"] == [{"name": "probes", "containerPort": 9090}]
    assert container["resources"]["limits"] == {"memory": "1Gi"}
    assert container["volumeMounts"] == [{"name": "state", "mountPath": deploy.STATE_DIR}]
    assert container["args"] == [
        "operator", "--health-host", "0.0.0.0", "--health-port", "9090", "--log-level", "debug",
        "--cell-host", "fd00::1", "--bootstrap-port", "8443", "--grpc-port", "50051",
        "--proxy-port", "8444", "--bind-host", "::", "--state-dir", deploy.STATE_DIR,
        "--agent-image", "r.io/l:2",
    ]  # fmt: skip


# ------------------------------------------------------------------ lint and schema


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "cell.enabled=true,cell.host=cell.example.com,metrics.enabled=true,clusterName=mgmt"]],
    ids=["defaults", "cell-and-metrics"],
)
def test_helm_lint_strict_is_clean(helm: Path, tmp_path: Path, values: list[str]) -> None:
    result = _helm(helm, "lint", "--strict", str(CHART), *values, home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (["--set", "replicas=-1"], "at '/replicas': minimum: got -1, want 0"),
        (["--set", "replicas=two"], "at '/replicas': got string, want integer"),
        (["--set", "image.tag=5"], "at '/image/tag': got number, want string"),
        (["--set", "image.repository="], "at '/image/repository'"),
        (["--set", "image.digest=latest"], "at '/image/digest'"),
        (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
        (["--set", "replics=2"], "additional properties 'replics' not allowed"),
        (["--set", "metrics.port=0"], "at '/metrics/port': minimum: got 0, want 1"),
        (["--set", "cell.enabled=true"], "at '/cell/host'"),
        (["--set", "cell.host=[fd00::1]"], "at '/cell/host'"),
        (["--set", "clusterName=Mgmt_1"], "at '/clusterName'"),
        (["--set", "extraArgs[0]=1"], "at '/extraArgs/0': got number, want string"),
        (["--set", "resources.limit.memory=1Gi"], "at '/resources'"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[-1],
)
def test_a_bad_value_is_refused_and_named(helm: Path, tmp_path: Path, values: list[str], named: str) -> None:
    result = _helm(helm, "template", "lattice", str(CHART), "-n", "lattice-system", *values, home=tmp_path)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr, result.stderr
    assert result.stdout == ""


def test_the_adapter_says_what_helm_refused(helm: Path) -> None:
    chart = OperatorChart(helm=helm, chart=locate_chart())
    with pytest.raises(RenderError, match=r"at '/replicas': minimum: got -1, want 0"):
        chart.operator_objects(deploy.OperatorInstall(replicas=-1))


# ------------------------------------------------------------------ lattice install --via


def _installs() -> list[deploy.OperatorInstall]:
    local_cell: Obj = {
        "cellRef": "mgmt",
        "provider": {"type": "local"},
        "parentConfig": {"host": "127.0.0.1", "bootstrapPort": 18443, "grpcPort": 15051},
    }
    return [
        deploy.OperatorInstall(),
        deploy.OperatorInstall(image="r.io:5000/l:2@sha256:" + "d" * 64, cluster_name="x", replicas=5),
        # what a cell gives a local child that is a cell itself (CellRuntime.bootstrap_manifests)
        install_plan.child_operator(
            "child",
            local_cell,
            capi.ParentEndpoint("127.0.0.1", 8443, 50051),
            "img:1",
            local_machines_dir="/var/tmp/lattice machines",
        ),
        # a local child that is no cell: its flags reach the chart as extraArgs
        install_plan.child_operator(
            "leaf", {"provider": {"type": "local"}}, None, "img:1", local_machines_dir="/m"
        ),
    ]


@pytest.mark.parametrize("operator", _installs(), ids=["defaults", "digest", "local-cell", "local-leaf"])
def test_the_installer_renders_the_same_operator_either_way(operator: deploy.OperatorInstall) -> None:
    via_helm = installer.rendered_operator(install_plan.Via.HELM, operator)
    _assert_same(via_helm, installer.rendered_operator(install_plan.Via.MANIFESTS, operator))
    assert via_helm[0]["kind"] == "Namespace"  # applied first, as in the manifests


def test_the_installer_renders_the_same_crds_either_way() -> None:
    _assert_same(
        installer.rendered_crds(install_plan.Via.HELM), installer.rendered_crds(install_plan.Via.MANIFESTS)
    )
    assert locate_operator_chart().chart == CHART


def test_install_dry_run_via_helm_writes_the_same_objects(tmp_path: Path) -> None:
    written = {}
    for via in install_plan.Via:
        out = tmp_path / via.value
        _lattice("install", "-f", str(MGMT), "--via", via.value, "--dry-run", str(out))
        written[via] = {p.name: _documents(p.read_text()) for p in sorted(out.iterdir())}
    assert list(written[install_plan.Via.HELM]) == list(written[install_plan.Via.MANIFESTS])
    for name, objects in written[install_plan.Via.MANIFESTS].items():
        _assert_same(written[install_plan.Via.HELM][name], objects)
    operator = _by_key(written[install_plan.Via.HELM]["40-management-operator.yaml"])
    deployment = operator[("apps/v1", "Deployment", "lattice-system", "lattice-operator")]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cell-host") + 1] == "127.0.0.1"


# ------------------------------------------------------------------ helm install, for real


def test_helm_install_creates_exactly_the_objects_of_the_manifests(
    helm: Path, tmp_path: Path, control_plane_factory: ControlPlaneFactory
) -> None:
    """``helm install`` as the docs say; then applying ``lattice deploy-manifests`` and
    ``lattice crds`` server-side would change nothing (``kubectl diff`` exits 0)."""
    cp = control_plane_factory.one()
    result = _helm(
        helm,
        "install",
        "lattice",
        str(CHART),
        "-n",
        "lattice-system",
        "--create-namespace",
        "--set",
        "clusterName=mgmt",
        home=tmp_path,
        kubeconfig=cp.kubeconfig,
    )
    assert result.returncode == 0, result.stderr
    assert "STATUS: deployed" in result.stdout
    assert "kubectl -n lattice-system rollout status deployment/lattice-operator" in result.stdout
    cp.wait_established(o["metadata"]["name"] for o in _documents(_lattice("crds")))
    for text in (_lattice("deploy-manifests", "--cluster-name", "mgmt"), _lattice("crds")):
        assert _diff(cp, text) == 0
    # and kubectl diff does see a difference when there is one
    assert _diff(cp, _lattice("deploy-manifests", "--cluster-name", "other")) == 1
    deployment = cp.kubectl("get", "deployment", "-n", "lattice-system", "lattice-operator", "-o", "name")
    assert deployment.stdout.strip() == "deployment.apps/lattice-operator"


def _diff(cp: ControlPlane, text: str) -> int:
    """``kubectl diff --server-side``: 0 when applying ``text`` would change nothing, 1 if it would."""
    diff = cp.kubectl("diff", "--server-side", "--force-conflicts", "-f", "-", input=text, check=False)
    assert diff.returncode in (0, 1), diff.stderr
    return diff.returncode


def test_install_via_helm_applies_the_chart_crds_as_it_applies_lattice_crds(
    tmp_path: Path, control_plane_factory: ControlPlaneFactory
) -> None:
    """The installer's CRD step with --via helm: the Lattice CRDs from the chart, Established,
    and exactly those of ``lattice crds`` (applying them would change nothing)."""
    cp = control_plane_factory.one()
    steps: list[str] = []
    runner = installer.Installer(
        {"metadata": {"name": "mgmt"}},
        tmp_path / "state",
        cp.toolchain,
        installer.Progress(step=lambda step, message: steps.append(f"{step.value}: {message}"), detail=print),
        via=install_plan.Via.HELM,
    )
    runner._crds(cp)
    assert steps == ["CRDs: Cluster API (labelled as clusterctl init does) and Lattice (helm)"]
    assert _diff(cp, _lattice("crds")) == 0
    established = cp.kubectl(
        "get", "crd", "latticeclusters.lattice.dev", "latticeservices.lattice.dev", "-o", "name"
    )
    assert len(established.stdout.split()) == 2
    assert runner._load()["via"] == "helm"
