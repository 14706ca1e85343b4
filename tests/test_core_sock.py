"""swarm._core.sock.Channel: frames over a raw AF_UNIX fd.

Driven directly over socketpairs: blocking and non-blocking reads, frames
split at every byte, many frames per read, out-of-band buffers, limits.
"""

import pickle
import socket
import sys
import threading

import numpy as np
import pytest

from swarm import PeerClosed, ProtocolError, TruncatedFrame
from swarm._core.frame import KIND_RESULT, KIND_TASK, pack_header
from swarm._core.sock import Channel


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left = Channel(a.detach())
    right = Channel(b.detach(), blocking=False)
    yield left, right
    left.close()
    right.close()


def _decode(frame):
    kind, task_id, aux, body, buffers = frame
    return kind, task_id, aux, pickle.loads(body, buffers=buffers)


def test_frame_round_trip_keeps_kind_id_aux_and_object(pair):
    left, right = pair
    assert left.send(KIND_TASK, 42, 7, {"x": [1, 2]}) is True
    assert _decode(right.read_frame()) == (KIND_TASK, 42, 7, {"x": [1, 2]})
    assert right.read_frame() is None  # non-blocking: nothing more yet


def test_many_frames_pushed_then_flushed_at_once(pair):
    left, right = pair
    for i in range(500):
        left.push(KIND_RESULT, i, 0, i * i)
    assert left.pending
    assert left.flush()
    assert not left.pending
    got = []
    while len(got) < 500:
        frame = right.read_frame()
        if frame is not None:
            got.append(_decode(frame)[3])
    assert got == [i * i for i in range(500)]


def test_frame_split_at_every_byte_is_reassembled():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = Channel(b.detach(), blocking=False)
    try:
        array = np.arange(10, dtype=np.int32)
        body = []
        data = pickle.dumps((array, "tail"), 5, buffer_callback=body.append)
        raw = bytes(body[0].raw())
        wire = pack_header(KIND_TASK, 3, 0, len(data), [len(raw)]) + data + raw
        for i, byte in enumerate(wire):
            assert reader.read_frame() is None
            a.send(bytes([byte]))
        kind, task_id, _, (back, tail) = _decode(reader.read_frame())
        assert (kind, task_id, tail) == (KIND_TASK, 3, "tail")
        np.testing.assert_array_equal(back, array)
    finally:
        a.close()
        reader.close()


def test_arrays_are_rebuilt_over_received_writable_buffers(pair):
    left, right = pair
    arrays = [np.full(n, 1.5) for n in (3, 100_000, 0)]
    done = threading.Thread(target=left.send, args=(KIND_TASK, 1, 0, arrays))
    done.start()
    frame = None
    while frame is None:
        frame = right.read_frame()
    done.join()
    buffers = frame[4]
    assert [type(b) for b in buffers] == [bytearray] * 3
    back = pickle.loads(frame[3], buffers=buffers)
    assert all(b.flags.writeable for b in back)
    assert np.shares_memory(back[1], np.frombuffer(buffers[1], dtype=np.float64))


def test_more_buffers_than_one_sendmsg_gathers(pair):
    left, right = pair
    arrays = [np.full(4, i) for i in range(300)]  # > IOV_BATCH segments
    left.send(KIND_TASK, 1, 0, arrays)
    back = _decode(right.read_frame())[3]
    assert [int(a[0]) for a in back] == list(range(300))


def test_push_holds_the_array_until_flushed_and_then_lets_go():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # The inline path (shm_threshold=0): an array this large would otherwise
    # be copied into shared memory at push (tests/test_shm.py).
    left = Channel(a.detach(), blocking=False, shm_threshold=0)
    right = Channel(b.detach())
    try:
        array = np.ones(8 * 1024 * 1024, dtype=np.uint8)  # far over the socket buffer
        before = sys.getrefcount(array)
        left.push(KIND_TASK, 1, 0, array)
        assert left.flush() is False  # the socket is full, the rest waits
        assert sys.getrefcount(array) > before
        reader = threading.Thread(target=right.read_frame)
        reader.start()
        while not left.flush():
            pass
        reader.join()
        assert sys.getrefcount(array) == before
    finally:
        left.close()
        right.close()


def test_unpicklable_object_queues_nothing(pair):
    left, right = pair
    with pytest.raises(Exception):
        left.push(KIND_TASK, 1, 0, lambda: 0)
    assert not left.pending
    left.send(KIND_TASK, 2, 0, "ok")
    assert _decode(right.read_frame())[1:] == (2, 0, "ok")


def test_oversize_frame_is_refused_before_sending():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    small = Channel(a.detach(), max_frame=1024)
    b.close()
    try:
        with pytest.raises(ProtocolError, match="frame limit"):
            small.push(KIND_TASK, 1, 0, np.zeros(1000))
        assert not small.pending
    finally:
        small.close()


def test_oversize_frame_is_refused_by_the_reader_without_allocating():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = Channel(b.detach(), max_frame=1 << 20)
    try:
        a.sendall(pack_header(KIND_TASK, 1, 0, 10, [1 << 40]))  # claims 1 TiB
        with pytest.raises(ProtocolError, match="frame limit"):
            reader.read_frame()
        with pytest.raises(ProtocolError, match="earlier protocol error"):
            reader.read_frame()
    finally:
        a.close()
        reader.close()


def test_clean_close_at_a_frame_boundary_is_peer_closed(pair):
    left, right = pair
    left.send(KIND_TASK, 1, 0, None)
    left.close()
    assert right.read_frame()[1] == 1
    with pytest.raises(PeerClosed):
        right.read_frame()


def test_close_inside_a_frame_is_a_protocol_error(pair):
    left, right = pair
    raw = socket.socket(fileno=left.fileno())
    raw.sendall(pack_header(KIND_TASK, 1, 0, 100) + b"abc")
    raw.detach()
    left.close()
    with pytest.raises(TruncatedFrame, match="closed inside a frame") as info:
        right.read_frame()
    # Both a protocol error for that frame and a peer that went away.
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, PeerClosed)


def test_closed_channel_refuses_io():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.close()
    chan = Channel(a.detach())
    chan.close()
    chan.close()
    assert chan.closed
    with pytest.raises(ValueError, match="closed"):
        chan.push(KIND_TASK, 1, 0, None)


def test_invalid_arguments_are_value_errors():
    with pytest.raises(ValueError):
        Channel(-1)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(ValueError, match="max_frame"):
            Channel(a.fileno(), max_frame=4)
    finally:
        a.close()
        b.close()
