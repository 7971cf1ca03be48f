"""HTML views for notebooks (``_repr_html_`` of the init context, ObjectRef, ActorHandle)."""

from __future__ import annotations

import html
from typing import Any


def context_html(ctx: Any) -> str:
    return f"<b>aioray</b> {html.escape(str(ctx.address_info.get('gcs_address')))}"


def object_ref_html(ref: Any) -> str:
    return f"<code>ObjectRef({html.escape(ref.hex())})</code>"


def actor_handle_html(handle: Any) -> str:
    return f"<code>{html.escape(repr(handle))}</code>"
