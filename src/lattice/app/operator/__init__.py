"""The LatticeCluster operator: informers, work queue, reconciler, leader election."""
