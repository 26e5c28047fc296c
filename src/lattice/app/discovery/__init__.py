"""Cross-cluster discovery, application layer: the async coordinator and the parent's service.

The decisions live in :mod:`lattice.domain.discovery`; these modules wire them to ports
(:mod:`lattice.ports.discovery`, :mod:`lattice.ports.clock`).
"""
