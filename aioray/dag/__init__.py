"""``aioray.dag``: Ray's DAG API, built lazily with ``.bind()`` and run with ``.execute()``.

``f.bind(x)`` makes a FunctionNode, ``Cls.bind(...)`` a ClassNode (an actor when run),
``node.method.bind(...)`` or ``handle.method.bind(...)`` a ClassMethodNode;
``InputNode()`` stands for ``execute``'s arguments and ``MultiOutputNode`` gathers
several outputs. Running a DAG submits every node once, passing the ObjectRefs of
upstream nodes as arguments, so values flow between tasks without the driver.

The nodes hold the remote function, actor class or handle and call its
``.remote()``; they import nothing above this module (remote_function and actor
build them in ``bind``)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClassMethodNode",
    "ClassNode",
    "DAGInputData",
    "DAGNode",
    "FunctionNode",
    "InputAttributeNode",
    "InputNode",
    "MultiOutputNode",
]


class _Run:
    """One ``execute``: its arguments, and each node's result (a node runs once)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.results: dict[int, Any] = {}


class DAGNode:
    """A node of a DAG: what runs, and its bound arguments (which may be nodes)."""

    def __init__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> None:
        self._bound_args = args
        self._bound_kwargs = kwargs or {}

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run the DAG that ends here; ``args`` and ``kwargs`` feed its InputNode."""
        return self._run(_Run(args, kwargs))

    def _run(self, run: _Run) -> Any:
        key = id(self)
        if key not in run.results:
            args = tuple(_resolve(a, run) for a in self._bound_args)
            kwargs = {k: _resolve(v, run) for k, v in self._bound_kwargs.items()}
            run.results[key] = self._execute_impl(args, kwargs, run)
        return run.results[key]

    def _execute_impl(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: _Run) -> Any:
        raise NotImplementedError

    def get_args(self) -> tuple[Any, ...]:
        """The positional arguments bound to this node (DAG nodes among them unresolved)."""
        return self._bound_args

    def get_kwargs(self) -> dict[str, Any]:
        """A copy of the keyword arguments bound to this node."""
        return dict(self._bound_kwargs)


def _resolve(value: Any, run: _Run) -> Any:
    """A bound argument with every node in it replaced by that node's result."""
    if isinstance(value, DAGNode):
        return value._run(run)
    if type(value) in (list, tuple):
        return type(value)(_resolve(v, run) for v in value)
    if type(value) is dict:
        return {k: _resolve(v, run) for k, v in value.items()}
    return value


class FunctionNode(DAGNode):
    """A remote function bound to its arguments; runs as a task (an ObjectRef)."""

    def __init__(self, remote: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._remote = remote  # a RemoteFunction, or one with options

    def _execute_impl(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: _Run) -> Any:
        return self._remote.remote(*args, **kwargs)

    def options(self, **task_options: Any) -> FunctionNode:
        """A copy of this node, same bound arguments, whose task runs with ``task_options``
        (as ``RemoteFunction.options``)."""
        remote = self._remote.options(**task_options)
        return FunctionNode(remote, self._bound_args, self._bound_kwargs)

    def __repr__(self) -> str:
        return f"FunctionNode({self._remote!r})"


class ClassNode(DAGNode):
    """An actor class bound to its constructor's arguments; runs as a new actor."""

    def __init__(self, actor_class: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._actor_class = actor_class

    def _execute_impl(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: _Run) -> Any:
        return self._actor_class.remote(*args, **kwargs)

    def __getattr__(self, name: str) -> _UnboundMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _UnboundMethod(self, name)

    def __repr__(self) -> str:
        return f"ClassNode({self._actor_class!r})"


class _UnboundMethod:
    """``class_node.method``: its ``.bind()`` makes a ClassMethodNode."""

    def __init__(self, actor: Any, name: str, method_options: dict[str, Any] | None = None):
        self._actor = actor  # a ClassNode or an ActorHandle
        self._name = name
        self._options = method_options or {}

    def options(self, **method_options: Any) -> _UnboundMethod:
        return _UnboundMethod(self._actor, self._name, {**self._options, **method_options})

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        return ClassMethodNode(self._actor, self._name, args, kwargs, self._options)


class ClassMethodNode(DAGNode):
    """A method of an actor (a ClassNode's, or a live handle's) bound to its arguments."""

    def __init__(
        self,
        actor: Any,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        method_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(args, kwargs)
        self._actor = actor
        self._name = name
        self._options = method_options or {}

    def _execute_impl(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: _Run) -> Any:
        handle = self._actor._run(run) if isinstance(self._actor, DAGNode) else self._actor
        method = getattr(handle, self._name)
        if self._options:
            method = method.options(**self._options)
        return method.remote(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ClassMethodNode({self._name})"


class DAGInputData:
    """``execute``'s arguments when there is not exactly one positional argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self._args[key]
        return self._kwargs[key]


def _input_value(run: _Run) -> Any:
    """What the InputNode stands for (Ray's rule): the argument itself when execute got
    exactly one positional argument, else all of them as a DAGInputData."""
    if len(run.args) == 1 and not run.kwargs:
        return run.args[0]
    return DAGInputData(*run.args, **run.kwargs)


class InputNode(DAGNode):
    """``execute``'s arguments (``with InputNode() as inp: dag = f.bind(inp)``);
    ``inp[i]``, ``inp["k"]`` and ``inp.k`` pick a part (``InputAttributeNode``)."""

    def __enter__(self) -> InputNode:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _execute_impl(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: _Run) -> Any:
        return _input_value(run)

    def __getitem__(self, key: int | str) -> InputAttributeNode:
        return InputAttributeNode(key, "__getitem__")

    def __getattr__(self, name: str) -> InputAttributeNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(name, "__getattr__")

    def __repr__(self) -> str:
        return "InputNode()"


class InputAttributeNode(DAGNode):
    """A part of ``execute``'s arguments: with several, ``inp[i]`` is the i-th positional
    one and ``inp["k"]``/``inp.k`` the keyword k; with one, an item or attribute of it."""

    def __init__(self, key: int | str, accessor: str) -> None:
        super().__init__()
        self._key = key
        self._accessor = accessor

    def _execute_impl(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: _Run) -> Any:
        value = _input_value(run)
        if isinstance(value, DAGInputData) or self._accessor == "__getitem__":
            return value[self._key]
        return getattr(value, str(self._key))

    def __repr__(self) -> str:
        return f"InputAttributeNode({self._key!r})"


class MultiOutputNode(DAGNode):
    """Several outputs: ``execute`` returns the list of their results."""

    def __init__(self, outputs: list[DAGNode] | tuple[DAGNode, ...]) -> None:
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise ValueError("MultiOutputNode takes a non-empty list of DAG nodes.")
        super().__init__((list(outputs),))

    def _execute_impl(self, args: tuple[Any, ...], kwargs: dict[str, Any], run: _Run) -> Any:
        return list(args[0])

    def __repr__(self) -> str:
        return f"MultiOutputNode({len(self._bound_args[0])})"
