"""The LatticeService CustomResourceDefinition, generated from :mod:`lattice.domain.lattice_service`.

The schema comes from :func:`lattice.domain.crd_schema.schema_for`, as every Lattice CRD's does;
the two Score-style maps (``spec.service.ports`` and ``spec.resources``) become
``additionalProperties`` objects. CEL rules are kept cheap on purpose: map keys have no length bound
in a structural schema, so rules that run string functions over keys could exceed the API
server's cost budget. Key syntax is therefore checked by :func:`services.validate_service` (and
reported in status), not by the CRD.
"""

from __future__ import annotations

from lattice.domain import crd_schema, lattice_service, models
from lattice.domain.crd_schema import SchemaDict

_RULES: dict[type, list[dict[str, str]]] = {
    lattice_service.ServiceExposure: [
        {
            "rule": "self.ports.all(a, self.ports.filter(b, self.ports[b].port == self.ports[a].port)"
            ".size() == 1)",
            "message": "port numbers must be unique",
        }
    ],
}

_MAP_RULES: dict[tuple[type, str], list[dict[str, str]]] = {
    (lattice_service.LatticeServiceSpec, "resources"): [
        {
            "rule": "!('*' in self) || self['*'].direction == 'inbound'",
            "message": "'*' means any caller and is only valid with direction inbound",
        }
    ],
}

_ROOT_RULES = [
    {
        "rule": "!has(self.spec.resources) || !(self.metadata.name in self.spec.resources) || "
        "self.spec.resources[self.metadata.name].direction == 'inbound'",
        "message": "a service cannot depend on itself",
    }
]


_SCHEMA_RULES = crd_schema.SchemaRules(objects=_RULES, maps=_MAP_RULES)


def object_schema(cls: type) -> SchemaDict:
    """The schema of a LatticeService class, with its CEL rules."""
    return crd_schema.schema_for(cls, _SCHEMA_RULES)


def lattice_service_crd() -> SchemaDict:
    spec = object_schema(lattice_service.LatticeServiceSpec)
    status = object_schema(lattice_service.LatticeServiceStatus)
    status.pop("required", None)
    root: SchemaDict = {
        "type": "object",
        "description": "A workload (Score-style) whose dependencies and allowed callers Lattice "
        "resolves within its cluster and, through the parent cell's service catalog, across "
        "clusters.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**spec, "description": "Desired state of the service."},
            "status": {**status, "description": "Observed state, written by Lattice."},
        },
        "x-kubernetes-validations": [dict(rule) for rule in _ROOT_RULES],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{lattice_service.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lattice"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": lattice_service.KIND,
                "listKind": f"{lattice_service.KIND}List",
                "plural": lattice_service.PLURAL,
                "singular": lattice_service.SINGULAR,
                "shortNames": list(lattice_service.SHORT_NAMES),
                "categories": ["lattice"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Environment", "type": "string", "jsonPath": ".spec.environment"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Message",
                            "type": "string",
                            "jsonPath": ".status.message",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }
