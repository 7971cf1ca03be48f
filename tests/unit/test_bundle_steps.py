"""Who may send a raylet the bundle steps of a placement group: the GCS, on the
raylet's own link to it, from the moment that link opens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aioray.daemons.raylet.bundles import BundleService
from aioray.daemons.raylet.gcs_link import GCS_LINK
from fakes import FakeConnection


def test_the_gcs_link_may_send_bundle_steps_before_the_registration_is_answered() -> None:
    """The GCS places a waiting group on a node as it registers, before the raylet has
    read the answer and taken the link as its ``gcs`` (a STRICT_SPREAD group waiting for
    a new node was refused there, and stayed pending)."""
    service = BundleService(SimpleNamespace(gcs=None))  # type: ignore[arg-type]
    link = FakeConnection("gcs")
    link.state[GCS_LINK] = True
    for method in ("prepare_bundles", "commit_bundles", "cancel_bundles"):
        service._from_gcs(link, method)  # type: ignore[arg-type]
        with pytest.raises(PermissionError, match=f"{method} is for the GCS to send"):
            service._from_gcs(FakeConnection("another peer"), method)  # type: ignore[arg-type]
