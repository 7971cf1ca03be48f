"""Floor core: per-process state and its rules (reference counts, the memory store,
borrowing, lineage, options, resources), synchronous; over rpc and wire."""
