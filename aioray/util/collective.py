"""``aioray.util.collective``: not available (Ray's collective communication needs NCCL or
Gloo groups between actors, which aioray does not provide yet)."""

raise ImportError(
    "ray.util.collective is not available in aioray: collective communication "
    "(allreduce, broadcast, ... over NCCL or Gloo) is not implemented. Exchange values "
    "through the object store (aioray.put / aioray.get) or an actor instead."
)
