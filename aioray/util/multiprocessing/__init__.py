"""``aioray.util.multiprocessing``: ``multiprocessing.Pool`` over actors (Ray's path)."""

from multiprocessing import TimeoutError

from aioray.util.multiprocessing.pool import AsyncResult, IMapIterator, Pool

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]
