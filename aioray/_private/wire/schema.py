"""The wire schema: every message between aioray's processes, declared once.

Floor 1 (wire). A message's body travels as msgpack (``protocol.py``); here each body
has a name and field types: a ``TypedDict`` for a map, a ``tuple`` for an array (its
positions typed). These are declarations only. At run time a TypedDict is a plain
dict: the short keys stay on the wire and the task path pays nothing for them.
Senders annotate what they build and handlers what they receive, so mypy checks a
misspelled or missing key and a wrong type on both sides (``tests/unit/test_schema.py``).

Conventions:
- A request body is named after its method (``RequestLease`` for ``request_lease``),
  its answer ``...Reply``; a notice has no reply. A method with no body sends None.
- An array is declared as a tuple (its positions typed). msgpack writes a list and a
  tuple alike and decodes every array as a list, so a receiver only indexes, slices and
  unpacks it. A sender that builds a tuple is checked; a few build lists still (their
  tests compare them as such), and those bodies reach ``rpc`` unchecked.
- Ids are ``bytes``: ObjectID 20, TaskID 16, WorkerID, NodeID and ActorID 16, JobID 4,
  PlacementGroupID 18 (``ids.py``).
- A key marked ``NotRequired`` may be absent: read it with ``.get`` or test ``in``.

Protocol version (``protocol.PROTOCOL_VERSION``). Every connection starts with a
``hello`` carrying the sender's version; a server refuses another version with the
reason, which the client raises (``handshake.check_hello``, ``rpc.connect``). Bump it when a
message changes so that a peer of the old version would misread it:
- a key or array position renamed, removed, reordered, or its type or meaning changed;
- a key or position becomes required, or a method is removed or renamed.
Do not bump it for an addition an old peer ignores or can do without:
- a new ``NotRequired`` key (old receivers never read it; new receivers ``.get`` it);
- a new trailing array position that receivers read behind a length check;
- a new method whose sender copes with an old peer's ``UnknownMethod`` error.
A bump changes this module, ``PROTOCOL_VERSION`` and ``docs/architecture.md`` together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, TypedDict

if TYPE_CHECKING:
    from typing_extensions import NotRequired

    from aioray._private.owner.object_ref import ObjectRef

# -- shared field types ------------------------------------------------------------------
HostPort = tuple[str, int]
Address = tuple[str, int, bytes]  # an owner or worker: [ip, port, worker id]
Resources = dict[str, float]  # resource name -> amount
ContainedRef = tuple[bytes, Address]  # a ref inside a value: [object id, its owner]
# A runtime env as it travels: core/runtime_env.py's normalized dict, whose values are
# per plugin (env_vars, working_dir, py_modules, pip, uv, conda, config, ...).
RuntimeEnv = dict[str, object]

# A scheduling strategy (core/scheduling_strategies.py; None is DEFAULT).
NodeAffinity = tuple[Literal["NODE"], bytes, bool, bool, bool]  # node, soft, spill, fail
LabelExpression = tuple[str, str, list[str]]  # [label, operator, values]
NodeLabels = tuple[Literal["LABEL"], list[LabelExpression], list[LabelExpression]]  # hard, soft
Strategy = Literal["SPREAD"] | NodeAffinity | NodeLabels | None

# Where a task or actor runs in a placement group: [group id, bundle index (-1: any),
# capture child tasks, the group's bundles (None: not known to the caller)].
Placement = tuple[bytes, int, bool, list[Resources] | None]

# -- the task path: push_task and push_actor_task ----------------------------------------
# An argument the task depends on (task_spec.py).
DEP_INLINE: Final = 0
DEP_SHM: Final = 1
DEP_OWNER: Final = 2
DepInline = tuple[Literal[0], bytes, int]  # value inline: its pickle and nbuf buffers follow
DepShm = tuple[Literal[1], bytes, bytes, Address | None]  # in that node's shm; its owner
DepOwner = tuple[Literal[2], bytes, Address | None]  # ask its owner for it
Dependency = DepInline | DepShm | DepOwner

STREAMING: Final = -1  # the wire value of num_returns="streaming" (owner/streaming.py)


class TaskSpec(TypedDict, total=False):
    """``push_task`` and ``push_actor_task`` (and the GCS's ``create_actor`` to a worker):
    one task, plus its argument buffers. Every spec has ``tid``, ``name``, ``nret``;
    the rest depends on the kind of task."""

    tid: bytes  # task id
    name: str  # the function's (or Class.method's) qualified name
    nret: int  # number of returns, or STREAMING
    job: bytes  # job id
    ns: str  # namespace
    owner: Address  # the caller, which owns the returns
    at: int  # attempt number (absent: 0)
    # the function (a normal task)
    fid: bytes  # sha1 of the pickled function
    fn: bytes | None  # the pickled function, on the first push of it to a worker
    # the arguments (raw buffers: the argument pickle and its buffers, then the inline deps)
    a: int  # buffers of the argument pickle (absent: no inline arguments)
    ar: int  # the arguments are dependency number ``ar`` (too large to go inline)
    d: list[Dependency]
    cr: list[ContainedRef]  # refs inside the arguments, lent to the worker (borrowing.py)
    # placement and resources
    res: Resources  # when not {"CPU": 1}
    gpu: list[int]  # GPU ids the lease granted
    pg: Placement
    ss: Strategy
    env: RuntimeEnv
    # options
    bp: int  # streaming backpressure: items ahead of the consumer (0: none)
    noev: bool  # record no task events
    # an actor call
    aid: bytes  # actor id
    m: str  # method name
    cg: str  # concurrency group
    seq: int  # the caller's sequence number for this actor (calls run in this order)
    # an actor's creation (the GCS sends it to the worker it leased)
    create: bool
    cls: bytes  # the pickled class
    meta: ActorMeta
    aname: str  # the actor's name ("" if none)
    restarts: int  # times the actor restarted before this creation


# A return value in a push reply, and a streamed item after its [task id, index].
RET_INLINE: Final = 0
RET_SHM: Final = 1
# [RET_INLINE, nbuf, is_error, contained?]: its pickle and nbuf buffers follow in the reply
ReturnInline = (
    tuple[Literal[0], int, bool] | tuple[Literal[0], int, bool, list[ContainedRef] | None]
)
# [RET_SHM, size, node id, contained?]: in that node's shared memory
ReturnShm = tuple[Literal[1], int, bytes] | tuple[Literal[1], int, bytes, list[ContainedRef] | None]
Return = ReturnInline | ReturnShm


class PushReply(TypedDict, total=False):
    """The answer to ``push_task``, ``push_actor_task`` and ``create_actor`` (to a worker),
    plus the inline returns' buffers in order."""

    r: list[Return]  # the return values (an error: nret copies of it, is_error set)
    t: float  # execution time, seconds (the submitter's pipelining average)
    o: tuple[int, int]  # [pid, output sequence]: the task printed; wait for those lines
    x: bool  # the error is the task's own exception (retry_exceptions applies)
    n: int  # a streaming task: the number of items it yielded
    pid: int  # an actor's creation: the worker's pid
    error: bool  # an actor's creation failed (``r`` is empty; its error follows)
    _lend: list[ObjectRef]  # never sent: refs inside the returns, lent before the reply


# -- leases: owner (or GCS) <-> raylet ----------------------------------------------------
class RequestLease(TypedDict):
    """``request_lease``: a worker for one scheduling class."""

    res: Resources  # must fit to grant
    env: NotRequired[RuntimeEnv | None]
    owner: NotRequired[bytes]  # the requesting worker's id
    ss: NotRequired[Strategy]
    retriable: NotRequired[bool]  # the memory monitor kills retriable work first
    hops: NotRequired[int]  # times it was spilled before (do not spill it on)
    hold: NotRequired[Resources]  # an actor's: held while it lives, if not ``res``
    actor: NotRequired[bytes]  # an actor's lease: the actor id


class LeaseReply(TypedDict, total=False):
    """``request_lease``'s answer, one of three: a grant (lid, wid, addr, gpus), a spill to
    another node (spill, hops), or a refusal (error and why)."""

    lid: int  # lease id (per raylet)
    wid: bytes  # the leased worker's id
    addr: HostPort  # the worker's address
    gpus: list[int]
    spill: tuple[bytes, str, int]  # ask that raylet: [node id, ip, port]
    hops: int  # with a spill: the request's hops so far
    error: str
    unschedulable: bool  # no node can ever run it
    pg_removed: bool  # its placement group was removed
    runtime_env_setup_failed: bool


ReturnLease = tuple[int, bool]  # ``return_lease`` [lease id, the worker died]
WorkerOomKilled = tuple[int, str]  # ``worker_oom_killed`` [lease id, why] (raylet -> owner)


class LeaseInfeasible(TypedDict):
    """``lease_infeasible`` (notice, raylet or GCS -> owner): no node can fit this shape."""

    res: Resources
    total: Resources


# ``cancel_task`` [task id, force, recursive?] (owner -> worker)
CancelTask = tuple[bytes, bool] | tuple[bytes, bool, bool]
# ``stream_item`` [task id, index, *Return] + the item's buffers (worker -> owner)
StreamItem = (
    tuple[bytes, int, Literal[0], int, bool, list[ContainedRef] | None]
    | tuple[bytes, int, Literal[1], int, bytes, list[ContainedRef] | None]
)
StreamAck = tuple[bytes, int]  # ``stream_ack`` [task id, items consumed] (owner -> worker)

# -- objects: owners, readers and raylets ---------------------------------------------------
# ``get_object`` oid -> the object; ``reconstruct_object`` oid | [oid, node lost on] -> the
# same after rebuilding it (lineage.py), or [OBJ_LOST, error class, why]; ``wait_object``
# oid -> True once it exists.
OBJ_INLINE: Final = 0
OBJ_SHM: Final = 1
OBJ_FREED: Final = 2
OBJ_LOST: Final = 3
ObjectReply = (
    ReturnInline  # [OBJ_INLINE, nbuf, is_error, contained?] + its pickle and buffers
    | ReturnShm  # [OBJ_SHM, size, node id, contained?]
    | tuple[Literal[2]]  # [OBJ_FREED]: the owner no longer has it
    | tuple[Literal[3], str, str]  # [OBJ_LOST, error class, why]
)
ReconstructObject = bytes | tuple[bytes, bytes]

# ``borrow`` [[oid, +n], [oid, n, ADOPT], [oid, -n], ...] (borrowing.py)
BorrowEntry = tuple[bytes, int] | tuple[bytes, int, int]

ErrorPair = tuple[str, str]  # [error class name, message]
# ``create_object`` [oid, size] (a writer -> its raylet) -> the bytes left free once there
# is room, or the path of a file on disk for an object larger than the store, or why not.
# [oid, size] or [oid, size, inode of the pooled segment it was written into]
CreateObject = tuple[bytes, int] | tuple[bytes, int, int]
CreateObjectReply = int | str | ErrorPair
# [oid, size, owner worker id] or with the pooled segment's inode after it
ObjectSealed = tuple[bytes, int, bytes | None] | tuple[bytes, int, bytes | None, int]
# ``pull_object`` [oid, source node id], ``restore_object`` oid -> None once the object is
# in this node's shared memory, or why not.
PullObject = tuple[bytes, bytes]
RestoreReply = ErrorPair | None
FreeObjectsAt = list[tuple[bytes, list[bytes]]]  # [[node id, [oid, ...]], ...]
FreeCopies = tuple[bytes, list[bytes]]  # ``free_copies`` [source node id, [oid, ...]]
TransferBeginReply = tuple[int] | ErrorPair  # ``transfer_begin`` oid -> [size] or why not
TransferChunk = tuple[bytes, int, int]  # ``transfer_chunk`` [oid, offset, length] -> 1 buffer


# -- handshake ------------------------------------------------------------------------------
class Hello(TypedDict, total=False):
    """``hello``, a client's first frame (rpc.connect adds version and auth)."""

    version: int
    auth: bytes  # HMAC of the server's challenge under the cluster token
    role: str  # driver, worker, peer, gcs, client, raylet, autoscaler
    worker_id: bytes
    pid: int
    port: int  # the owner's RPC port
    logs: bool  # a driver: forward its workers' printed lines to it
    node_id: bytes  # a raylet's connection to another raylet


class RayletHello(TypedDict):
    """What a raylet tells a client that said hello (its ``hello_check``)."""

    node_id: bytes
    session_id: str
    session_dir: str
    gcs_address: HostPort
    object_store_memory: int
    metrics_export_port: int


class RayletHelloReply(RayletHello):
    """A raylet's answer to ``hello``: the server's version and what it tells."""

    version: int


class GcsHello(TypedDict):
    """What the GCS tells a client that said hello."""

    session_id: str
    session_dir: str


class GcsHelloReply(GcsHello):
    version: int


# -- raylet handlers --------------------------------------------------------------------------
class RegisterWorker(TypedDict):
    """``register_worker``, from a worker this raylet started -> True."""

    worker_id: bytes
    port: int


WorkerLog = (
    tuple[int, str, str, list[str]]
    | tuple[int, str, str, list[str], str | None]
    | tuple[int, str, str, list[str], str | None, int]
)  # ``worker_log`` [pid, ip, stream, lines, name?, output sequence?]
NodeEvent = (
    tuple[Literal["added"], bytes, str, int] | tuple[Literal["dead"], bytes, str, int, bool]
)  # ``node_event`` [added, node, ip, port] | [dead, node, ip, port, ip shared]
# ``cluster_view`` [[node id, ip, port, total, available, alive, labels], ...]
NodeEntry = tuple[bytes, str, int, Resources, Resources, bool, dict[str, str]]
PrepareBundles = tuple[bytes, list[tuple[int, Resources]]]  # [group id, [[index, res]]]
CommitBundles = tuple[bytes, list[int]]  # [group id, indexes]
CancelBundles = tuple[bytes, list[int]] | tuple[bytes, list[int], bool]  # ..., removed?
ReadLog = tuple[str, int, int | None]  # ``read_log`` [name, tail lines, offset]


class ReadLogReply(TypedDict):
    data: bytes  # the lines read
    offset: int  # where to read on from (follow)


class MetricsReport(TypedDict, total=False):
    """``report_metrics`` (notice, process -> its raylet): user metrics and task counts."""

    d: list[tuple[str, str, str, list[str], list[float] | None]]  # new definitions
    c: list[tuple[str, list[str], float]]  # counters: [name, label values, increment]
    g: list[tuple[str, list[str], float]]  # gauges: [name, label values, value]
    h: list[tuple[str, list[str], list[int], float, int]]  # [name, labels, buckets, sum, n]
    t: list[tuple[str, str, str, int]]  # a worker's tasks: [state, name, job, count]


# -- GCS handlers ---------------------------------------------------------------------------
class RegisterNode(TypedDict):
    """``register_node``, from a raylet -> RegisterNodeReply."""

    node_id: bytes
    ip: str
    port: int
    resources: Resources
    metrics_export_port: NotRequired[int]
    hostname: NotRequired[str]
    labels: NotRequired[dict[str, str]]
    head: NotRequired[bool]
    actors: NotRequired[list[bytes]]  # a raylet rejoining a restarted GCS: its actors


class RegisterNodeReply(TypedDict, total=False):
    session_id: str
    session_dir: str
    refused: str  # a node already declared dead


class RegisterJob(TypedDict):
    """``register_job``, from a driver -> RegisterJobReply."""

    pid: int
    ns: str  # "" for an anonymous namespace
    ip: NotRequired[str]
    cmd: NotRequired[str]  # the driver's command line (Ray's entrypoint)
    sid: NotRequired[str | None]  # the job submission it runs, if any


class RegisterJobReply(TypedDict):
    job_id: bytes
    namespace: str
    task_events_ms: NotRequired[float]


ReportResources = tuple[bytes, Resources] | tuple[bytes, Resources, Resources]  # avail, total?
NodeStopping = tuple[bytes, str]  # [node id, why]
# ``report_autoscaler_state`` (notice, the autoscaler -> GCS): what ``aioray status`` shows
# of it (launches pending and failed, idle nodes, infeasible demand; autoscaler/monitor.py).
AutoscalerState = dict[str, object]
ReportDemand = tuple[bytes, list[tuple[Resources, int]], bool]  # [node, [[shape, n]], idle]
ActorWorkerDied = tuple[bytes, bytes, str]  # [aid, worker id, reason]
ActorExiting = tuple[bytes, bytes]  # [aid, worker id] (raylet -> GCS)
KillActor = tuple[bytes, bool]  # [aid, no_restart]
# The death of an actor ray.kill ended for good (the GCS's record, and its killer's own).
KILLED_BY_RAY_KILL = "The actor was killed by ray.kill()."
WaitActor = tuple[bytes, int]  # [aid, version]
NameNamespace = tuple[str, str]  # ``get_named_actor``, ``get_placement_group`` [name, ns]
ListNamedActors = tuple[str, bool]  # [namespace, all namespaces]
KvPut = tuple[str, bytes, bytes, bool]  # [namespace, key, value, overwrite]
KvKey = tuple[str, bytes]  # ``kv_get``, ``kv_del`` [namespace, key]; ``kv_keys`` [ns, prefix]
WaitPlacementGroup = tuple[bytes, float | None]  # [group id, timeout s]
StateList = tuple[str, list[tuple[str, str, str]], int, bool]  # resource, filters, limit, detail


# ``state_list``'s answer, Ray's list response: {total, num_after_truncation, num_filtered,
# result: the rows left after the filters (at most ``limit``), and for tasks
# num_tasks_evicted, num_status_task_events_dropped}. A row maps Ray's column names to
# values (core/state_schema.py); these State API answers stay plain dicts, as Ray's JSON.
StateListReply = dict[str, object]


# A method's signature (core/signatures.py): [lo, hi, [[name, kind, has default], ...]]
SignatureWire = tuple[int, int, list[tuple[str, int, bool]]]


class MethodMeta(TypedDict):
    """One method of an actor class, as its handles call it."""

    nret: int | str  # an int, or "streaming"
    cg: str | None  # concurrency group
    bp: int  # streaming backpressure
    sig: SignatureWire | None  # checked at .remote()


# What every handle of an actor knows of its class (actor.py sends every key; its worker
# reads them with .get, from an empty meta until the creation arrives). The functional
# form, since one key, "async" (an async actor: calls run on its own event loop), is a
# Python keyword.
ActorMeta = TypedDict(
    "ActorMeta",
    {
        "cls": str,  # the class's qualified name
        "module": str,
        "methods": dict[str, MethodMeta],
        "async": bool,
        "max_concurrency": int,
        "groups": dict[str, int],  # concurrency groups: name -> max concurrency
        "max_task_retries": int,
        "max_pending_calls": int,
        "noev": bool,  # record no task events (absent: record them)
    },
    total=False,
)


class ActorRequest(TypedDict):
    """An actor to create, as its creator describes it (CreateActor without its task)."""

    aid: bytes
    name: str | None
    ns: str
    detached: bool
    get_if_exists: bool
    max_restarts: int
    res: Resources  # to place it
    hold: Resources  # held while it lives
    env: RuntimeEnv | None
    meta: ActorMeta
    owner: bytes  # the owner's worker id
    node: bytes  # the owner's node (ties go to it)
    ss: Strategy


class CreateActor(ActorRequest):
    """``create_actor``, from the owner to the GCS (+ the creation task's argument buffers)
    -> CreateActorReply once registered."""

    spec: TaskSpec  # the creation task, sent to the worker the GCS leases


class CreateActorReply(TypedDict, total=False):
    aid: bytes  # this actor, or the existing one of that name (get_if_exists)
    meta: ActorMeta
    error: str
    exists: bool  # the name is taken


class ActorInfo(TypedDict):
    """``wait_actor``'s answer (and a row of ``list_actors``)."""

    aid: bytes
    state: str  # PENDING_CREATION, ALIVE, RESTARTING, DEAD
    version: int
    addr: NotRequired[Address | None]
    death: NotRequired[str]
    meta: NotRequired[ActorMeta]
    name: NotRequired[str | None]
    namespace: NotRequired[str]
    pid: NotRequired[int]
    num_restarts: NotRequired[int]
    unschedulable: NotRequired[bool]
    runtime_env_failed: NotRequired[bool]
    node_id: NotRequired[bytes | None]


class NamedActor(TypedDict):
    name: str
    namespace: str


class CreatePlacementGroup(TypedDict):
    """``create_placement_group`` -> {ok} or {error} (a notice when the group has no name)."""

    id: bytes
    name: str
    ns: str
    bundles: list[Resources]
    strategy: str  # PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    detached: bool
    job: bytes


class CreatePlacementGroupReply(TypedDict, total=False):
    ok: bool
    error: str


class PlacementGroupInfo(TypedDict):
    """A placement group's public record (``get_placement_group``, ``placement_group_table``)."""

    id: bytes
    name: str
    ns: str
    bundles: list[Resources]
    strategy: str
    detached: bool
    job: bytes
    state: str  # PENDING, CREATED, REMOVED, RESCHEDULING
    nodes: list[bytes | None]  # each bundle's node
    created_at: float


# A task's description, sent once per process and numbered (owner/task_events.py):
# [number, name, type, job id, actor id, resources as (name, amount) pairs, pg id].
TaskDescription = tuple[
    int, str, str, bytes, bytes | None, list[tuple[str, float]] | None, bytes | None
]


class TaskEventsHeader(TypedDict):
    """``add_task_events`` (notice, owner or executor -> GCS) + 3 buffers: the msgpack blob
    of the rows with extras (errors), the fixed transition rows, the fixed first rows
    (owner/task_events.py)."""

    n: int  # rows in the batch
    new: int  # of which first rows (new tasks)
    dropped: int  # rows dropped since the last batch (buffer full)
    node: bytes
    worker: bytes
    pid: int
    descs: list[TaskDescription]  # descriptions the GCS has not had from this process
