"""A node's resources: pure accounting, no I/O.

Amounts are floats with Ray's fractional semantics; comparisons allow a tiny
epsilon so 0.1 + 0.2 units fit into 0.3.
"""

from __future__ import annotations

EPS = 1e-9


def take_gpus(gpu_free: dict[int, float], amount: float) -> list[tuple[int, float]]:
    """Take ``amount`` GPUs from ``gpu_free`` (id -> free share): whole free GPUs, or a
    share of one GPU with room. Returns (id, share) pairs."""
    if amount <= 0 or not gpu_free:
        return []
    if amount >= 1:
        ids = [i for i, free in gpu_free.items() if free >= 1 - EPS][: int(amount + 0.5)]
        taken = [(i, 1.0) for i in ids]
    else:
        room = [i for i, free in gpu_free.items() if free + EPS >= amount]
        taken = [(room[0], amount)] if room else []
    for i, share in taken:
        gpu_free[i] -= share
    return taken


def give_back_gpus(gpu_free: dict[int, float], taken: list[tuple[int, float]]) -> None:
    for i, share in taken:
        if i in gpu_free:
            gpu_free[i] = min(1.0, gpu_free[i] + share)


class NodeResources:
    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items() if v > 0}
        self.available = dict(self.total)
        # Free capacity of each GPU id, so a lease can be told which devices are its own.
        self.gpu_free = {i: 1.0 for i in range(int(self.total.get("GPU", 0)))}

    def assign_gpus(self, amount: float) -> list[tuple[int, float]]:
        """Pick device ids for a GPU request: whole free GPUs, or one GPU with room."""
        return take_gpus(self.gpu_free, amount)

    def release_gpus(self, taken: list[tuple[int, float]]) -> None:
        give_back_gpus(self.gpu_free, taken)

    def __repr__(self) -> str:
        return f"<NodeResources available={self.available} total={self.total}>"

    def feasible(self, request: dict[str, float]) -> bool:
        """Could this request ever run here (on an idle node)?"""
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in request.items())

    def fits(self, request: dict[str, float]) -> bool:
        return all(self.available.get(k, 0.0) + EPS >= v for k, v in request.items())

    def acquire(self, request: dict[str, float]) -> None:
        for k, v in request.items():
            self.available[k] = self.available.get(k, 0.0) - v

    def release(self, request: dict[str, float]) -> None:
        for k, v in request.items():
            total = self.total.get(k)
            if total is not None:  # a removed placement group's resources are gone
                self.available[k] = min(total, self.available.get(k, 0.0) + v)

    def snapshot(self) -> dict[str, float]:
        return {k: round(max(v, 0.0), 6) for k, v in self.available.items()}
