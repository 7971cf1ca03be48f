"""Floor owner: the CoreWorker and its services (submitters, leases, waits, the store
client, the owner service, the GCS client), and this process's CoreWorker (worker_context)."""
