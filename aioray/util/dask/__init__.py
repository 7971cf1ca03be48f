"""``aioray.util.dask``: Dask on aioray (Ray's path). ``ray_dask_get`` is a dask scheduler
that runs each dask task as an aioray task; ``enable_dask_on_ray()`` makes it the default
(needs the ``[dask]`` extra)."""

from aioray.util.dask.scheduler import (
    disable_dask_on_ray,
    enable_dask_on_ray,
    ray_dask_get,
)

__all__ = ["disable_dask_on_ray", "enable_dask_on_ray", "ray_dask_get"]
