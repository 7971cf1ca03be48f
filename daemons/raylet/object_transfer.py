"""Object transfer between nodes: pull remote objects into this node's store, and
serve this node's objects to the raylets that pull them.

A process reads only segments of its own node's store. When it needs an object
whose copy is on another node, it asks its raylet (``pull_object [oid, node]``),
which copies the object from that node's raylet:

1. ``transfer_begin oid`` -> ``[size]``: the source maps its segment (restoring
   it from its spill file first if needed) and remembers who pulled it.
2. Room is reserved in this node's store as a *secondary* copy (evictable while
   no one reads it; the store may evict or spill to make the room).
3. The copy is written into ``<segment>.pulling``: a pre-faulted segment from the
   node's pool when it has one (kept mapped by the raylet, so the next pull into it
   faults no page), else a fresh file preallocated chunk by chunk. It is mapped, and
   ``transfer_chunk [oid, offset, length]`` requests, CHUNK_BYTES each, WINDOW of
   them in flight, have each reply's bytes received by the socket straight into the
   mapped destination (``Connection.call_into``). No part of the object passes
   through Python memory of its own. The seal (the object id at offset 0) is not
   requested: it is written last, here, so a reader that opened the segment in an
   earlier life never takes a partial copy for the object.
4. ``transfer_end oid``; the file is renamed into place (a reader never maps a
   half-written copy) and sealed as a secondary copy. A copy larger than this
   node's whole store is written to a file on disk instead, linked from the
   segment's place (the store's fallback allocation).
Every reader of the object on this node waits for the same pull (one per object
per node), and later readers find the segment in place without asking.

Frees. Every copy is pulled from the node that holds the primary copy, so that
node knows every copy: when its owner's free reaches it, it forwards the free to
each node that pulled. The owner sends frees of objects on other nodes to its
own raylet (``free_objects_at``), which forwards them to the primary's node; if
that node is dead, to every node (the copies it knew of are orphans now). A
forwarded free names the node the copies came from (``free_copies [source,
oids]``) and frees only those: the owner frees a lost object's old copies when it
rebuilds it under the same id, and that free must not hit the rebuilt copy.

A pull fails with ObjectLostError when the source node is dead or unreachable
or no longer has the object; the reader then asks the owner to rebuild it. A pull
that makes no progress for FETCH_FAIL_TIMEOUT_S (the source raylet is alive but does
not answer) fails with ObjectFetchTimedOutError, which is final, as in Ray.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import mmap
import os
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aioray.daemons.raylet.object_manager import CREATING, FALLBACK, IN_SHM

from aioray._private.rpc import rpc
from aioray._private.wire import config, object_store
from aioray._private.wire.schema import FreeObjectsAt

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet

logger = logging.getLogger(__name__)

CHUNK_BYTES = int(config.env_float("TRANSFER_CHUNK_BYTES", 8 * 1024 * 1024))
WINDOW = int(config.env_float("TRANSFER_WINDOW", 4))  # chunk requests in flight per pull

Reply = list[str] | None  # None: the copy is here; [error class name, message]


def _create(path: str, size: int) -> tuple[int, mmap.mmap]:
    """Create the destination file at its full size (no pages yet) and map it writable."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, max(size, 1))
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise


def _open_pooled(path: str, size: int, cls: int, ino: int, maps: Any) -> tuple[int, Any]:
    """Open and map a pooled segment claimed for a pulled copy, trimmed to ``size``."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = maps.mapped(path, ino, cls)  # (before trimming: a mapping fits in its file)
        if size < cls:
            os.ftruncate(fd, size)
        return fd, mm
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


class ObjectTransfer:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self.store = raylet.store
        self.peers: dict[bytes, rpc.Connection] = {}  # other raylets, by node id
        self._opening: dict[bytes, asyncio.Future[rpc.Connection]] = {}
        self.pulls: dict[bytes, asyncio.Future[Reply]] = {}
        self.copies: dict[bytes, set[bytes]] = {}  # our objects -> nodes that pulled them
        # oid -> [view of the segment, pullers, descriptor holding a reader's lock or -1]
        self.serving: dict[bytes, list[Any]] = {}
        self._sending: set[asyncio.Future[None]] = set()
        self.io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aioray-pull")
        self.num_pulls = 0
        self.bytes_pulled = 0
        self.num_served = 0

    def __repr__(self) -> str:
        return (
            f"<ObjectTransfer peers={len(self.peers)} pulling={len(self.pulls)} "
            f"serving={len(self.serving)} pulled={self.num_pulls}>"
        )

    # -- pulling --------------------------------------------------------------------------
    def pull(self, oid: bytes, source: bytes) -> Any:
        """A reader here wants ``oid``, whose primary copy is on node ``source``."""
        pending = self.pulls.get(oid)
        if pending is not None:
            return asyncio.shield(pending)
        e = self.store.manager.entries.get(oid)
        if e is not None and e.state != CREATING:
            if e.primary:  # rebuilt here since the reader learned its location
                return self.store.restore_object(oid)
            if e.state in (IN_SHM, FALLBACK) and os.path.exists(self.store.segment(oid)):
                return None
            self.store.free_objects([oid])  # a cached copy without its segment: start over
        fut = self.pulls[oid] = asyncio.ensure_future(self._pull(oid, source))
        fut.add_done_callback(lambda _: self.pulls.pop(oid, None))
        return asyncio.shield(fut)

    async def _pull(self, oid: bytes, source: bytes) -> Reply:
        try:
            conn = await asyncio.wait_for(
                asyncio.shield(self.connect(source)), config.FETCH_FAIL_TIMEOUT_S
            )
            begin = await asyncio.wait_for(
                conn.call("transfer_begin", oid), config.FETCH_FAIL_TIMEOUT_S
            )
        except (ConnectionError, rpc.RpcError) as e:
            return ["ObjectLostError", self._unreachable(source, e)]
        except asyncio.TimeoutError:
            return self._timed_out(oid, source)
        if len(begin) == 2:
            return list(begin)  # the source does not have it
        size = int(begin[0])
        try:
            refused = await self.store.reserve_secondary(oid, size, source)
            if refused is not None:
                return refused
            return await self._receive(conn, oid, size, source)
        finally:
            if not conn.is_closed:
                conn.notify("transfer_end", oid)

    async def _receive(self, conn: rpc.Connection, oid: bytes, size: int, source: bytes) -> Reply:
        path = self.store.segment(oid)
        on_disk = self.store.on_disk(oid)  # too large for the store: a file on disk
        tmp = (on_disk or path) + ".pulling"
        pooled = None if on_disk else self.store.pool.take(size, tmp)
        loop = asyncio.get_running_loop()
        try:
            if pooled:
                fd, mm = _open_pooled(tmp, size, pooled[0], pooled[1], self.store.pool.maps)
            else:
                fd, mm = _create(tmp, size)
        except OSError as e:
            self._give_back(oid)
            return ["ObjectStoreFullError", f"cannot create the copy of {oid.hex()} here: {e}"]
        starts = range(object_store.SEAL_BYTES, size, CHUNK_BYTES)
        if pooled:  # its pages exist
            reserved = [loop.create_future() for _ in starts]
            for f in reserved:
                f.set_result(None)
            os.close(fd)
        else:
            # Reserve each chunk's pages (posix_fallocate, on the I/O thread, in order)
            # before asking for it: a full /dev/shm is then an error here, not a SIGBUS
            # while receiving, and the allocation of the next chunks overlaps this one's
            # transfer.
            reserved = [
                loop.run_in_executor(
                    self.io, os.posix_fallocate, fd, off, min(CHUNK_BYTES, size - off)
                )
                for off in starts
            ]
            loop.run_in_executor(self.io, os.close, fd)  # after them: one thread, FIFO
        view = memoryview(mm)
        try:
            await self._chunks(conn, oid, view, size, reserved)
            view[: object_store.SEAL_BYTES] = object_store.seal_of(oid)  # last: complete
        except (ConnectionError, rpc.RpcError, OSError) as e:
            _unlink(tmp)
            self._give_back(oid)
            if isinstance(e, (ConnectionError, rpc.RpcError)):
                return ["ObjectLostError", self._unreachable(source, e)]
            if isinstance(e, asyncio.TimeoutError):  # (an OSError too)
                return self._timed_out(oid, source)
            return ["ObjectStoreFullError", f"cannot write the copy of {oid.hex()} here: {e}"]
        finally:
            for f in reserved:
                f.cancel()
            view.release()
            if not pooled:  # (the pool's mapping is kept, to receive into again)
                try:
                    mm.close()
                except BufferError:  # a late chunk view still exists: the GC unmaps it
                    pass
        entry = self.store.manager.entries.get(oid)
        if entry is None or entry.primary or entry.state not in (CREATING, FALLBACK):
            _unlink(tmp)  # freed while being pulled
            return ["ObjectLostError", f"object {oid.hex()} was freed while being pulled"]
        if on_disk is not None:
            os.rename(tmp, on_disk)
            _unlink(path)
            os.symlink(on_disk, path)
        else:
            os.rename(tmp, path)
        self.store.add_secondary(oid, size)
        entry.ino = pooled[1] if pooled else _inode(path)  # so the pool may take it back
        self.num_pulls += 1
        self.bytes_pulled += size
        return None

    async def _chunks(
        self,
        conn: rpc.Connection,
        oid: bytes,
        view: memoryview,
        size: int,
        reserved: list[asyncio.Future[None]],
    ) -> None:
        """Receive ``size`` bytes into ``view``, WINDOW chunk requests in flight; chunk
        ``i`` is asked for once ``reserved[i]`` is done."""
        offsets = iter(enumerate(range(object_store.SEAL_BYTES, size, CHUNK_BYTES)))
        in_flight: dict[asyncio.Future[Any], memoryview] = {}  # chunk request -> its place
        try:
            while True:
                for i, off in offsets:
                    await reserved[i]
                    n = min(CHUNK_BYTES, size - off)
                    dest = view[off : off + n]
                    in_flight[conn.call_into("transfer_chunk", [oid, off, n], [dest])] = dest
                    if len(in_flight) >= WINDOW:
                        break
                if not in_flight:
                    return
                done, _ = await asyncio.wait(
                    in_flight,
                    timeout=config.FETCH_FAIL_TIMEOUT_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:  # no chunk arrived for that long: the source is stuck
                    raise asyncio.TimeoutError
                for f in done:
                    dest = in_flight.pop(f)
                    _, bufs = f.result()  # raises what the source raised
                    if not bufs or bufs[0] is not dest:  # not received into its place
                        raise rpc.RpcError("transfer_chunk", "ProtocolError", "chunk not received")
        finally:
            for f in in_flight:
                f.cancel()

    def _give_back(self, oid: bytes) -> None:
        e = self.store.manager.entries.get(oid)
        if e is not None and not e.primary and e.state == CREATING:
            self.store.free_objects([oid])

    def _timed_out(self, oid: bytes, source: bytes) -> list[str]:
        return [
            "ObjectFetchTimedOutError",
            f"Fetch for object {oid.hex()} timed out: its node {source.hex()} did not answer "
            f"for {config.FETCH_FAIL_TIMEOUT_S:g} s (fetch_fail_timeout_milliseconds).",
        ]

    def _unreachable(self, source: bytes, e: BaseException) -> str:
        node = self.raylet.spillback.view.nodes.get(source)
        if node is not None and not node.alive:
            return f"the node {source.hex()} that held it died"
        return f"its node {source.hex()} could not be reached ({e})"

    # -- serving --------------------------------------------------------------------------
    async def begin(self, conn: rpc.Connection, oid: bytes) -> list[Any]:
        """Another raylet starts pulling ``oid`` from us: ``[size]`` or ``[class, why]``."""
        entry = self.serving.get(oid)
        if entry is None:
            try:
                view, lock = self._map(oid)
            except FileNotFoundError:
                reply = self.store.restore_object(oid)  # spilled: bring it back first
                if isinstance(reply, asyncio.Future):
                    reply = await reply
                if reply is not None:
                    return list(reply)
                try:
                    view, lock = self._map(oid)
                except FileNotFoundError:
                    return ["ObjectLostError", f"object {oid.hex()} left node {self._me()}"]
            entry = self.serving.get(oid)
            if entry is None:
                entry = self.serving[oid] = [view, 0, lock]
            elif lock >= 0:
                os.close(lock)
        entry[1] += 1
        served: list[bytes] = conn.state.setdefault("serving", [])
        if not served:
            conn.on_close.append(self._puller_gone)
        served.append(oid)
        peer = (conn.peer_info or {}).get("node_id")
        if peer is not None:
            self.copies.setdefault(oid, set()).add(peer)
            self._remember(peer, conn)
        self.num_served += 1
        return [entry[0].nbytes]

    def _map(self, oid: bytes) -> tuple[memoryview, int]:
        """A view of this node's copy of ``oid`` to send from, and the descriptor holding
        its reader's lock (-1: the view holds it). A pooled segment is sent from the
        raylet's kept mapping, so its pages fault once per segment, not per transfer."""
        path = self.store.segment(oid)
        e = self.store.manager.entries.get(oid)
        if e is not None and e.ino and self.store.pool.enabled:
            try:
                return self.store.pool.maps.view(path, e.ino, oid)
            except FileNotFoundError:
                pass  # not that file (a rerun's copy replaced it): map it as any reader
        return object_store.map_segment(path, oid), -1

    def chunk(self, oid: bytes, offset: int, length: int) -> rpc.Reply:
        entry = self.serving.get(oid)
        if entry is None:
            raise KeyError(f"object {oid.hex()} is not being transferred from here")
        view: memoryview = entry[0]
        if offset < 0 or length < 0 or offset + length > view.nbytes:
            raise ValueError(f"chunk {offset}+{length} outside object of {view.nbytes} bytes")
        return rpc.Reply(None, [view[offset : offset + length]])  # sent from the mapping

    def end(self, conn: rpc.Connection, oid: bytes) -> None:
        served: list[bytes] = conn.state.get("serving", [])
        if oid in served:
            served.remove(oid)
            self._release(oid)

    def _release(self, oid: bytes) -> None:
        entry = self.serving.get(oid)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self.serving[oid]  # unmapped once the last chunk in flight is sent
                if entry[2] >= 0:  # every chunk was received: the pool may reuse it now
                    os.close(entry[2])

    def _puller_gone(self, conn: rpc.Connection) -> None:
        for oid in conn.state.get("serving", []):
            self._release(oid)

    # -- frees ------------------------------------------------------------------------------
    def freed(self, oids: list[bytes]) -> None:
        """Objects of this node were freed: so are the copies other nodes pulled."""
        by_node: dict[bytes, list[bytes]] = {}
        for oid in oids:
            for node in self.copies.pop(oid, ()):
                by_node.setdefault(node, []).append(oid)
        for node, batch in by_node.items():
            self.send(node, "free_copies", [self.raylet.node_id, batch])

    def free_at(self, groups: FreeObjectsAt) -> None:
        """An owner here freed objects whose primary copies are on other nodes."""
        for node, oids in groups:
            if node == self.raylet.node_id:
                self.raylet.free_here(oids)
                continue
            view = self.raylet.spillback.view.nodes.get(node)
            if view is not None and view.alive:
                self._spawn(self._free_at_node(node, oids))
            else:
                self._free_orphans(node, oids)

    async def _free_at_node(self, node: bytes, oids: list[bytes]) -> None:
        """Tell the primary's node, which forwards the free to its copies. A call, not a
        notice: our view of a node that just died may still say alive, and a free that
        never reached it would leave its copies elsewhere forever."""
        try:
            await (await self.connect(node)).call("free_objects", oids)
        except ConnectionError:
            self._free_orphans(node, oids)

    def _free_orphans(self, node: bytes, oids: list[bytes]) -> None:
        """The primary's node is dead: its copies lost their way to the frees, so every
        node is told. Only the copies pulled from the dead node: the owner may be
        rebuilding the object under this id right now, here or anywhere (issue 14)."""
        self.store.free_copies(node, oids)
        for other in self.raylet.spillback.view.nodes.values():
            if other.alive and other.node_id not in (self.raylet.node_id, node):
                self.send(other.node_id, "free_copies", [node, oids])

    def send(self, node: bytes, method: str, body: Any) -> None:
        conn = self.peers.get(node)
        if conn is not None and not conn.is_closed:
            conn.notify(method, body)
            return

        async def later() -> None:
            try:
                (await self.connect(node)).notify(method, body)
            except ConnectionError as e:
                logger.info("cannot tell node %s %s: %s", node.hex()[:8], method, e)

        self._spawn(later())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    # -- connections to other raylets ----------------------------------------------------
    async def connect(self, node: bytes) -> rpc.Connection:
        conn = self.peers.get(node)
        if conn is not None and not conn.is_closed:
            return conn
        pending = self._opening.get(node)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._opening[node] = asyncio.get_running_loop().create_future()
        try:
            ip, port = await self._address(node)
            conn, _ = await rpc.connect(
                ip,
                port,
                handlers=self.raylet.server_handlers,
                hello={"role": "raylet", "node_id": self.raylet.node_id},
                name=f"raylet {node.hex()[:8]}",
            )
        except BaseException as e:
            del self._opening[node]
            pending.set_exception(e)
            pending.exception()
            raise
        del self._opening[node]
        self._remember(node, conn)
        pending.set_result(conn)
        return conn

    def _remember(self, node: bytes, conn: rpc.Connection) -> None:
        old = self.peers.get(node)
        if old is not None and not old.is_closed:
            return
        self.peers[node] = conn

        def forget(c: rpc.Connection) -> None:
            if self.peers.get(node) is c:
                del self.peers[node]

        conn.on_close.append(forget)

    async def _address(self, node: bytes) -> tuple[str, int]:
        view = self.raylet.spillback.view.nodes.get(node)
        if view is not None:
            if not view.alive:
                raise ConnectionError(f"node {node.hex()} is dead")
            return view.ip, view.port
        gcs = self.raylet.gcs
        if gcs is not None and not gcs.is_closed:  # joined after our last cluster view
            for n in await gcs.call("get_nodes"):
                if n["NodeID"] == node.hex():
                    if not n["Alive"]:
                        raise ConnectionError(f"node {node.hex()} is dead")
                    return n["NodeManagerAddress"], int(n["NodeManagerPort"])
        raise ConnectionError(f"node {node.hex()} is not in the cluster")

    def node_died(self, node: bytes) -> None:
        conn = self.peers.pop(node, None)
        if conn is not None:
            conn.close()  # pulls from it fail now: their readers go to lineage
        for holders in self.copies.values():
            holders.discard(node)

    def _me(self) -> str:
        return self.raylet.node_id.hex()

    def stats(self) -> dict[str, int]:
        return {
            "pulls": self.num_pulls,
            "bytes_pulled": self.bytes_pulled,
            "served": self.num_served,
            "pulling": len(self.pulls),
            "peers": len(self.peers),
        }

    def close(self) -> None:
        for conn in list(self.peers.values()):
            conn.close()
        self.peers.clear()
        for fut in self.pulls.values():
            fut.cancel()
        for entry in self.serving.values():
            if entry[2] >= 0:
                os.close(entry[2])
        self.serving.clear()
        self.io.shutdown(wait=False, cancel_futures=True)
