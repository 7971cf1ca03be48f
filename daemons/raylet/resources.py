"""A node's resources: pure accounting, no I/O.

Amounts are floats with Ray's fractional semantics; comparisons allow a tiny
epsilon so 0.1 + 0.2 units fit into 0.3.
"""

from __future__ import annotations

EPS = 1e-9


class NodeResources:
    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items() if v > 0}
        self.available = dict(self.total)

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
            self.available[k] = min(self.total.get(k, 0.0), self.available.get(k, 0.0) + v)

    def snapshot(self) -> dict[str, float]:
        return {k: round(max(v, 0.0), 6) for k, v in self.available.items()}
