"""The registration webhook's request and response, as pure parsing and building.

Request (``POST /api/clusters/register``, ``Authorization: Bearer <token>``)::

    {"clusterName": "<name>", "csr": "<PEM certificate signing request>"}

Response (JSON, ``application/json``)::

    {"grpcEndpoint": "host:port", "caBundle": "<PEM>", "certificate": "<PEM>",
     "manifests": "<YAML stream>"}

With ``Accept: application/yaml`` the response body is the ``manifests`` YAML stream alone
(the compiled kubeadm script asks for that and applies the body as is); the certificate and
CA bundle are inside it, in the ``lattice-agent-tls`` Secret.

Not guaranteed here: that the CSR parses or is acceptable (the adapter parses it; see
:mod:`lattice.domain.agent_identity`), nor anything about the token (see
:mod:`lattice.domain.tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from lattice.domain.agent_identity import cluster_name_errors
from lattice.domain.errors import FieldError

REGISTER_PATH = "/api/clusters/register"
MAX_BODY_BYTES = 64 * 1024
MAX_CSR_CHARS = 16 * 1024
_KNOWN_FIELDS = frozenset({"clusterName", "csr"})
_CSR_BEGIN = "-----BEGIN CERTIFICATE REQUEST-----"


@frozen
class RegistrationRequest:
    cluster_name: str
    csr_pem: str


@frozen
class RegistrationResponse:
    grpc_endpoint: str
    ca_bundle: str
    certificate: str
    manifests: str

    def to_json(self) -> dict[str, str]:
        return {
            "grpcEndpoint": self.grpc_endpoint,
            "caBundle": self.ca_bundle,
            "certificate": self.certificate,
            "manifests": self.manifests,
        }


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def parse_request(body: Any) -> RegistrationRequest | FieldError:
    """Check a decoded JSON body; the first problem found is returned, naming its field."""
    if not isinstance(body, Mapping):
        return FieldError((), "the body must be a JSON object with clusterName and csr")
    unknown = sorted(str(key) for key in body if key not in _KNOWN_FIELDS)
    if unknown:
        return FieldError((unknown[0],), "unknown field (expected clusterName and csr)")
    name = body.get("clusterName")
    if not isinstance(name, str):
        return FieldError(("clusterName",), "required, a string")
    for error in cluster_name_errors(name, ("clusterName",)):
        return error
    csr = body.get("csr")
    if not isinstance(csr, str):
        return FieldError(("csr",), "required, a PEM certificate signing request string")
    if len(csr) > MAX_CSR_CHARS:
        return FieldError(("csr",), f"longer than {MAX_CSR_CHARS} characters")
    if _CSR_BEGIN not in csr:
        return FieldError(("csr",), f"not a PEM certificate signing request ({_CSR_BEGIN})")
    return RegistrationRequest(cluster_name=name, csr_pem=csr)


def wants_yaml(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers the bare YAML manifests over JSON."""
    if not accept:
        return False
    best_yaml = best_json = -1.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if media in {"application/yaml", "application/x-yaml", "text/yaml"}:
            best_yaml = max(best_yaml, quality)
        elif media in {"application/json", "*/*", "application/*"}:
            best_json = max(best_json, quality)
    return best_yaml > 0 and best_yaml > best_json
