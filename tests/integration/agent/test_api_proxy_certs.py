"""Client certificates at the cell's Kubernetes API proxy: a certificate of the cell cluster's
client CA (the one its API server accepts, read from kube-system/extension-apiserver-authentication)
is a user (CN) with groups (O), checked with the same SubjectAccessReview and impersonated on the
child; the cell's own CA (which signs agents) is not accepted. A real cell API server, the cell's
real proxy wiring (CellApiProxy), a real agent over mTLS, a real child API server, real kubectl.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lattice.adapters import api_proxy_agent, pki
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app import yamlio
from lattice.app.api_proxy import CellApiProxy, cluster_client_ca
from lattice.domain import api_proxy
from lattice.testing.fixtures import ControlPlaneFactory
from tests.integration.agent.conftest import Pki, running_agent, running_cell, token_kubeconfig

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(240)]

CHILD = "by-cert"


def _rbac(kind: str, name: str, role: str, subject: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", **subject}],
    }


def _role(name: str, group: str, resource: str, verbs: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [group], "resources": [resource], "verbs": verbs}],
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _nameless_certificate(ca: pki.CertificateAuthority) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proxy-users")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), pki.key_to_pem(key)


async def test_without_rights_on_the_client_ca_the_cell_accepts_tokens_only(
    cell_control_plane: ControlPlane,
) -> None:
    cp = cell_control_plane
    cp.kubectl("create", "serviceaccount", "no-rights", "-n", "default", check=False)
    token = cp.kubectl("create", "token", "no-rights", "-n", "default").stdout.strip()
    path = cp.dir / "no-rights.kubeconfig"
    path.write_text(json.dumps(token_kubeconfig(cp, token)))
    assert await cluster_client_ca(await Kr8sKube.connect(str(path))) is None
    assert await cluster_client_ca(await Kr8sKube.connect(str(cp.kubeconfig)))


@pytest.fixture
def child(control_plane_factory: ControlPlaneFactory) -> ControlPlane:
    return control_plane_factory.one()


async def _kubectl(cp: ControlPlane, kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(cp.toolchain.kubectl),
        f"--kubeconfig={kubeconfig}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_client_certificates_of_the_cell_clusters_client_ca(
    cell_pki: Pki, cell_control_plane: ControlPlane, child: ControlPlane, tmp_path: Path
) -> None:
    cp = cell_control_plane
    # On the cell: the group proxy-users may use the proxy. On the child: dave may read configmaps.
    cp.apply(
        [
            _role("cert-test-proxy", "lattice.dev", "latticeclusters/proxy", ["*"]),
            _rbac(
                "ClusterRoleBinding",
                "cert-test-proxy",
                "cert-test-proxy",
                {"kind": "Group", "name": "proxy-users"},
            ),
        ]
    )
    child.apply(
        [
            _role("cert-test-view", "", "configmaps", ["get", "list", "watch"]),
            _rbac("ClusterRoleBinding", "cert-test-view", "cert-test-view", {"kind": "User", "name": "dave"}),
        ]
    )
    child.kubectl("create", "configmap", "seen-by-dave", "-n", "default", "--from-literal=k=v")
    kube_ca = pki.CertificateAuthority(
        cert=pki.cert_from_pem((cp.pki_dir / "ca.crt").read_bytes()),
        key=pki.key_from_pem((cp.pki_dir / "ca.key").read_bytes()),
    )
    port = free_port()
    url = f"https://127.0.0.1:{port}"

    def kubeconfig(name: str, cert_pem: bytes, key_pem: bytes) -> Path:
        config = api_proxy.kubeconfig(
            [CHILD], url, cell_pki.server.ca.read_text(), None, (_b64(cert_pem), _b64(key_pem))
        )
        path = tmp_path / f"{name}.kubeconfig"
        path.write_text(yamlio.dump_all([config]))
        return path

    api = await Kr8sKube.connect(str(cp.kubeconfig))
    async with running_cell(cell_pki) as cell:
        proxy = CellApiProxy(
            cell.hub, cell_pki.server, kubeconfig=cp.kubeconfig, url=url, bind_host="127.0.0.1", port=port
        )
        await proxy.start(api)
        executor = api_proxy_agent.ApiProxyExecutor(
            CHILD, await api_proxy_agent.HttpTarget.from_kubeconfig(str(child.kubeconfig))
        )
        try:
            async with running_agent(cell_pki.agent_files(CHILD), CHILD, cell.port, proxy=executor):
                await cell.wait_connected(CHILD)

                # dave (CN) in proxy-users (O): the cell lets him through, the child sees dave
                dave = kube_ca.issue("dave", organizations=["proxy-users"], client=True)
                as_dave = kubeconfig("dave", dave.cert_pem, dave.key_pem)
                code, out, err = await _kubectl(
                    cp, as_dave, "get", "configmaps", "-n", "default", "-o", "name"
                )
                assert code == 0, err
                assert "configmap/seen-by-dave" in out
                code, out, err = await _kubectl(cp, as_dave, "auth", "whoami", "-o", "json")
                assert code == 0, err
                seen = json.loads(out)["status"]["userInfo"]
                assert seen["username"] == "dave"
                assert "proxy-users" in seen["groups"]
                # ...and only what the child's RBAC grants him: the child's own 403
                code, _, err = await _kubectl(cp, as_dave, "get", "secrets", "-n", "default")
                assert code != 0
                assert 'User "dave" cannot list resource "secrets"' in err, err

                # frank has a valid certificate but no proxy permission: 403 from the cell
                frank = kube_ca.issue("frank", client=True)
                code, _, err = await _kubectl(
                    cp, kubeconfig("frank", frank.cert_pem, frank.key_pem), "get", "configmaps"
                )
                assert code != 0
                assert 'user "frank" cannot get resource "latticeclusters/proxy"' in err, err

                # a certificate of that CA without a Common Name: verified at TLS, refused by the cell
                nameless = _nameless_certificate(kube_ca)
                code, _, err = await _kubectl(cp, kubeconfig("nameless", *nameless), "get", "configmaps")
                assert code != 0
                assert "no Common Name" in err, err

                # the agent's certificate (the cell's own CA) is no proxy user: refused at TLS
                agent = cell_pki.agent_files("intruder")
                code, _, err = await _kubectl(
                    cp,
                    kubeconfig("agent", agent.cert.read_bytes(), agent.key.read_bytes()),
                    "get",
                    "configmaps",
                )
                assert code != 0
                assert "seen-by-dave" not in err

                # `lattice kubeconfig --via` the cell's admin kubeconfig (a client certificate,
                # CN kubernetes-admin, O system:masters) works as it is
                made = await asyncio.to_thread(
                    subprocess.run,
                    [
                        sys.executable,
                        "-m",
                        "lattice.app.cli",
                        "kubeconfig",
                        CHILD,
                        "--via",
                        str(cp.kubeconfig),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert made.returncode == 0, made.stderr
                admin = tmp_path / "admin-via-proxy.kubeconfig"
                admin.write_text(made.stdout)
                code, out, err = await _kubectl(cp, admin, "get", "secrets", "-n", "default", "-o", "name")
                assert code == 0, err
        finally:
            await executor.close()
            await proxy.close()
