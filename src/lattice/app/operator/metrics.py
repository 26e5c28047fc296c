"""Prometheus metrics of one operator instance (its own registry, so tests can run several)."""

from __future__ import annotations

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@define
class OperatorMetrics:
    registry: CollectorRegistry = field(factory=CollectorRegistry)
    reconciles: Counter = field(init=False)
    errors: Counter = field(init=False)
    duration: Histogram = field(init=False)
    queue_depth: Gauge = field(init=False)
    leader: Gauge = field(init=False)
    watch_restarts: Gauge = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.reconciles = Counter(
            "lattice_reconcile_total", "Reconciles by result", ["result"], registry=self.registry
        )
        self.errors = Counter(
            "lattice_reconcile_errors_total",
            "Failed reconciles by reason",
            ["reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "lattice_reconcile_duration_seconds",
            "Duration of one reconcile",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.queue_depth = Gauge("lattice_workqueue_depth", "Keys waiting", registry=self.registry)
        self.leader = Gauge("lattice_leader", "1 while this replica leads", registry=self.registry)
        self.watch_restarts = Gauge(
            "lattice_watch_restarts", "Watches restarted after errors", registry=self.registry
        )
