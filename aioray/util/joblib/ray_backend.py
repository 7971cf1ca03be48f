"""The joblib backend: joblib's multiprocessing backend with an aioray actor Pool as its
pool, so each of joblib's batches runs in an actor. ``n_jobs=-1`` is the cluster's CPUs."""

from __future__ import annotations

from typing import Any

from joblib._parallel_backends import MultiprocessingBackend

import aioray as ray
from aioray.util.multiprocessing import Pool


class RayBackend(MultiprocessingBackend):
    """joblib's ``"ray"`` backend (``joblib.parallel_backend("ray", ray_remote_args=...)``)."""

    supports_timeout = True

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        ray_remote_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.ray_remote_args = ray_remote_args
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs
        )

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The worker count for ``n_jobs``: a negative value counts back from the cluster's CPUs
        plus one, as joblib does (-1: all of them); starts Ray if needed."""
        if n_jobs is not None and n_jobs < 0:
            if not ray.is_initialized():
                ray.init()
            cpus = int(ray.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)  # -1: all of them, as joblib counts
        return int(super().effective_n_jobs(n_jobs))

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **memmappingpool_args: Any,
    ) -> int:
        """Start the Ray-backed ``Pool`` for a ``Parallel`` call; returns the number of workers
        (``effective_n_jobs(n_jobs)``)."""
        n_jobs = self.effective_n_jobs(n_jobs)
        self._pool: Pool | None = Pool(processes=n_jobs, ray_remote_args=self.ray_remote_args)
        self.parallel = parallel
        return n_jobs

    def terminate(self) -> None:
        """Stop this backend's pool and its actors (a no-op if already stopped)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
