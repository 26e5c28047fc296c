"""Cross-cluster service discovery (GitHub issue 9; spec 003), the pure core.

- :mod:`.messages`: the discovery messages of the agent protocol as plain values (the gRPC adapter
  converts them to and from ``lattice.agent.v1`` protobuf messages).
- :mod:`.catalog`: the parent's :class:`~.catalog.ServiceCatalog`.
- :mod:`.cache`: the never-expiring :class:`~.cache.RemoteServiceCache` every cluster keeps.
- :mod:`.graph`: the per-cluster :class:`~.graph.ServiceGraph` (Local and Unknown nodes).
- :mod:`.resolution`: the decisions of the discovery coordinator (query or not, what to return).
- :mod:`.naming`, :mod:`.compilers`, :mod:`.plan`: the Kubernetes objects cross-cluster traffic needs.

Nothing here does I/O or reads a clock: time (``now``) and ids are passed in.
"""
