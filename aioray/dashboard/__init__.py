"""The dashboard: the head's web service (REST as Ray's, the web UI, job submission).

Run as its own process (``python -m aioray.dashboard``) by the head's launcher."""
