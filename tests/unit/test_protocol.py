"""Unit tests for aioray._private.wire.protocol: frame encoding and the sans-I/O FrameDecoder.

No event loop, no sockets. Bytes reach the decoder the way a BufferedProtocol
transport delivers them: copied into ``get_buffer()``, then ``buffer_updated(n)``.
"""

from __future__ import annotations

import array
import os
import struct
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from aioray._private.wire.protocol import (
    ERROR,
    MAX_BUFFER_BYTES,
    MAX_BUFFERS,
    MAX_HEADER_BYTES,
    NOTIFY,
    PREFIX,
    REQUEST,
    RESPONSE,
    Buffer,
    FrameDecoder,
    ProtocolError,
    check_buffer_lengths,
    check_prefix,
    encode_frame,
)

LARGE = FrameDecoder.LARGE

Frame = tuple[int, int, "str | None", Any, list[Buffer]]


def wire(parts: Sequence[Buffer]) -> bytes:
    """The bytes a transport would put on the stream for ``writelines(parts)``."""
    return b"".join(bytes(p) for p in parts)


def feed(decoder: FrameDecoder, data: bytes, max_chunk: int | None = None) -> list[Frame]:
    """Deliver ``data`` like a transport: fill get_buffer(), then buffer_updated(n).

    The view stays referenced during buffer_updated, as in asyncio's transports, so
    a decoder that resized its buffer in place would fail here.
    """
    frames: list[Frame] = []
    src = memoryview(data)
    pos = 0
    while pos < len(src):
        buf = decoder.get_buffer()
        assert len(buf) > 0, "get_buffer() must never offer an empty buffer"
        n = min(len(buf), len(src) - pos, max_chunk or len(src))
        buf[:n] = src[pos : pos + n]
        pos += n
        frames.extend(decoder.buffer_updated(n))
    return frames


def raw_frame(header: bytes, lengths: Sequence[int] = (), payload: bytes = b"") -> bytes:
    """A frame assembled by hand, so that its fields can be wrong."""
    n = len(lengths)
    return PREFIX.pack(len(header), n) + struct.pack(f"<{n}Q", *lengths) + header + payload


def as_bytes(buffers: Sequence[Buffer]) -> list[bytes]:
    return [bytes(b) for b in buffers]


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "seq", "method", "body"),
    [
        (REQUEST, 1, "echo", None),
        (REQUEST, 2**63 - 1, "m", {"nested": {"list": [1, 2, [3]], "bin": b"\x00\xff"}}),
        (RESPONSE, 7, None, "text"),
        (RESPONSE, 8, None, {1: "int key", 2: -1.5}),
        (ERROR, 9, "m", ["ValueError", "boom"]),
        (NOTIFY, 0, "note", [True, False, None, -(2**63)]),
    ],
)
def test_round_trip_without_buffers(kind: int, seq: int, method: str | None, body: Any) -> None:
    parts = encode_frame(kind, seq, method, body)
    assert len(parts) == 1, "a frame without buffers is a single part"
    assert feed(FrameDecoder(), wire(parts)) == [(kind, seq, method, body, [])]


def test_round_trip_with_several_buffers() -> None:
    buffers = [b"a", bytearray(b"bc"), b"x" * 1000, os.urandom(4096)]
    parts = encode_frame(REQUEST, 3, "put", {"n": 4}, buffers)
    # Buffers are passed through for writelines, never joined into the header part.
    assert len(parts) == 1 + len(buffers)
    assert all(p is b for p, b in zip(parts[1:], buffers, strict=True))
    [(kind, seq, method, body, got)] = feed(FrameDecoder(), wire(parts))
    assert (kind, seq, method, body) == (REQUEST, 3, "put", {"n": 4})
    assert as_bytes(got) == as_bytes(buffers)


@pytest.mark.parametrize("buffers", [[b""], [b"", b"x", b""], [b"", b"", b""]])
def test_round_trip_with_empty_buffers(buffers: list[bytes]) -> None:
    data = wire(encode_frame(RESPONSE, 4, None, "ok", buffers))
    [(_, _, _, body, got)] = feed(FrameDecoder(), data)
    assert body == "ok"
    assert as_bytes(got) == buffers


def test_round_trip_with_memoryview_buffers() -> None:
    doubles = memoryview(array.array("d", [1.5, 2.5, 3.5]))  # len 3, nbytes 24
    window = memoryview(bytearray(b"0123456789"))[2:7]
    matrix = memoryview(bytearray(range(6))).cast("B", (2, 3))  # len 2, nbytes 6
    buffers = [doubles, window, matrix]
    [(_, _, _, body, got)] = feed(FrameDecoder(), wire(encode_frame(REQUEST, 5, "m", 1, buffers)))
    assert body == 1
    assert as_bytes(got) == [b.tobytes() for b in buffers]
    assert [len(b) for b in got] == [24, 5, 6]


# -- arrival patterns -------------------------------------------------------------


def test_frame_fed_one_byte_at_a_time() -> None:
    data = wire(encode_frame(REQUEST, 11, "m", {"k": "v" * 50}, [b"abc", b"", b"de" * 30]))
    decoder = FrameDecoder()
    for i in range(len(data)):
        frames = feed(decoder, data[i : i + 1])
        if i < len(data) - 1:
            assert frames == [], f"frame reported complete after {i + 1}/{len(data)} bytes"
    [(kind, seq, method, body, got)] = frames
    assert (kind, seq, method, body) == (REQUEST, 11, "m", {"k": "v" * 50})
    assert as_bytes(got) == [b"abc", b"", b"de" * 30]


def test_partial_prefix_waits_for_the_rest() -> None:
    data = wire(encode_frame(NOTIFY, 0, "note", "x"))
    decoder = FrameDecoder()
    assert feed(decoder, data[:7]) == []
    assert feed(decoder, data[7:]) == [(NOTIFY, 0, "note", "x", [])]


def many_frames(count: int) -> tuple[bytes, list[Frame]]:
    expected: list[Frame] = []
    parts: list[Buffer] = []
    for i in range(count):
        kind = (REQUEST, RESPONSE, ERROR, NOTIFY)[i % 4]
        method = None if kind == RESPONSE else f"m{i}"
        buffers = [bytes([i % 256]) * (i % 5)] if i % 3 else []
        parts += encode_frame(kind, i, method, {"i": i}, buffers)
        expected.append((kind, i, method, {"i": i}, buffers))
    return wire(parts), expected


def test_many_frames_in_one_chunk() -> None:
    data, expected = many_frames(1000)
    decoder = FrameDecoder()
    buf = decoder.get_buffer()
    assert len(buf) >= len(data), "test needs the whole stream to fit one receive"
    buf[: len(data)] = data
    frames = decoder.buffer_updated(len(data))
    assert [(k, s, m, b, as_bytes(bufs)) for k, s, m, b, bufs in frames] == expected


@pytest.mark.parametrize("chunk", [3, 7, 4093, 65536])
def test_many_frames_across_chunk_boundaries(chunk: int) -> None:
    data, expected = many_frames(500)
    frames = feed(FrameDecoder(capacity=4096), data, max_chunk=chunk)
    assert [(k, s, m, b, as_bytes(bufs)) for k, s, m, b, bufs in frames] == expected


@pytest.mark.parametrize("size", [LARGE - 1, LARGE, LARGE + 1, 4 * LARGE + 123])
@pytest.mark.parametrize("chunk", [65536, 1 << 20])
def test_large_buffer_arriving_in_pieces_is_intact(size: int, chunk: int) -> None:
    payload = os.urandom(size)
    data = wire(encode_frame(RESPONSE, 1, None, {"n": size}, [b"head", payload, b"tail"]))
    data += wire(encode_frame(NOTIFY, 0, "after", None))  # the stream goes on after it
    frames = feed(FrameDecoder(), data, max_chunk=chunk)
    assert len(frames) == 2
    _, seq, _, body, got = frames[0]
    assert (seq, body) == (1, {"n": size})
    assert len(got) == 3
    assert bytes(got[0]) == b"head"
    assert got[1] == payload
    assert bytes(got[2]) == b"tail"
    assert frames[1] == (NOTIFY, 0, "after", None, [])


def test_two_large_buffers_back_to_back() -> None:
    first, second = os.urandom(3 * LARGE), os.urandom(2 * LARGE + 1)
    data = wire(encode_frame(REQUEST, 2, "put", None, [first, second]))
    data *= 2
    frames = feed(FrameDecoder(), data, max_chunk=100_000)
    assert [as_bytes(f[4]) for f in frames] == [[first, second], [first, second]]


def test_buffer_larger_than_capacity_but_below_large() -> None:
    payload = os.urandom(LARGE // 2)
    data = wire(encode_frame(RESPONSE, 3, None, None, [payload]))
    [(_, _, _, _, got)] = feed(FrameDecoder(capacity=1024), data, max_chunk=10_000)
    assert got == [payload]


@pytest.mark.parametrize("chunk", [None, 100])
def test_header_larger_than_initial_capacity(chunk: int | None) -> None:
    body = {"text": "x" * 10_000, "items": list(range(2000))}
    data = wire(encode_frame(REQUEST, 5, "big", body, [b"buf"]))
    data += wire(encode_frame(RESPONSE, 6, None, "small"))
    decoder = FrameDecoder(capacity=64)
    frames = feed(decoder, data, max_chunk=chunk)
    assert [(k, s, m, b, as_bytes(bufs)) for k, s, m, b, bufs in frames] == [
        (REQUEST, 5, "big", body, [b"buf"]),
        (RESPONSE, 6, None, "small", []),
    ]


# -- malformed input --------------------------------------------------------------


def test_zero_header_length() -> None:
    with pytest.raises(ProtocolError, match="header length 0"):
        feed(FrameDecoder(), PREFIX.pack(0, 0) + b"\x90" * 8)


def test_header_length_over_limit_is_refused_from_the_prefix_alone() -> None:
    with pytest.raises(ProtocolError, match="header length"):
        feed(FrameDecoder(), PREFIX.pack(MAX_HEADER_BYTES + 1, 0))


def test_too_many_buffers() -> None:
    with pytest.raises(ProtocolError, match="buffers in one frame"):
        feed(FrameDecoder(), PREFIX.pack(1, MAX_BUFFERS + 1))


def test_buffer_length_over_limit() -> None:
    header = msgpack.packb([RESPONSE, 1, None, None])
    with pytest.raises(ProtocolError, match="exceeds limit"):
        feed(FrameDecoder(), raw_frame(header, [1, MAX_BUFFER_BYTES + 1]))


def test_limits_themselves_are_allowed() -> None:
    check_prefix(1, 0)
    check_prefix(MAX_HEADER_BYTES, MAX_BUFFERS)
    check_buffer_lengths([0, MAX_BUFFER_BYTES])


@pytest.mark.parametrize(
    "header",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x94\x00\x01",  # array of 4 with only 2 elements
        msgpack.packb([REQUEST, 1, "m", None]) + b"\x00",  # trailing bytes
        b"\x94\x00\x01\xa2\xff\xfe\xc0",  # method is not valid UTF-8
    ],
    ids=["reserved-byte", "truncated", "extra-data", "bad-utf8"],
)
def test_undecodable_msgpack(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="undecodable header"):
        feed(FrameDecoder(), raw_frame(header))


@pytest.mark.parametrize(
    "message",
    [{"kind": REQUEST}, [REQUEST, 1, "m"], [REQUEST, 1, "m", None, 5], 7, "hello"],
)
def test_header_not_a_four_element_array(message: Any) -> None:
    with pytest.raises(ProtocolError, match="4-element array"):
        feed(FrameDecoder(), raw_frame(msgpack.packb(message)))


@pytest.mark.parametrize(
    "message",
    [
        [4, 1, "m", None],
        [-1, 1, "m", None],
        ["0", 1, "m", None],
        [None, 1, "m", None],
        [REQUEST, "1", "m", None],
        [REQUEST, None, "m", None],
        [REQUEST, 1.0, "m", None],
    ],
)
def test_bad_kind_or_sequence(message: list[Any]) -> None:
    with pytest.raises(ProtocolError, match="bad message kind"):
        feed(FrameDecoder(), raw_frame(msgpack.packb(message)))


@pytest.mark.parametrize(
    "message",
    [
        [REQUEST, 1, None, None],
        [NOTIFY, 0, None, None],
        [REQUEST, 1, 5, None],
        [NOTIFY, 0, b"bytes-not-str", None],
    ],
)
def test_request_without_method_name(message: list[Any]) -> None:
    with pytest.raises(ProtocolError, match="without a method name"):
        feed(FrameDecoder(), raw_frame(msgpack.packb(message, use_bin_type=True)))


def test_response_and_error_need_no_method_name() -> None:
    data = raw_frame(msgpack.packb([RESPONSE, 1, None, "a"]))
    data += raw_frame(msgpack.packb([ERROR, 2, None, ["E", "m"]]))
    assert feed(FrameDecoder(), data) == [
        (RESPONSE, 1, None, "a", []),
        (ERROR, 2, None, ["E", "m"], []),
    ]


def test_malformed_frame_after_good_ones_in_the_same_stream() -> None:
    decoder = FrameDecoder()
    good = wire(encode_frame(REQUEST, 1, "m", None))
    assert feed(decoder, good) == [(REQUEST, 1, "m", None, [])]
    with pytest.raises(ProtocolError):
        feed(decoder, raw_frame(b"\xc1"))


# -- receiving into caller-provided destinations (object transfer) ------------------


@pytest.mark.parametrize("size", [100, LARGE - 1, LARGE, 3 * LARGE + 7])
@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_response_buffer_lands_in_its_destination(size: int, chunk: int) -> None:
    payload = os.urandom(size)
    dest = bytearray(size)
    decoder = FrameDecoder()
    decoder.destinations[5] = [memoryview(dest)]
    data = wire(encode_frame(RESPONSE, 5, None, None, [payload]))
    data += wire(encode_frame(RESPONSE, 6, None, None, [payload]))  # no destination: as usual
    frames = feed(decoder, data, max_chunk=chunk)
    assert dest == payload
    assert frames[0][4][0].obj is dest  # the view given, not a copy
    assert frames[1][4][0] == payload and not isinstance(frames[1][4][0], memoryview)


def test_destination_of_the_wrong_size_or_kind_is_not_used() -> None:
    payload = os.urandom(2 * LARGE)
    dest = bytearray(2 * LARGE - 1)
    decoder = FrameDecoder()
    decoder.destinations[1] = [memoryview(dest)]
    decoder.destinations[2] = [memoryview(bytearray(2 * LARGE))]
    data = wire(encode_frame(RESPONSE, 1, None, None, [payload]))
    data += wire(encode_frame(REQUEST, 2, "m", None, [payload]))  # a request never uses one
    frames = feed(decoder, data, max_chunk=65536)
    assert [bytes(f[4][0]) for f in frames] == [payload, payload]
    assert dest == bytearray(2 * LARGE - 1)
    assert not any(decoder.destinations[2][0])
