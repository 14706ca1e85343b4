"""Property-based fuzz of the frame decoder (``swarm._core.sock.Channel``).

Every input is a byte stream fed through a real AF_UNIX socketpair to a
Channel with ``max_frame = 1 MiB``, read two ways: a non-blocking reader in
lock step with the writer (after each send it reads until None), and a
blocking reader fed by a writer thread (``SO_RCVTIMEO`` turns a hang into a
failure). What the reader returns is compared with a pure-Python model of
the wire protocol (`model_decode`, written from README's "Wire protocol"
and frame.pxd), exactly:

- the frames returned, in order, byte for byte (kind, task id, aux, body,
  buffers), and, after each send of the non-blocking reader, exactly the
  frames complete in what was sent so far;
- the end: ``None`` (non-blocking, frame incomplete), ``PeerClosed`` and
  not a ProtocolError (end of stream at a frame boundary),
  ``TruncatedFrame`` (end of stream inside a header or payload) or a
  ProtocolError that is not a TruncatedFrame (magic, version, kind, flags,
  buffer count, frame limit, an inline buffer with an offset, fd-carried
  buffers whose fds never came -- these streams carry no fds), with the
  message naming what failed, raised
  as soon as the bytes that decide it have arrived; a ProtocolError is
  never followed by a frame: the channel keeps refusing, even when valid
  frames follow;
- nothing else: any other exception, a crash or a hang fails the test;
- allocation: traced Python memory during the read never grows past one
  frame limit (+ 256 KiB), so a claimed length is checked before anything
  is allocated from it.

Inputs: (a) random bytes, raw or behind a valid magic/version/kind prefix;
(b) valid frames mutated by field overwrites (huge body and buffer
lengths, buffer counts over ``MAX_BUFFERS``, random kind, flags, version,
magic), bit flips, truncation, insertions, deletions, duplicated spans and
garbage appended; (c) valid frames unmutated, which must also unpickle to
the objects sent. Valid frames are ``frame.pack_header`` + protocol-5
pickle bodies + out-of-band buffers: none, a few small ones, up to 600
tiny ones, exactly ``MAX_BUFFERS``, or ~300 KiB ones (received straight
into place, bypassing the read-ahead buffer); or thousands of small frames,
more than the 256 KiB read-ahead buffer holds (it compacts). Every stream
is split at random points across several sends.

A live worker (conftest's echo worker, ``SWARM_MAX_FRAME`` = 1 MiB) gets
mutated task/init frames on a connection of their own; it must answer
exactly the frames the model decodes before the first bad one (one reply
per task/init frame, same task ids), close that connection, and still
serve ``swarm.Socket(pid).do_task`` round trips on a connection opened
before the fuzz and on a fresh one; its RSS must not grow by 64 MiB.

Bounds: derandomized hypothesis (no example database), ``deadline=None``;
400 examples per in-process test and 50 for the live worker, about 15 s in
all on 2 cores. (Hypothesis also mines constants from the loaded modules,
so the examples can differ a little with what else the session imported.)
``SWARM_FUZZ_EXAMPLES=N`` sets the in-process count to N (the live worker
gets N/8, at least 50) and turns off derandomization, so that each long
local run explores new inputs; lift the per-test timeouts for it::

    SWARM_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_frames.py -q -p no:cacheprovider \
        -o timeout=0 -o faulthandler_timeout=0

The tests print nothing; ``COUNTS`` holds what was tried (streams, frames
built, bytes fed, frames decoded, ProtocolErrors seen, live inputs and
their replies, the largest allocation growth seen in one read), and each
test asserts that its own counts grew.
"""

from __future__ import annotations

import bisect
import functools
import os
import pickle
import re
import socket
import struct
import threading
import tracemalloc
from typing import List, NamedTuple

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import ECHO_WORKER  # noqa: E402
from swarm import PeerClosed, ProtocolError, Socket, TruncatedFrame  # noqa: E402
from swarm._core import frame  # noqa: E402
from swarm._core.sock import Channel  # noqa: E402

MAX_FRAME = 1 << 20
HEADER = frame.HEADER_SIZE
KINDS = (frame.KIND_INIT, frame.KIND_TASK, frame.KIND_RESULT, frame.KIND_ERROR)
# A reader that waits this long for bytes that were all sent has hung.
HANG_S = 10
# Traced allocation allowed during a read beyond one max_frame.
ALLOC_SLACK = 256 * 1024
# Sends of the lock-step writer stay under this, so that they never block
# (the reader drains the socket between sends).
PIECE_MAX = 64 * 1024

_ENV_EXAMPLES = os.environ.get("SWARM_FUZZ_EXAMPLES")
EXAMPLES = int(_ENV_EXAMPLES) if _ENV_EXAMPLES else 400
LIVE_EXAMPLES = max(50, EXAMPLES // 8)

COUNTS = {"streams": 0, "frames_built": 0, "bytes_fed": 0, "frames_decoded": 0,
          "protocol_errors": 0, "live_inputs": 0, "live_replies": 0,
          "max_read_alloc": 0}  # largest traced allocation growth during one read


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=_ENV_EXAMPLES is None,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.large_base_example])


# ---------------------------------------------------------------- the model

_HDR = struct.Struct("<IBBHIIQQ")  # magic version kind flags nbufs body_len task_id aux


class Expect(NamedTuple):
    """What a reader must make of a byte stream."""
    frames: list   # (kind, task_id, aux, body, [buffers]): memoryviews of the input
    end: str       # "boundary" | "partial" | "error"
    message: str   # regex of the ProtocolError: for "error", at once; for
                   # "partial", at end of stream
    ends: list     # offset just past each frame


def model_decode(data, max_frame: int = MAX_FRAME) -> Expect:
    """Decode a byte stream as the wire protocol says a reader must.

    Copies nothing: bodies and buffers are views of ``data``.
    """
    data = memoryview(data).cast("B")
    frames: list = []
    ends: list = []
    pos, n = 0, len(data)

    def done(end: str, message: str = "") -> Expect:
        return Expect(frames, end, message, ends)

    while True:
        left = n - pos
        if left == 0:
            return done("boundary")
        if left < HEADER:
            return done("partial", re.escape(
                f"connection closed inside a frame header ({left} of {HEADER} bytes received)"))
        magic, version, kind, flags, nbufs, body_len, task_id, aux = _HDR.unpack_from(data, pos)
        if magic != frame.MAGIC:
            return done("error", re.escape(f"bad frame magic 0x{magic:08x} "))
        if version != frame.VERSION:
            return done("error", re.escape(f"unsupported frame version {version} "))
        if not 1 <= kind <= frame.KIND_RETIRE:
            return done("error", re.escape(f"unknown frame kind {kind}") + "$")
        if flags & ~frame.FLAG_FDS:
            return done("error", re.escape(f"reserved frame flags set: 0x{flags:04x}"))
        # FLAG_FDS: 16-byte entries (length, offset); bit 63 of a length
        # says the buffer travels as an fd (frame.pxd).
        entry = 16 if flags & frame.FLAG_FDS else 8
        if nbufs > frame.MAX_BUFFERS:
            return done("error", re.escape(
                f"frame announces {nbufs} out-of-band buffers, over the limit"))
        if body_len + HEADER + entry * nbufs > max_frame:
            return done("error", re.escape(
                f"frame body of {body_len} bytes is over the frame limit of {max_frame} bytes"))
        need = HEADER + entry * nbufs
        if left < need:
            return done("partial", re.escape(
                f"connection closed inside a frame header ({left} of {need} bytes received)"))
        table = struct.unpack_from(f"<{nbufs * entry // 8}Q", data, pos + HEADER)
        if entry == 8:
            raw_lengths, offsets = table, (0,) * nbufs
        else:
            raw_lengths, offsets = table[0::2], table[1::2]
        carried = [entry == 16 and bool(raw & frame.FD_BUFFER) for raw in raw_lengths]
        lengths = tuple(raw & ~(frame.FD_BUFFER | frame.LENT_BUFFER) if fd else raw
                        for raw, fd in zip(raw_lengths, carried))
        total = need + body_len
        for length in lengths:
            if length > max_frame or total + length > max_frame:
                # The reader sums in 64 bits: past 2**64 its message shows the
                # wrapped sum (the check itself does not wrap), so the number
                # is pinned only below that.
                at_least = (re.escape(str(total + length)) if total + length < 2**64
                            else r"\d+")
                return done("error", f"frame of at least {at_least} bytes is over the "
                            f"frame limit of {max_frame} bytes")
            total += length
        for i, (fd, offset) in enumerate(zip(carried, offsets)):
            if not fd and offset:
                return done("error", re.escape(
                    f"inline buffer {i} has offset {offset} (only fd-carried buffers have one)"))
        if any(carried):  # no stream here carries fds
            return done("error", re.escape(
                f"frame declares {sum(carried)} fd-carried buffers but no file "
                "descriptors arrived with it"))
        # Payload: body, then each buffer. At end of stream the reader names
        # the first target it could not fill.
        avail = left - need
        for i, size in enumerate((body_len,) + lengths):
            if avail < size:
                what = "body" if i == 0 else f"buffer {i - 1}"
                return done("partial", re.escape(
                    f"connection closed inside a frame ({size - avail} bytes of the "
                    f"{what} missing)"))
            avail -= size
        p = pos + need
        body = data[p:p + body_len]
        p += body_len
        bufs = []
        for length in lengths:
            bufs.append(data[p:p + length])
            p += length
        if kind == frame.KIND_RETIRE:
            # Handled inside the reader: a retire names a mapping to drop
            # (none is kept here), and the stream goes on.
            if body_len or nbufs:
                return done("error", re.escape("a retire frame carries a body or buffers"))
            ends.append(p)
            pos = p
            continue
        if kind == frame.KIND_RELEASE:
            # Handled inside the reader, never returned: this stream lent
            # nothing, so any release is refused once the frame is whole.
            if body_len or nbufs:
                return done("error", re.escape("a release frame carries a body or buffers"))
            return done("error", re.escape(
                f"the peer released a buffer (memfd inode {aux}) that this side did not lend"))
        frames.append((kind, task_id, aux, body, bufs))
        ends.append(p)
        pos = p


# ---------------------------------------------------------------- inputs

class Built(NamedTuple):
    wire: bytes
    obj: object
    nbufs: int

    def __repr__(self) -> str:  # hypothesis prints failing examples
        kind, task_id, aux, body_len, nbufs = frame.unpack_header(self.wire, 1 << 62)
        return (f"Built(kind={kind}, task_id={task_id}, aux={aux}, body_len={body_len}, "
                f"nbufs={nbufs}, wire_len={len(self.wire)})")


@functools.lru_cache(maxsize=None)
def _block(seed: int) -> bytes:
    return bytes((seed + 31 * i) & 0xFF for i in range(256))


def _pattern(n: int, seed: int) -> bytes:
    return (_block(seed & 0xFF) * (n // 256 + 1))[:n]


def _build(kind: int, task_id: int, aux: int, payload, sizes, seed: int,
           numpy_carrier: bool) -> Built:
    carriers = []
    for i, n in enumerate(sizes):
        raw = bytearray(_pattern(n, seed + i))
        if numpy_carrier and i % 2 == 0:
            carriers.append(np.frombuffer(raw, dtype=np.uint8))
        else:
            carriers.append(pickle.PickleBuffer(raw))
    obj = (payload, carriers)
    out_of_band: list = []
    body = pickle.dumps(obj, 5, buffer_callback=out_of_band.append)
    raws = [bytes(b.raw()) for b in out_of_band]
    header = frame.pack_header(kind, task_id, aux, len(body), [len(r) for r in raws])
    return Built(header + body + b"".join(raws), obj, len(raws))


_ATOMS = st.one_of(st.none(), st.booleans(), st.integers(),
                   st.floats(allow_nan=False), st.text(max_size=12), st.binary(max_size=48))
_PAYLOADS = st.recursive(_ATOMS, lambda inner: st.lists(inner, max_size=4)
                         | st.tuples(inner, inner), max_leaves=6)
_U64 = st.integers(0, 2**64 - 1)


@st.composite
def built_frames(draw, kinds=st.sampled_from(KINDS), big: bool = True, payloads=_PAYLOADS):
    sizes_options = [st.just([]), st.lists(st.integers(0, 700), max_size=4),
                     st.lists(st.integers(0, 2), min_size=20, max_size=600)]
    if big:
        # At least half the read-ahead buffer: received straight into place.
        sizes_options.append(st.lists(st.sampled_from([128 * 1024, 140_000, 300_000]),
                                      min_size=1, max_size=2))
        # The most buffers a frame may have (a 32 KiB length table).
        sizes_options.append(st.sampled_from([[0] * frame.MAX_BUFFERS,
                                              [1] * frame.MAX_BUFFERS]))
    return _build(draw(kinds), draw(_U64), draw(_U64), draw(payloads),
                  draw(st.one_of(sizes_options)), draw(st.integers(0, 255)),
                  draw(st.booleans()))


class _Frames(list):
    def __repr__(self) -> str:  # not thousands of lines in a failure report
        return f"<{len(self)} small frames: {self[:2]!r}...>"


@st.composite
def many_small_frames(draw):
    """Hundreds to thousands of small frames: over the reader's 256 KiB
    read-ahead buffer, so headers straddle its end and it compacts."""
    n = draw(st.integers(100, 2000))
    seed = draw(st.integers(0, 255))
    kinds = draw(st.sampled_from([KINDS, (frame.KIND_TASK,)]))
    out = _Frames()
    for i in range(n):
        size = (seed * 7 + i * 13) % 200
        sizes = [(i * 5) % 40] if (seed + i) % 3 == 0 else []
        out.append(_build(kinds[i % len(kinds)], i, seed, _pattern(size, seed + i), sizes,
                          seed + i, False))
    return out


def _splits(data, n: int, max_splits: int = 12) -> List[int]:
    if n <= 1:
        return []
    points = data.draw(st.one_of(
        st.lists(st.integers(1, n - 1), max_size=max_splits),
        st.lists(st.integers(1, min(n - 1, 64)), max_size=max_splits),   # in the header
        st.lists(st.integers(max(1, n - 64), n - 1), max_size=max_splits)),  # near the end
        label="split points")
    return sorted(set(points))


def _pieces(wire: bytes, points: List[int]) -> List[bytes]:
    bounds = [0] + points + [len(wire)]
    return [wire[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _mutate(data, frames: List[Built]) -> bytes:
    """Overwrite header fields of chosen frames, then mangle bytes."""
    wire = bytearray(b"".join(f.wire for f in frames))
    offsets = []
    at = 0
    for f in frames:
        offsets.append(at)
        at += len(f.wire)
    fields = data.draw(st.lists(st.sampled_from(
        ["body_len", "nbufs", "buflen", "kind", "flags", "version", "magic"]), max_size=3),
        label="field mutations")
    for field in fields:
        i = data.draw(st.integers(0, len(frames) - 1), label="frame")
        o, f = offsets[i], frames[i]
        cur_body = struct.unpack_from("<I", wire, o + 12)[0]
        if field == "body_len":
            value = data.draw(st.one_of(
                st.integers(0, 2**32 - 1),
                st.sampled_from([0, MAX_FRAME - HEADER, MAX_FRAME - HEADER + 1, MAX_FRAME,
                                 2**31, 2**32 - 1]),
                st.integers(max(0, cur_body - 16), min(2**32 - 1, cur_body + 16))),
                label="body_len")
            struct.pack_into("<I", wire, o + 12, value)
        elif field == "nbufs":
            value = data.draw(st.one_of(
                st.integers(0, 2**32 - 1),
                st.sampled_from([frame.MAX_BUFFERS, frame.MAX_BUFFERS + 1, 2**32 - 1]),
                st.integers(max(0, f.nbufs - 3), f.nbufs + 3)), label="nbufs")
            struct.pack_into("<I", wire, o + 8, value)
        elif field == "buflen" and f.nbufs:
            j = data.draw(st.integers(0, f.nbufs - 1), label="buffer")
            cur = struct.unpack_from("<Q", wire, o + HEADER + 8 * j)[0]
            value = data.draw(st.one_of(
                _U64,
                st.sampled_from([MAX_FRAME, MAX_FRAME + 1, 2**63, 2**64 - 1,
                                 2**64 - 1 - cur_body]),   # sums past 2**64
                st.integers(max(0, cur - 16), min(2**64 - 1, cur + 16))),
                label="buffer length")
            struct.pack_into("<Q", wire, o + HEADER + 8 * j, value)
        elif field == "kind":
            wire[o + 5] = data.draw(st.integers(0, 255), label="kind")
        elif field == "flags":
            struct.pack_into("<H", wire, o + 6, data.draw(st.integers(0, 0xFFFF), label="flags"))
        elif field == "version":
            wire[o + 4] = data.draw(st.integers(0, 255), label="version")
        elif field == "magic":
            struct.pack_into("<I", wire, o, data.draw(
                st.one_of(st.integers(0, 2**32 - 1), st.just(int.from_bytes(b"MRWS", "little"))),
                label="magic"))
    ops = data.draw(st.lists(st.sampled_from(
        ["flip", "truncate", "insert", "delete", "append", "duplicate"]), max_size=3),
        label="byte mutations")
    for op in ops:
        n = len(wire)
        if op == "flip" and n:
            for _ in range(data.draw(st.integers(1, 8), label="flips")):
                # Mostly in the first header, where a flip changes the most.
                pos = data.draw(st.one_of(st.integers(0, min(n, 64) - 1),
                                          st.integers(0, n - 1)), label="flip at")
                wire[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "truncate":
            del wire[data.draw(st.integers(0, n), label="truncate at"):]
        elif op == "insert":
            pos = data.draw(st.integers(0, n), label="insert at")
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=64), label="inserted")
        elif op == "delete" and n:
            a = data.draw(st.integers(0, n - 1), label="delete from")
            del wire[a:a + data.draw(st.integers(1, 64), label="delete count")]
        elif op == "append":
            wire += data.draw(st.binary(min_size=1, max_size=256), label="garbage")
        elif op == "duplicate" and n:
            a = data.draw(st.integers(0, n - 1), label="duplicate from")
            wire[a:a] = wire[a:a + data.draw(st.integers(1, 128), label="duplicate count")]
    return bytes(wire)


# ---------------------------------------------------------------- readers

def _check_frame(got, want) -> None:
    kind, task_id, aux, body, bufs = got
    assert (kind, task_id, aux) == want[:3]
    assert type(body) is bytes and body == want[3]
    if want[4]:
        assert type(bufs) is list and len(bufs) == len(want[4])
        for b, w in zip(bufs, want[4]):
            assert type(b) is bytearray and b == w
    else:
        assert bufs == ()


def _refuses_after_error(chan: Channel) -> None:
    for _ in range(2):
        with pytest.raises(ProtocolError, match="earlier protocol error"):
            chan.read_frame()


class _Traced:
    """Peak traced Python allocation while reading, over the start."""

    def __enter__(self):
        self.mine = not tracemalloc.is_tracing()
        if self.mine:
            tracemalloc.start()
        else:
            tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        self.growth = tracemalloc.get_traced_memory()[1] - self.base
        if self.mine:
            tracemalloc.stop()
        COUNTS["max_read_alloc"] = max(COUNTS["max_read_alloc"], self.growth)


def _prefix_outcomes(wire: memoryview, full: Expect, lengths: List[int]):
    """For each stream length: (frames complete, end, message), as
    ``model_decode(wire[:length])`` would say, without decoding it all."""
    out = []
    for length in lengths:
        k = bisect.bisect_right(full.ends, length)
        pos = full.ends[k - 1] if k else 0
        tail = model_decode(wire[pos:length])
        assert not tail.frames
        out.append((k, tail.end, tail.message))
    return out


def _read_lockstep(pieces: List[bytes]) -> None:
    """Non-blocking reader, drained after every send."""
    wire = memoryview(b"".join(pieces))
    full = model_decode(wire)
    parts = []  # bytes to send, at most PIECE_MAX each
    lengths = []  # stream length once each part is sent
    for piece in pieces:
        for k in range(0, len(piece), PIECE_MAX):
            parts.append(piece[k:k + PIECE_MAX])
            lengths.append((lengths[-1] if lengths else 0) + len(parts[-1]))
    outcomes = _prefix_outcomes(wire, full, lengths)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    chan = Channel(b.detach(), blocking=False, max_frame=MAX_FRAME)
    try:
        a.settimeout(HANG_S)
        got = 0
        broken = False
        with _Traced() as traced:
            for part, (complete, end, message) in zip(parts, outcomes):
                a.sendall(part)
                while True:
                    try:
                        fr = chan.read_frame()
                    except ProtocolError as exc:
                        assert end == "error", f"unexpected {exc!r}"
                        assert not isinstance(exc, TruncatedFrame), repr(exc)
                        assert re.search(message, str(exc)), (str(exc), message)
                        broken = True
                        break
                    if fr is None:
                        break
                    assert got < complete, "a frame the model does not decode"
                    _check_frame(fr, full.frames[got])
                    del fr
                    got += 1
                assert got == complete
                assert broken == (end == "error"), end
                if broken:
                    break
        assert traced.growth <= MAX_FRAME + ALLOC_SLACK, traced.growth
        COUNTS["frames_decoded"] += got
        if broken:
            COUNTS["protocol_errors"] += 1
            # Valid frames after the error change nothing.
            a.sendall(frame.pack_header(frame.KIND_TASK, 1, 0, 1) + b"N")
            _refuses_after_error(chan)
            return
        a.shutdown(socket.SHUT_WR)
        if full.end == "boundary":
            with pytest.raises(PeerClosed) as info:
                chan.read_frame()
            assert not isinstance(info.value, ProtocolError), repr(info.value)
            with pytest.raises((PeerClosed, ProtocolError)):
                chan.read_frame()
        else:
            assert full.end == "partial"
            with pytest.raises(TruncatedFrame) as info:
                chan.read_frame()
            assert re.search(full.message, str(info.value)), (str(info.value), full.message)
            COUNTS["protocol_errors"] += 1
            _refuses_after_error(chan)
    finally:
        chan.close()
        a.close()


def _read_blocking(pieces: List[bytes]) -> None:
    """Blocking reader; a thread sends the pieces, then ends the stream."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", HANG_S, 0))
    chan = Channel(b.detach(), blocking=True, max_frame=MAX_FRAME)
    a.settimeout(HANG_S)

    def write():
        try:
            for piece in pieces:
                a.sendall(piece)
            a.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader stopped at an error and closed its end

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    want = model_decode(b"".join(pieces))
    got = 0
    try:
        with _Traced() as traced:
            while True:
                try:
                    fr = chan.read_frame()
                except ProtocolError as exc:  # TruncatedFrame included
                    assert want.end != "boundary", f"unexpected {exc!r}"
                    assert isinstance(exc, TruncatedFrame) == (want.end == "partial"), repr(exc)
                    assert re.search(want.message, str(exc)), (str(exc), want.message)
                    COUNTS["protocol_errors"] += 1
                    _refuses_after_error(chan)
                    break
                except PeerClosed:
                    assert want.end == "boundary", want
                    break
                except TimeoutError:
                    pytest.fail(f"blocking reader hung ({got} frames read; model: {want.end})")
                assert fr is not None
                assert got < len(want.frames), "a frame the model does not decode"
                _check_frame(fr, want.frames[got])
                del fr
                got += 1
        assert got == len(want.frames)
        assert traced.growth <= MAX_FRAME + ALLOC_SLACK, traced.growth
        COUNTS["frames_decoded"] += got
    finally:
        chan.close()
        writer.join(HANG_S)
        a.close()
    assert not writer.is_alive()


def _feed(pieces: List[bytes]) -> None:
    COUNTS["streams"] += 1
    COUNTS["bytes_fed"] += 2 * sum(map(len, pieces))
    _read_lockstep(pieces)
    _read_blocking(pieces)


# ---------------------------------------------------------------- in-process

_PREFIXES = st.sampled_from([
    b"",
    struct.pack("<I", frame.MAGIC),
    struct.pack("<IB", frame.MAGIC, frame.VERSION),
    struct.pack("<IBBH", frame.MAGIC, frame.VERSION, frame.KIND_TASK, 0),
])


@_settings(EXAMPLES)
@given(prefix=_PREFIXES, noise=st.binary(max_size=4096), data=st.data())
def _fuzz_random_bytes(prefix, noise, data):
    wire = prefix + noise
    _feed(_pieces(wire, _splits(data, len(wire))))


def test_random_bytes_are_frames_errors_or_incomplete():
    before = dict(COUNTS)
    _fuzz_random_bytes()
    assert COUNTS["streams"] > before["streams"]
    assert COUNTS["protocol_errors"] > before["protocol_errors"]


@_settings(EXAMPLES)
@given(frames=st.one_of(st.lists(built_frames(), min_size=1, max_size=4),
                        st.lists(built_frames(), min_size=1, max_size=4),
                        many_small_frames()), data=st.data())
def _fuzz_mutated_frames(frames, data):
    COUNTS["frames_built"] += len(frames)
    wire = _mutate(data, frames)
    _feed(_pieces(wire, _splits(data, len(wire))))


def test_mutated_frames_decode_as_the_model_says():
    before = dict(COUNTS)
    _fuzz_mutated_frames()
    assert COUNTS["frames_built"] > before["frames_built"]
    assert COUNTS["frames_decoded"] > before["frames_decoded"]
    assert COUNTS["protocol_errors"] > before["protocol_errors"]


@_settings(EXAMPLES)
@given(frames=st.one_of(st.lists(built_frames(), min_size=1, max_size=4),
                        many_small_frames()), data=st.data())
def _fuzz_split_valid_frames(frames, data):
    COUNTS["frames_built"] += len(frames)
    wire = b"".join(f.wire for f in frames)
    want = model_decode(wire)
    assert want.end == "boundary" and len(want.frames) == len(frames)
    for f, (_, _, _, body, bufs) in zip(frames, want.frames):
        payload, carriers = pickle.loads(body, buffers=[bytearray(b) for b in bufs])
        assert payload == f.obj[0]
        assert [bytes(c) for c in carriers] == [bytes(c) for c in f.obj[1]]
    _feed(_pieces(wire, _splits(data, len(wire), max_splits=64)))


def test_valid_frames_split_anywhere_come_back_identical():
    before = dict(COUNTS)
    _fuzz_split_valid_frames()
    assert COUNTS["frames_decoded"] > before["frames_decoded"]


def test_model_agrees_with_the_examples_of_test_core_sock():
    # The model itself, on the cases the hand-written tests pin.
    huge = frame.pack_header(frame.KIND_TASK, 1, 0, 10, [1 << 40])
    assert model_decode(huge).end == "error"
    assert model_decode(frame.pack_header(frame.KIND_TASK, 1, 0, 100) + b"abc").end == "partial"
    assert model_decode(b"").end == "boundary"
    ok = _build(frame.KIND_TASK, 3, 0, "tail", [40], 0, True)
    assert model_decode(ok.wire * 2).frames[1][:3] == (frame.KIND_TASK, 3, 0)


# ---------------------------------------------------------------- live worker

def _vmrss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _send_to_worker(path: str, pieces: List[bytes]) -> bytes:
    """Send a stream on a connection of its own, end it, return the replies."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(HANG_S)
        s.connect(path)
        try:
            for piece in pieces:
                s.sendall(piece)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker dropped the connection at a bad frame
        replies = []
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            except TimeoutError:
                pytest.fail("the worker neither answered nor closed the connection")
            if not chunk:
                break
            replies.append(chunk)
        return b"".join(replies)
    finally:
        s.close()


# Frames a worker serves (a mutated kind gives the others).
_LIVE_KINDS = st.sampled_from([frame.KIND_TASK, frame.KIND_INIT])
_LIVE_PAYLOADS = st.one_of(st.none(), st.integers(-1000, 1000), st.binary(max_size=32),
                           st.sampled_from(["raise", "unpicklable", "x"]),
                           st.tuples(st.integers(0, 9), st.integers(0, 9)))


def test_live_worker_survives_malformed_frames(make_worker, monkeypatch):
    monkeypatch.setenv("SWARM_MAX_FRAME", str(MAX_FRAME))
    worker = make_worker(ECHO_WORKER)
    before = dict(COUNTS)
    round_trips = [0]
    with Socket(worker.pid, max_frame=MAX_FRAME) as steady:
        steady.connect(timeout=10)
        steady.initialize((0,), timeout=HANG_S)
        assert steady.do_task([-1, (41,)], timeout=HANG_S) == (-1, 41)
        rss_before = _vmrss_kib(worker.pid)

        @_settings(LIVE_EXAMPLES)
        @given(frames=st.lists(built_frames(
                   kinds=_LIVE_KINDS,
                   big=False, payloads=_LIVE_PAYLOADS), min_size=1, max_size=3),
               mode=st.sampled_from(["random", "valid", "mutated", "mutated"]),
               data=st.data())
        def fuzz(frames, mode, data):
            if mode == "random":
                wire = data.draw(_PREFIXES, label="prefix") + data.draw(
                    st.binary(max_size=1024), label="noise")
            else:
                COUNTS["frames_built"] += len(frames)
                wire = (b"".join(f.wire for f in frames) if mode == "valid"
                        else _mutate(data, frames))
            want = model_decode(wire)
            replies = _send_to_worker(worker.socket_path, _pieces(wire, _splits(data, len(wire))))
            COUNTS["live_inputs"] += 1
            # One reply per task/init frame, in order, until the first frame
            # a worker refuses (a bad one, or a result/error frame).
            expected_ids = []
            for kind, task_id, _, _, _ in want.frames:
                if kind not in (frame.KIND_TASK, frame.KIND_INIT):
                    break
                expected_ids.append(task_id)
            answered = model_decode(replies, frame.DEFAULT_MAX_FRAME)
            assert answered.end == "boundary"
            assert [f[0] in (frame.KIND_RESULT, frame.KIND_ERROR) for f in answered.frames] \
                == [True] * len(answered.frames)
            assert [f[1] for f in answered.frames] == expected_ids
            COUNTS["live_replies"] += len(expected_ids)
            # The worker still serves: on the old connection and a new one.
            assert worker.proc.poll() is None, "the worker died"
            round_trips[0] += 1
            i = round_trips[0]
            steady.initialize((0,), timeout=HANG_S)
            assert steady.do_task([i, (41,)], timeout=HANG_S) == (i, 41)
            with Socket(worker.pid, max_frame=MAX_FRAME) as fresh:
                fresh.connect(timeout=HANG_S)
                fresh.initialize((0,), timeout=HANG_S)
                assert fresh.do_task([("fresh", i), (i,)], timeout=HANG_S) == (("fresh", i), i)

        fuzz()
        rss_after = _vmrss_kib(worker.pid)
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
    assert COUNTS["live_inputs"] > before["live_inputs"]
    assert COUNTS["live_replies"] > before["live_replies"]
