"""Wire framing: how one message becomes bytes on a TCP stream, and back.

Floor 1 of the stack (no asyncio, no sockets). A frame is

    prefix   <II   header length, number of raw buffers
    lengths  <Q*n  one length per raw buffer
    header   msgpack [kind, seq, method, body]
    buffers  n raw byte strings (pickle-5 out-of-band buffers, object chunks)

so a large payload is never packed into msgpack: it is written as its own buffer
(``writelines``, no concatenation) and read straight into its own destination.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from typing import Final

import msgpack

PROTOCOL_VERSION: Final = 1

# Message kinds (first element of every header).
REQUEST: Final = 0
RESPONSE: Final = 1
ERROR: Final = 2
NOTIFY: Final = 3

PREFIX = struct.Struct("<II")
_LENGTH = struct.Struct("<Q")  # the common frame carries one raw buffer
MAX_HEADER_BYTES: Final = 64 * 1024 * 1024
MAX_BUFFERS: Final = 4096
MAX_BUFFER_BYTES: Final = 1 << 33  # 8 GiB: anything larger is chunked by the sender

Buffer = bytes | bytearray | memoryview
# A decoded header (kind, seq, method, body) and a whole frame (with its raw buffers). A
# body is any msgpack value here: its type is its method's declaration in schema.py,
# which the handler or the caller that receives it annotates.
Header = tuple[int, int, str | None, object]
Frame = tuple[int, int, str | None, object, list[Buffer]]


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame; the connection must be dropped."""


def encode_frame(
    kind: int, seq: int, method: str | None, body: object, buffers: Sequence[Buffer] = ()
) -> list[Buffer]:
    """Return the parts of one frame, ready for ``transport.writelines``."""
    header = msgpack.packb([kind, seq, method, body], use_bin_type=True)
    n = len(buffers)
    if n == 0:
        return [PREFIX.pack(len(header), 0) + header]
    if n == 1:  # (a reply's one value, a call's arguments: no format string to build)
        lengths = _LENGTH.pack(_nbytes(buffers[0]))
    else:
        lengths = struct.pack(f"<{n}Q", *[_nbytes(b) for b in buffers])
    return [PREFIX.pack(len(header), n) + lengths + header, *buffers]


def _nbytes(buf: Buffer) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


# Until a peer has completed the handshake it may send only a small hello: nothing
# it claims can make us allocate more than this.
HELLO_MAX_HEADER_BYTES: Final = 4096  # a real hello is ~200 bytes


def check_prefix(
    header_len: int,
    nbuffers: int,
    max_header: int = MAX_HEADER_BYTES,
    max_buffers: int = MAX_BUFFERS,
) -> None:
    if header_len == 0 or header_len > max_header:
        raise ProtocolError(f"header length {header_len} outside 1..{max_header}")
    if nbuffers > max_buffers:
        raise ProtocolError(f"{nbuffers} buffers in one frame (limit {max_buffers})")


def check_buffer_lengths(lengths: Sequence[int]) -> None:
    for n in lengths:
        if n > MAX_BUFFER_BYTES:
            raise ProtocolError(f"buffer of {n} bytes exceeds limit {MAX_BUFFER_BYTES}")


def decode_header(data: Buffer) -> Header:
    """Unpack and validate a frame header; raise ProtocolError on anything malformed."""
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable header: {type(e).__name__}: {e}") from None
    if not isinstance(msg, list) or len(msg) != 4:
        raise ProtocolError("header is not a 4-element array")
    kind, seq, method, body = msg
    if (
        type(kind) is not int
        or kind not in (REQUEST, RESPONSE, ERROR, NOTIFY)
        or type(seq) is not int
    ):
        raise ProtocolError(f"bad message kind {kind!r} or sequence {seq!r}")
    if kind in (REQUEST, NOTIFY) and not isinstance(method, str):
        raise ProtocolError(f"request without a method name: {method!r}")
    return kind, seq, method, body


def lazy_buffer(n: int) -> memoryview:
    """``n`` writable bytes whose pages are committed only as data lands in them (an
    anonymous mapping, not a zero-filled bytearray): a peer's claim of a large buffer
    costs memory only as its bytes actually arrive."""
    try:
        return memoryview(mmap.mmap(-1, n))
    except (OSError, OverflowError, ValueError) as e:
        raise ProtocolError(f"cannot allocate a buffer of {n} bytes: {e}") from None


class FrameDecoder:
    """Incremental, sans-I/O frame parser over a reusable receive buffer.

    ``get_buffer``/``buffer_updated`` mirror asyncio.BufferedProtocol: small frames
    accumulate in one buffer and are parsed in bulk; a large raw buffer is received
    directly into its own bytearray, so it is written to memory exactly once.
    """

    LARGE = 256 * 1024

    def __init__(self, capacity: int = 512 * 1024) -> None:
        # Limits in force; a server lowers them until the peer's hello is accepted.
        self.max_header = MAX_HEADER_BYTES
        self.max_buffers = MAX_BUFFERS
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # Frame being assembled: header fields, lengths of raw buffers, buffers so far.
        self._header: Header | None = None
        self._lengths: list[int] = []
        self._buffers: list[Buffer] = []
        # Large raw buffer receiving directly from the socket.
        self._big: memoryview | None = None
        self._big_view: memoryview | None = None
        self._big_filled = 0
        # Caller-provided destinations for the raw buffers of expected responses, by
        # sequence id (``Connection.call_into``): object chunks land in shared memory.
        self.destinations: dict[int, list[memoryview]] = {}

    @property
    def partial(self) -> bool:
        """True while a frame has started arriving but is not complete."""
        return self._header is not None or self._big is not None or self._end > self._start

    def get_buffer(self) -> memoryview:
        if self._big_view is not None:
            return self._big_view[self._big_filled :]
        if self._end == len(self._buf):
            self._make_room()
        return self._view[self._end :]

    def _destination(self, n: int) -> memoryview | None:
        """The caller's memory for the next raw buffer of this frame, if it has some."""
        assert self._header is not None
        kind, seq = self._header[0], self._header[1]
        dests = self.destinations.get(seq) if kind == RESPONSE else None
        i = len(self._buffers)
        if dests is None or i >= len(dests) or dests[i].nbytes != n:
            return None
        return dests[i]

    @property
    def capacity(self) -> int:
        """Bytes of the receive buffer small frames accumulate in."""
        return len(self._buf)

    def grow(self, capacity: int) -> None:
        """Use a receive buffer of at least ``capacity`` bytes from now on (a server
        grows a peer's small pre-handshake buffer once its hello passed)."""
        if len(self._buf) < capacity:
            self._make_room(capacity)

    def _make_room(self, need: int = 0) -> None:
        # Never resize in place: the transport may still hold a view of the old buffer.
        pending = bytes(self._view[self._start : self._end])
        if max(need, len(pending) + 1) > len(self._buf) or self._start == 0:
            self._buf = bytearray(max(need, 2 * len(self._buf)))
            self._view = memoryview(self._buf)
        self._buf[: len(pending)] = pending
        self._start, self._end = 0, len(pending)

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """Account for ``nbytes`` new bytes; return every frame now complete."""
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled < len(self._big):
                return []
            assert self._big_view is not None
            self._buffers.append(self._big)
            self._big, self._big_view, self._big_filled = None, None, 0
        else:
            self._end += nbytes
        return self._parse()

    def _parse(self) -> list[Frame]:
        frames: list[Frame] = []
        view = self._view
        while True:
            if self._header is None:
                avail = self._end - self._start
                if avail < 8:
                    break
                hlen, nbuf = PREFIX.unpack_from(self._buf, self._start)
                check_prefix(hlen, nbuf, self.max_header, self.max_buffers)
                need = 8 + 8 * nbuf + hlen
                if avail < need:
                    if need > len(self._buf) - self._start:
                        self._make_room(need)
                        view = self._view
                    break
                s = self._start + 8
                if nbuf == 1:
                    lengths = [_LENGTH.unpack_from(self._buf, s)[0]]
                else:
                    lengths = list(struct.unpack_from(f"<{nbuf}Q", self._buf, s)) if nbuf else []
                check_buffer_lengths(lengths)
                s += 8 * nbuf
                header = decode_header(view[s : s + hlen])
                s += hlen
                if self._end - s >= sum(lengths) and not self.destinations:
                    # The whole frame is here (the common case): cut it out in one go.
                    buffers: list[Buffer] = []
                    for n in lengths:
                        buffers.append(bytes(view[s : s + n]))
                        s += n
                    self._start = s
                    frames.append((*header, buffers))
                    continue
                self._header = header
                self._start = s
                self._lengths = lengths
                self._buffers = []
            while len(self._buffers) < len(self._lengths):
                n = self._lengths[len(self._buffers)]
                avail = self._end - self._start
                dest = self._destination(n) if self.destinations else None
                if dest is not None:
                    take = min(avail, n)
                    dest[:take] = view[self._start : self._start + take]
                    self._start += take
                    if take == n:
                        self._buffers.append(dest)
                        continue
                    self._start = self._end = 0
                    self._big, self._big_view, self._big_filled = dest, dest, take
                    return frames
                if avail >= n:
                    self._buffers.append(bytes(view[self._start : self._start + n]))
                    self._start += n
                elif n >= self.LARGE:
                    # Receive the rest of this buffer straight into its destination.
                    big = lazy_buffer(n)
                    big[:avail] = view[self._start : self._end]
                    self._start = self._end = 0
                    self._big, self._big_view, self._big_filled = big, big, avail
                    return frames
                else:
                    if n > len(self._buf) - self._start:
                        self._make_room(n)
                        view = self._view
                    return frames
            kind, seq, method, body = self._header
            frames.append((kind, seq, method, body, self._buffers))
            self._header, self._lengths, self._buffers = None, [], []
        if self._start == self._end:
            self._start = self._end = 0
        return frames
