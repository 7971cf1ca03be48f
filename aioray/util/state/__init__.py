"""aioray.util.state: the State API with Ray's functions (filled in by api.py)."""
