"""Lattice: self-managing Kubernetes clusters through Cluster API pivoting.

Layers (enforced by import-linter): ``lattice.app`` > ``lattice.adapters`` >
``lattice.ports`` > ``lattice.domain``. The domain is pure: no I/O, no clock,
no randomness.
"""

__version__ = "0.1.0"
