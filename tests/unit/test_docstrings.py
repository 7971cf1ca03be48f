"""Every public name of the API and every RPC handler has a docstring.

The public API: the names each public module exports (``__all__``, else the public
names it defines), and the public methods and properties of those classes. The RPC
handlers: every ``handle_*`` method of a class in ``aioray.daemons`` or
``aioray._private`` (``rpc.handlers_of`` registers exactly those), and every entry
of a service's ``handlers()`` table. A handler's docstring says what the message asks,
its body and its reply.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import aioray.daemons

import aioray
import aioray._private
import aioray.experimental
import aioray.util

PUBLIC = [
    "aioray",
    "aioray.actor",
    "aioray.remote_function",
    "aioray.runtime_context",
    "aioray.exceptions",
    "aioray.cluster_utils",
    "aioray.runtime_env",
    "aioray.job_submission",
    "aioray.dag",
    "aioray.autoscaler.sdk",
]


# Modules whose import raises on purpose (Ray's names aioray does not implement).
REFUSE_IMPORT = {"aioray.util.collective"}


def _submodules(pkg: ModuleType) -> Iterator[ModuleType]:
    yield pkg
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name in REFUSE_IMPORT:
            continue
        if not any(p.startswith("_") for p in info.name.split(".")[1:]):
            yield importlib.import_module(info.name)


def public_modules() -> list[ModuleType]:
    mods = [importlib.import_module(m) for m in PUBLIC]
    return [*mods, *_submodules(aioray.util), *_submodules(aioray.experimental)]


def _ours(obj: Any) -> bool:
    return str(getattr(obj, "__module__", "")).startswith("aioray")


def _has_doc(obj: Any) -> bool:
    return bool((getattr(obj, "__doc__", None) or "").strip())


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties a class defines itself."""
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        elif isinstance(attr, property):
            attr = attr.fget
        if inspect.isfunction(attr):
            yield name, attr


def public_names() -> dict[str, Any]:
    """Qualified name -> object, for every public function, class, method, property."""
    out: dict[str, Any] = {}
    for mod in public_modules():
        names = getattr(mod, "__all__", None)
        if names is None:
            names = [
                n
                for n, o in vars(mod).items()
                if not n.startswith("_") and getattr(o, "__module__", None) == mod.__name__
            ]
        for name in names:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not callable(obj) or not _ours(obj):
                continue
            out[f"{mod.__name__}.{name}"] = obj
            if inspect.isclass(obj):
                for member, fn in _members(obj):
                    out[f"{obj.__module__}.{obj.__qualname__}.{member}"] = fn
    return out


class _Unbound:
    """Stands in for a service instance so that ``Service.handlers(_Unbound(Service))``
    returns its table of plain functions without building the service."""

    def __init__(self, cls: type) -> None:
        self._cls = cls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cls, name)


def handlers() -> dict[str, Any]:
    """Qualified name -> function, for every RPC handler of the daemons and the owner."""
    out: dict[str, Any] = {}
    for pkg in (aioray.daemons, aioray._private):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            mod = importlib.import_module(info.name)
            for cls in vars(mod).values():
                if not inspect.isclass(cls) or cls.__module__ != mod.__name__:
                    continue
                for name, attr in vars(cls).items():
                    if name.startswith("handle_") and callable(attr):
                        out[f"{mod.__name__}.{cls.__qualname__}.{name}"] = attr
                table = vars(cls).get("handlers")
                if not inspect.isfunction(table):
                    continue
                try:
                    entries = table(_Unbound(cls)).items()
                except AttributeError:  # it merges the table of a part built in __init__,
                    continue  # whose own handlers() or handle_* are walked as its class's
                for method, fn in entries:
                    out[f"{mod.__name__}.{cls.__qualname__}.handlers()[{method!r}]"] = fn
    return out


def test_the_walks_find_what_they_must() -> None:
    names, table = public_names(), handlers()
    assert "aioray.get" in names and "aioray.actor.ActorHandle" in names
    assert "aioray._private.owner.object_ref.ObjectRef.hex" in names
    assert "aioray._private.owner.placement_groups.PlacementGroup.ready" in names
    assert "aioray.exceptions.RayTaskError" in names
    assert "aioray.daemons.raylet.server.Raylet.handle_request_lease" in table
    assert "aioray.daemons.worker.TaskExecutor.handle_push_task" in table
    assert "aioray.daemons.actor_host.ActorHost.handlers()['push_actor_task']" in table
    assert "aioray._private.owner.owner_service.OwnerService.handle_get_object" in table
    assert len(names) > 150 and len(table) > 60


def test_every_public_name_has_a_docstring() -> None:
    missing = sorted(name for name, obj in public_names().items() if not _has_doc(obj))
    assert not missing, f"public names without a docstring: {missing}"


def test_every_rpc_handler_has_a_docstring() -> None:
    missing = sorted(name for name, fn in handlers().items() if not _has_doc(fn))
    assert not missing, f"RPC handlers without a docstring: {missing}"
