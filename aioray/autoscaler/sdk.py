"""``request_resources``: ask the autoscaler to keep room for bundles (Ray's
``ray.autoscaler.sdk``). The request is stored in the GCS and replaces the previous
one; the autoscaler scales the cluster so its total resources fit it, whatever is
running (``request_resources()`` with nothing clears it)."""

from __future__ import annotations

import math

from aioray.api import gcs_call


def request_resources(
    num_cpus: int | None = None, bundles: list[dict[str, float]] | None = None
) -> None:
    """Scale to fit ``num_cpus`` one-CPU bundles plus ``bundles``, at once (Ray's call).

    Raises TypeError for a wrong type and ValueError for a negative amount, as Ray.
    """
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int)):
        raise TypeError("num_cpus should be of type int.")
    if num_cpus is not None and num_cpus < 0:
        raise ValueError("num_cpus should be non-negative.")
    if bundles is not None and not isinstance(bundles, list):
        raise TypeError("bundles should be of type List")
    wanted: list[dict[str, float]] = [{"CPU": 1.0}] * (num_cpus or 0)
    for bundle in bundles or []:
        if not isinstance(bundle, dict):
            raise TypeError("each bundle should be a Dict.")
        for key, value in bundle.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not isinstance(key, str) or not number:
                raise TypeError("each bundle key should be str and value as int.")
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"resource {key!r}: {value!r} must be a non-negative number.")
        wanted.append({k: float(v) for k, v in bundle.items()})
    reply = gcs_call("request_resources", wanted)
    if isinstance(reply, dict) and reply.get("error"):
        raise ValueError(reply["error"])


__all__ = ["request_resources"]
