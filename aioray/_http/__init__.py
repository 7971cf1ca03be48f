"""aioray's HTTP layer: one authenticated aiohttp application per process (``server``)
and the Prometheus text format (``prometheus``). Features add their own route tables."""
