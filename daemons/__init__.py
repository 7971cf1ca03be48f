"""aioray's long-running processes: GCS, raylet, fork server and workers."""
