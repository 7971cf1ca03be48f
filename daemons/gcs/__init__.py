"""The Global Control Service: cluster-wide tables and pub/sub."""
