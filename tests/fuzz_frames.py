"""A seeded mutation fuzzer over recorded frames, and raw clients that deliver its inputs.

``record`` captures every frame a driver sends or receives during a real workload
(by port). ``Mutator`` turns those frames into hostile inputs: flipped, inserted
and deleted bytes, truncations, tampered length prefixes, header fields of the
wrong msgpack type, methods sent to the wrong service, spliced frames. The
``RawPeer`` delivers them over a plain socket, with or without a valid handshake.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from aioray._private.rpc import rpc
from aioray._private.wire import auth, protocol
from aioray._private.wire.protocol import PREFIX, REQUEST, FrameDecoder

Frame = tuple[int, int, "str | None", Any, list[bytes]]
MAX_RECORDED_BUFFER = 64 * 1024

# What any authenticated peer may legitimately ask, and which ends processes or rewrites
# the cluster's membership, the fuzzer never sends well formed: ``kill_actor`` (Ray's
# ray.kill, from any driver) and ``register_node`` (a new node joining). What only one
# party may send (a node's raylet, the GCS) is refused from the fuzzer's peer: it is sent.
DESTRUCTIVE = frozenset({"kill_actor", "register_node"})


@contextlib.contextmanager
def record(corpus: dict[int, list[Frame]]) -> Iterator[None]:
    """Record, by the remote port of their connection, frames this process sends, and
    by the local port the requests it receives on its own servers."""
    send, dispatch = rpc.Connection._send, rpc.Connection._dispatch

    def port(conn: rpc.Connection, which: str) -> int:
        t = conn._transport
        name = t.get_extra_info(which) if t is not None else None
        return int(name[1]) if name else 0

    def keep(buffers: Any) -> list[bytes]:
        return [bytes(memoryview(b)[:MAX_RECORDED_BUFFER]) for b in buffers]

    def sending(self: rpc.Connection, kind: int, seq: int, method: Any, body: Any, bufs: Any = ()):  # type: ignore[no-untyped-def]
        corpus.setdefault(port(self, "peername"), []).append((kind, seq, method, body, keep(bufs)))
        return send(self, kind, seq, method, body, bufs)

    def receiving(self: rpc.Connection, kind: int, seq: int, method: Any, body: Any, bufs: Any):  # type: ignore[no-untyped-def]
        if self._server_side and kind == REQUEST:
            corpus.setdefault(port(self, "sockname"), []).append(
                (kind, seq, method, body, keep(bufs))
            )
        return dispatch(self, kind, seq, method, body, bufs)

    def sending_now(  # type: ignore[no-untyped-def]
        self: rpc.Connection, method: str, body: Any, bufs: Any, then: Any, written: Any
    ):
        # (a request a caller thread writes itself: recorded as if sent, seq unknown yet)
        sent = call_then_now(self, method, body, bufs, then, written)
        if sent:
            corpus.setdefault(port(self, "peername"), []).append(
                (REQUEST, 1, method, body, keep(bufs))
            )
        return sent

    call_then_now = rpc.Connection.call_then_now
    rpc.Connection._send = sending  # type: ignore[method-assign]
    rpc.Connection._dispatch = receiving  # type: ignore[method-assign]
    rpc.Connection.call_then_now = sending_now  # type: ignore[method-assign]
    try:
        yield
    finally:
        rpc.Connection._send = send  # type: ignore[method-assign]
        rpc.Connection._dispatch = dispatch  # type: ignore[method-assign]
        rpc.Connection.call_then_now = call_then_now  # type: ignore[method-assign]


def encode(kind: Any, seq: Any, method: Any, body: Any, buffers: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    return b"".join(bytes(p) for p in protocol.encode_frame(kind, seq, method, body, buffers))


INTERESTING_INTS = [0, 1, -1, 2, 255, 256, 2**31, 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1]
INTERESTING_BYTES = [0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xC0, 0xDC, 0xDD, 0xDE, 0xDF, 0xC6, 0xDB]


class Mutator:
    """Hostile inputs derived from real frames; the same seed gives the same inputs."""

    def __init__(self, frames: list[Frame], methods: list[str], seed: int) -> None:
        self.frames = frames
        self.methods = methods
        self.rng = random.Random(seed)
        self.strategies: list[Callable[[Frame], bytes]] = [
            self.flip_bits,
            self.overwrite_bytes,
            self.insert_bytes,
            self.delete_range,
            self.truncate,
            self.tamper_prefix,
            self.tamper_buffer_length,
            self.wrong_body_type,
            self.wrong_field_type,
            self.wrong_header_field,
            self.other_method,
            self.splice,
            self.garbage_header,
        ]

    def one(self) -> bytes:
        frame = self.rng.choice(self.frames)
        return self.rng.choice(self.strategies)(frame)

    # -- byte-level -----------------------------------------------------------------
    def _bytes(self, frame: Frame) -> bytearray:
        return bytearray(encode(*frame))

    def flip_bits(self, frame: Frame) -> bytes:
        b = self._bytes(frame)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(b))
            b[i] ^= 1 << self.rng.randrange(8)
        return bytes(b)

    def overwrite_bytes(self, frame: Frame) -> bytes:
        b = self._bytes(frame)
        for _ in range(self.rng.randint(1, 4)):
            b[self.rng.randrange(len(b))] = self.rng.choice(INTERESTING_BYTES)
        return bytes(b)

    def insert_bytes(self, frame: Frame) -> bytes:
        b = self._bytes(frame)
        at = self.rng.randrange(len(b) + 1)
        return bytes(b[:at] + self.rng.randbytes(self.rng.randint(1, 32)) + b[at:])

    def delete_range(self, frame: Frame) -> bytes:
        b = self._bytes(frame)
        at = self.rng.randrange(len(b))
        return bytes(b[:at] + b[at + self.rng.randint(1, 16) :])

    def truncate(self, frame: Frame) -> bytes:
        b = self._bytes(frame)
        return bytes(b[: self.rng.randrange(len(b))])

    def tamper_prefix(self, frame: Frame) -> bytes:
        b = self._bytes(frame)
        hlen, nbuf = PREFIX.unpack_from(b)
        if self.rng.random() < 0.5:
            hlen = self.rng.choice([0, 1, hlen - 1, hlen + 1, 2**31, 2**32 - 1, 5000, 70000])
        else:
            nbuf = self.rng.choice([0, 1, nbuf + 1, 4096, 4097, 2**32 - 1])
        return PREFIX.pack(hlen % 2**32, nbuf % 2**32) + bytes(b[8:])

    def tamper_buffer_length(self, frame: Frame) -> bytes:
        kind, seq, method, body, buffers = frame
        buffers = buffers or [b"x" * 8]
        b = self._bytes((kind, seq, method, body, buffers))
        i = self.rng.randrange(len(buffers))
        n = self.rng.choice([0, 1, len(buffers[i]) + 1, 2**33, 2**33 + 1, 2**40, 2**64 - 1])
        struct.pack_into("<Q", b, 8 + 8 * i, n)
        return bytes(b)

    # -- msgpack-level ----------------------------------------------------------------
    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 2 or r < 0.35:
            return self.rng.choice(
                [
                    None,
                    True,
                    False,
                    self.rng.choice(INTERESTING_INTS),
                    float("nan"),
                    float("inf"),
                    -0.5,
                    "",
                    "x" * self.rng.randint(1, 40),
                    "\x00",
                    b"",
                    self.rng.randbytes(self.rng.choice([1, 16, 20, 28, 32])),
                ]
            )
        if r < 0.7:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 5))]
        keys: list[Any] = ["r", "x", "id", "name", "args", 0, -1, b"k", None, 1.5]
        return {self.rng.choice(keys): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def wrong_body_type(self, frame: Frame) -> bytes:
        kind, seq, method, _, buffers = frame
        return encode(kind, seq, method, self.value(), buffers)

    def wrong_field_type(self, frame: Frame) -> bytes:
        """Replace one element, at any depth, of the body by a value of another type."""
        kind, seq, method, body, buffers = frame
        return encode(kind, seq, method, self._replace_one(body), buffers)

    def _replace_one(self, v: Any) -> Any:
        if isinstance(v, list) and v and self.rng.random() < 0.8:
            v = list(v)
            i = self.rng.randrange(len(v))
            v[i] = self._replace_one(v[i])
            return v
        if isinstance(v, dict) and v and self.rng.random() < 0.8:
            v = dict(v)
            k = self.rng.choice(list(v))
            if self.rng.random() < 0.15:
                del v[k]
            else:
                v[k] = self._replace_one(v[k])
            return v
        return self.value()

    def wrong_header_field(self, frame: Frame) -> bytes:
        kind, seq, method, body, buffers = frame
        which = self.rng.randrange(3)
        if which == 0:
            kind = self.rng.choice([-1, 4, 255, 2**32, "0", None, 1.0, 0, 1, 2, 3])
        elif which == 1:
            seq = self.rng.choice([-1, 0, 2**63 - 1, 2**64 - 1, "1", None, b"\x01", 1.5])
        else:
            method = self.rng.choice([None, 7, b"hello", "", "x" * 300, ["a"], "__init__"])
        return encode(kind, seq, method, body, buffers)

    def other_method(self, frame: Frame) -> bytes:
        """A recorded body sent as a request to another method (any service's)."""
        _, seq, _, body, buffers = frame
        kind = self.rng.choice([REQUEST, REQUEST, protocol.NOTIFY])
        return encode(kind, seq, self.rng.choice(self.methods), body, buffers)

    def splice(self, frame: Frame) -> bytes:
        a = encode(*frame)
        b = encode(*self.rng.choice(self.frames))
        return a[: self.rng.randrange(len(a) + 1)] + b[self.rng.randrange(len(b) + 1) :]

    def garbage_header(self, frame: Frame) -> bytes:
        choice = self.rng.randrange(4)
        if choice == 0:
            header = self.rng.randbytes(self.rng.randint(1, 64))
        elif choice == 1:  # deeply nested arrays
            depth = self.rng.choice([100, 1000, 3000])
            header = b"\x91" * depth + b"\xc0"
        elif choice == 2:  # a string claiming 4 GiB
            header = b"\x94\x00\x01\xdb\xff\xff\xff\xff" + b"x" * 16
        else:  # an ext type and a map with unhashable keys
            header = msgpack.packb([0, 1, "m", msgpack.ExtType(5, b"abc")]) + b"\x81\x90\x00"
        return PREFIX.pack(len(header), 0) + header


class RawPeer:
    """A plain-socket client of one daemon port that sends raw inputs.

    Unauthenticated, each input goes on a fresh connection; authenticated, up to
    ``batch`` inputs follow one valid handshake. Either way the connection then
    half-closes and waits (bounded) for the daemon to close it, so every complete
    frame sent has been handled before the next connection opens."""

    def __init__(self, port: int, token: str | None, authenticate: bool, batch: int = 4) -> None:
        self.port = port
        self.token = token
        self.authenticate = authenticate
        self.batch = batch if authenticate else 1
        self.sock: socket.socket | None = None
        self.sent_on_this = 0
        self.connections = 0

    def _open(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.connections += 1
        if self.authenticate:
            decoder = FrameDecoder()
            [(_, _, _, challenge, _)] = read_frames(s, decoder, 1)
            hello: dict[str, Any] = {"version": protocol.PROTOCOL_VERSION, "role": "client"}
            if self.token is not None:
                hello["auth"] = auth.proof(self.token, challenge)
            s.sendall(encode(REQUEST, 1, "hello", hello))
            [(kind, _, _, body, _)] = read_frames(s, decoder, 1)
            assert kind == protocol.RESPONSE, body
        return s

    def send(self, data: bytes) -> None:
        if self.sock is None:
            self.sock = self._open()
            self.sent_on_this = 0
        try:
            self.sock.sendall(data)
        except OSError:  # the daemon dropped us after an earlier input
            self.close()
            return
        self.sent_on_this += 1
        if self.sent_on_this >= self.batch:
            self.finish()

    def finish(self) -> None:
        """Half-close and wait until the daemon has read everything and closed."""
        if self.sock is None:
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            while self.sock.recv(65536):
                pass
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def handler_names() -> list[str]:
    """Every method any aioray service handles (``handle_<name>`` on any class)."""
    import importlib
    import inspect

    modules = [
        "aioray.daemons.gcs.server",
        "aioray.daemons.gcs.actor_manager",
        "aioray.daemons.gcs.placement_groups",
        "aioray.daemons.raylet.server",
        "aioray.daemons.raylet.bundles",
        "aioray.daemons.worker",
        "aioray.daemons.actor_host",
        "aioray.daemons.gcs.state_service",
        "aioray.daemons.gcs.runtime_env_packages",
        "aioray.daemons.raylet.state_handlers",
        "aioray.daemons.raylet.object_handlers",
        "aioray.daemons.raylet.metrics_export",
        "aioray._private.owner.owner_service",
        "aioray._private.core.borrowing",
        "aioray._private.owner.core_worker",
        "aioray._private.owner.streaming",
        "aioray._private.owner.task_submitter",
        "aioray._private.owner.raylet_clients",
        "aioray._private.owner.placement_groups",
    ]
    names = set()
    for module in modules:
        for _, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            names.update(n[len("handle_") :] for n in dir(cls) if n.startswith("handle_"))
    return sorted(names - DESTRUCTIVE)


def read_frames(s: socket.socket, decoder: FrameDecoder, n: int) -> list[Any]:
    frames: list[Any] = []
    while len(frames) < n:
        buf = decoder.get_buffer()
        got = s.recv_into(buf)
        if not got:
            raise ConnectionError("the daemon closed the connection")
        frames += decoder.buffer_updated(got)
    return frames
