"""The raylet: one per node. Resources, worker leases, the worker pool, the object store."""
