"""numpy arrays as shared memory: a memfd passed with SCM_RIGHTS.

An out-of-band buffer of at least ``SHM_THRESHOLD`` bytes is copied once
into a sealed memfd whose fd crosses the socket; the receiver maps it, and
the array is rebuilt over the mapping with no further copy. An array that
already lives in swarm shared memory (``swarm.empty``/``swarm.zeros``, or one
received that way) is not copied at all: both sides see the same memory.
Smaller buffers keep the inline sendmsg/recv_into path. The memory goes
away with the last array over it, in every process, and no fd is left
behind -- also when a peer sends fds that are not what the frame says.
"""

import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import _shm_tasks
import swarm
from swarm import ProtocolError, Socket
from swarm._core import frame, sock
from swarm._core.frame import FD_BUFFER, KIND_RESULT, KIND_TASK, pack_header
from swarm._core.shm import KEEP_FDS_MAX, SharedBuffer, kept_fds
from swarm._core.sock import Channel
from swarm.client import BatchManager, Pool
from swarm.shm import is_shared

HERE = os.path.dirname(os.path.abspath(__file__))
# The default threshold is large (64 MiB, see SHM_THRESHOLD in sock.pyx):
# these tests lower it to 1 MiB at both ends, to move the copy path with
# arrays of a few MiB.
TEST_THRESHOLD = 1 << 20
BIG = TEST_THRESHOLD * 4     # bytes: well over the threshold
TIMEOUT_S = 30


@pytest.fixture(autouse=True)
def _test_threshold(monkeypatch):
    """TEST_THRESHOLD in this process's Channels and in every worker
    started during the test (they inherit the environment)."""
    monkeypatch.setenv("SWARM_SHM_THRESHOLD", str(TEST_THRESHOLD))
    monkeypatch.setattr(sock, "SHM_THRESHOLD", TEST_THRESHOLD)

SHM_WORKER = f"""
    import sys
    sys.path.insert(0, {HERE!r})
    from swarm.worker import run, _call, _builtin_initializer

    if __name__ == "__main__":
        run(task_processor=_call, initializer=_builtin_initializer)
"""


@pytest.fixture
def shm_worker(make_worker):
    """A live worker running (callable, *args) tasks from tests/_shm_tasks.py."""
    return make_worker(SHM_WORKER)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left = Channel(a.detach())
    right = Channel(b.detach())
    yield left, right
    left.close()
    right.close()


def _decode(frame_):
    kind, task_id, aux, body, buffers = frame_
    return pickle.loads(body, buffers=buffers)


def _mapped(array) -> bool:
    """Whether /proc/self/maps shows array's first byte in a swarm memfd."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            span, rest = line.split(" ", 1)
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return "/memfd:swarm" in rest
    return False


def _big_arrays():
    n = BIG // 8
    rng = np.random.default_rng(3)
    base = rng.random(n)
    yield "float64 C", base
    yield "float32 2-d F", np.asfortranarray(base.astype(np.float32).reshape(-1, 64))
    yield "big-endian", np.arange(n, dtype=">i8")
    yield "uint8 3-d", rng.integers(0, 255, (64, 64, BIG // 4096), dtype=np.uint8)
    yield "bool", rng.random(BIG) > 0.5
    yield "complex", (base + 1j * base).astype(np.complex128)
    yield "structured", np.zeros(n // 2, dtype=[("a", "<i8"), ("b", "<f4"), ("c", "S4")])
    yield "non-contiguous", base.reshape(-1, 4)[:, ::2]      # goes in-band
    yield "negative strides", base[::-1]                     # goes in-band


@pytest.mark.parametrize("name,array", list(_big_arrays()), ids=[n for n, _ in _big_arrays()])
def test_large_arrays_travel_as_memfds_and_come_back_equal(echo_worker, name, array):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (array,)], timeout=TIMEOUT_S)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    # numpy pickles a non-contiguous array in-band (as bytes), but the echo
    # it comes back as is contiguous: every result here is a memfd mapping.
    assert is_shared(back) and _mapped(back) and back.flags.writeable


@pytest.mark.parametrize("make", [lambda: swarm.zeros(()), lambda: swarm.zeros(3, ">f4"),
                                  lambda: swarm.zeros((0, 5)),
                                  lambda: swarm.zeros((4, 6), order="F")],
                         ids=["0-d", "big-endian", "empty", "fortran"])
def test_shared_arrays_of_any_size_come_back_equal(echo_worker, make):
    array = make()
    array[...] = 7
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (array,)], timeout=TIMEOUT_S)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert is_shared(back) == (array.nbytes > 0)   # nothing to map for 0 bytes


@pytest.mark.parametrize("threshold", [4096, TEST_THRESHOLD])
def test_below_the_threshold_the_inline_path_stays(threshold):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left = Channel(a.detach(), shm_threshold=threshold)
    right = Channel(b.detach())
    assert right.shm_threshold == TEST_THRESHOLD   # the default, as patched
    small = np.ones(threshold - 1, dtype=np.uint8)
    large = np.ones(threshold, dtype=np.uint8)
    sender = threading.Thread(target=left.send, args=(KIND_TASK, 1, 0, (small, large)))
    sender.start()   # the inline buffer may be larger than the socket buffer
    try:
        got = right.read_frame()
        sender.join(TIMEOUT_S)
        assert [type(b) for b in got[4]] == [bytearray, SharedBuffer]
        back = _decode(got)
        assert not is_shared(back[0]) and is_shared(back[1])
        np.testing.assert_array_equal(back[0], small)
        np.testing.assert_array_equal(back[1], large)
    finally:
        sender.join(TIMEOUT_S)
        left.close()
        right.close()


def test_a_swarm_array_written_by_the_worker_is_seen_by_the_client(shm_worker):
    shared = swarm.zeros((256, 1024))
    with Socket(shm_worker.pid) as worker:
        worker.connect()
        worker.do_task([0, (_shm_tasks.fill, shared, 42.0)], timeout=TIMEOUT_S)
        assert (shared == 42.0).all()  # the worker wrote into our memory
        # A view of part of it: the same memfd, at an offset.
        worker.do_task([1, (_shm_tasks.fill, shared[100:101], -1.0)], timeout=TIMEOUT_S)
        assert (shared[100] == -1.0).all() and (shared[99] == 42.0).all()
        assert (shared[101] == 42.0).all()


def test_swarm_empty_is_not_copied_when_sent(pair):
    left, right = pair
    shared = swarm.empty(1000, dtype=np.int32)
    shared[:] = np.arange(1000)
    left.send(KIND_TASK, 1, 0, shared[10:20])
    back = _decode(right.read_frame())
    back[0] = -5   # the receiver's array is the sender's memory
    assert shared[10] == -5
    np.testing.assert_array_equal(back, shared[10:20])


def test_a_received_shared_array_goes_back_without_a_copy(shm_worker):
    # The worker's echo hands back the memfd it received: the client's
    # result is a mapping of the very memory it sent.
    shared = swarm.zeros(1024)
    with Socket(shm_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (_shm_tasks.echo, shared)], timeout=TIMEOUT_S)
    back[5] = 3.0
    assert shared[5] == 3.0


def test_results_made_in_shared_memory_arrive_as_mappings(shm_worker):
    with Socket(shm_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (_shm_tasks.zeros, 100, 2.5)], timeout=TIMEOUT_S)
    assert _mapped(back) and (back == 2.5).all()


def test_lent_memory_is_kept_while_connected_and_goes_with_the_connection(shm_worker):
    # An ordinary array over the threshold travels in its sender's lent
    # memory (shm.pyx): the receiver keeps its mapping of that memfd for the
    # sender's next arrays, and the sender keeps the memfd to refill. Both
    # go when the connection does. (swarm.empty memory goes with its last
    # array: the tests above and below.)
    assert _shm_tasks.memfd_report() == ([], [])
    array = np.arange(BIG // 8, dtype=np.float64)
    with Socket(shm_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (_shm_tasks.scale, array, 2.0)], timeout=TIMEOUT_S)
        assert _mapped(back)
        view = back[10:20]
        del back
        assert (view == 2.0 * np.arange(10, 20)).all()
        report = _shm_tasks.memfd_report()
        del view
        assert _shm_tasks.memfd_report() == report      # kept for the next result
        # In the worker: held over a task, then kept (mapped once) after it.
        _, count = worker.do_task([1, (_shm_tasks.hold, array)], timeout=TIMEOUT_S)
        assert count == 1
        _, held = worker.do_task([2, (_shm_tasks.memfd_report,)], timeout=TIMEOUT_S)
        _, after = worker.do_task([3, (_shm_tasks.release,)], timeout=TIMEOUT_S)
        assert len(after[1]) == len(held[1])
    assert _shm_tasks.memfd_report() == ([], [])
    deadline = time.monotonic() + 5   # the worker sees the end of the connection
    while time.monotonic() < deadline and _memfd_maps_of(shm_worker.pid):
        time.sleep(0.02)
    assert _memfd_maps_of(shm_worker.pid) == []


def test_a_worker_lets_go_of_a_tasks_shared_array_when_the_task_is_done(shm_worker):
    # Not when the next frame arrives: the worker waits in recv with the
    # last frame no longer referenced. Read from outside, as /proc shows it.
    array = swarm.empty(BIG // 8)
    array[:] = 1.0
    with Socket(shm_worker.pid) as worker:
        worker.connect()
        _, total = worker.do_task([0, (_shm_tasks.total, array)], timeout=TIMEOUT_S)
        assert total == BIG // 8
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _memfd_maps_of(shm_worker.pid):
            time.sleep(0.02)
        assert _memfd_maps_of(shm_worker.pid) == []


def _memfd_maps_of(pid):
    with open(f"/proc/{pid}/maps") as f:
        return [line for line in f if "/memfd:swarm" in line]


def test_a_pool_batch_of_8_mib_arrays_end_to_end():
    arrays = [np.full(1 << 20, float(i)) for i in range(12)]   # 8 MiB each
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_shm_tasks.scale, a, 3.0) for a in arrays]).batch
        batch.start()
        results = batch.list_results()
        assert [float(r[0]) for r in results] == [3.0 * i for i in range(12)]
        assert all(r.nbytes == 8 << 20 and _mapped(r) for r in results)
        shared = [swarm.zeros(1 << 20) for _ in range(4)]
        batch = BatchManager(pool, [(_shm_tasks.fill, s, 9.0) for s in shared]).batch
        batch.start()
        batch.list_results()
        assert all((s == 9.0).all() for s in shared)
    del results, shared
    assert _shm_tasks.memfd_report() == ([], [])


def test_many_frames_with_fds_through_a_non_blocking_writer():
    kept_before = kept_fds()
    # Partial sends: each frame has an 300 KiB inline array (the socket
    # fills up mid-frame) and a shared one that goes as an fd with the
    # frame's first byte. Every frame must get its own fd, exactly once.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left = Channel(a.detach(), blocking=False, shm_threshold=0)
    right = Channel(b.detach())
    shared = swarm.zeros(200, dtype=np.int64)
    shared[:] = np.arange(200)
    got = []

    def read():
        for _ in range(200):
            got.append(_decode(right.read_frame()))

    reader = threading.Thread(target=read)
    try:
        for i in range(200):
            left.push(KIND_TASK, i, 0, (np.full(300_000 // 8, i), shared[i:i + 1], i))
        reader.start()
        while not left.flush():
            pass
        reader.join(TIMEOUT_S)
        assert not reader.is_alive()
        for i, (inline, one, n) in enumerate(got):
            assert n == i and inline[0] == i and one[0] == i and is_shared(one)
        del inline, one
        assert right.queued_fds == 0
    finally:
        left.close()
        right.close()
    del got
    assert kept_fds() == kept_before + 1  # only `shared`'s own fd is left


def test_more_shared_arrays_than_one_message_carries(pair):
    left, right = pair
    shared = [swarm.zeros(4, dtype=np.int32) for _ in range(frame.MAX_FDS + 40)]
    for i, s in enumerate(shared):
        s[:] = i
    left.send(KIND_TASK, 1, 0, shared)
    got = right.read_frame()
    kinds = [type(b) for b in got[4]]
    assert kinds == [SharedBuffer] * frame.MAX_FDS + [bytearray] * 40
    back = _decode(got)
    assert [int(x[0]) for x in back] == list(range(frame.MAX_FDS + 40))


def test_received_buffers_keep_fds_only_within_the_budget():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left = Channel(a.detach())
    right = Channel(b.detach())
    try:
        assert kept_fds() == 0
        held = []
        for i in range(KEEP_FDS_MAX + 20):
            array = swarm.zeros(2)   # its own memfd, let go once sent
            array[:] = i
            left.send(KIND_RESULT, i, 0, array)
            del array
            held.append(_decode(right.read_frame()))
        assert kept_fds() == KEEP_FDS_MAX
        assert [int(h[0]) for h in held] == list(range(KEEP_FDS_MAX + 20))
        # Over the budget, a received array sent on is copied, still right.
        left, right = right, left
        right.send(KIND_RESULT, 0, 0, held[-1])
        np.testing.assert_array_equal(_decode(left.read_frame()), held[-1])
        del held
        assert kept_fds() == 0
    finally:
        left.close()
        right.close()


def test_push_copies_a_large_array_at_once_and_holds_no_reference(pair):
    left, right = pair
    array = np.ones(BIG, dtype=np.uint8)
    before = sys.getrefcount(array)
    left.push(KIND_TASK, 1, 0, array)
    assert sys.getrefcount(array) == before   # a snapshot: the copy is made
    array[:] = 0
    left.flush()
    assert (_decode(right.read_frame()) == 1).all()


def test_shared_buffers_count_toward_max_frame():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    small = Channel(a.detach(), max_frame=1 << 16)
    reader = Channel(b.detach(), max_frame=1 << 16)
    try:
        with pytest.raises(ProtocolError, match="frame limit"):
            small.push(KIND_TASK, 1, 0, swarm.zeros(1 << 14))   # 128 KiB
        assert not small.pending
        # A peer claiming more than the limit: refused before mapping.
        memfd = _sealed_memfd(1 << 20)
        header = pack_header(KIND_TASK, 1, 0, 0, [(1 << 20) | FD_BUFFER], offsets=[0])
        _send_raw(small.fileno(), header, b"", [memfd])
        os.close(memfd)
        with pytest.raises(ProtocolError, match="frame limit"):
            reader.read_frame()
    finally:
        small.close()
        reader.close()


# ---------------------------------------------------------------- malformed fds

def _sealed_memfd(size, seals=("SHRINK", "GROW")):
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    import fcntl
    flags = 0
    for name in seals:
        flags |= getattr(fcntl, f"F_SEAL_{name}")
    if flags:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, flags)
    return fd


def _array_frame(n_bytes, offset=0):
    """Body and table of a frame whose one array is an fd-carried buffer."""
    bufs = []
    body = pickle.dumps(np.zeros(n_bytes, dtype=np.uint8), 5, buffer_callback=bufs.append)
    return body, [n_bytes | FD_BUFFER], [offset]


def _send_raw(sock_fd, header, body, fds):
    s = socket.socket(fileno=os.dup(sock_fd))
    try:
        if fds:
            socket.send_fds(s, [header + body], fds)
        else:
            s.sendall(header + body)
    finally:
        s.close()


@pytest.fixture
def raw_pair():
    """A raw socket to write crafted frames on, and a Channel reading them."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = Channel(b.detach())
    reader.set_recv_timeout(10)
    yield a, reader
    a.close()
    reader.close()


def _crafted(raw, reader, fd, size, offset=0):
    body, lengths, offsets = _array_frame(size, offset)
    header = pack_header(KIND_TASK, 1, 0, len(body), lengths, offsets=offsets)
    _send_raw(raw.fileno(), header, body, [fd] if fd is not None else [])
    if fd is not None:
        os.close(fd)   # the reader holds its own copy now (or closed it)


def test_a_valid_crafted_memfd_frame_is_accepted(raw_pair):
    raw, reader = raw_pair
    fd = _sealed_memfd(8192)
    os.pwrite(fd, b"\x07" * 100, 4096 + 50)
    _crafted(raw, reader, fd, 100, offset=4096 + 50)
    back = _decode(reader.read_frame())
    assert (back == 7).all() and back.shape == (100,)


def test_a_frame_claiming_an_fd_it_did_not_send_is_refused(raw_pair):
    raw, reader = raw_pair
    _crafted(raw, reader, None, 100)
    with pytest.raises(ProtocolError, match="no file descriptors arrived"):
        reader.read_frame()


def test_an_fd_that_is_not_a_memfd_is_refused(raw_pair, tmp_path):
    raw, reader = raw_pair
    path = tmp_path / "plain"
    path.write_bytes(b"x" * 4096)
    _crafted(raw, reader, os.open(path, os.O_RDWR), 100)
    with pytest.raises(ProtocolError, match="not a memfd"):
        reader.read_frame()


def test_a_pipe_is_refused(raw_pair):
    raw, reader = raw_pair
    r, w = os.pipe()
    os.close(w)
    _crafted(raw, reader, r, 100)
    with pytest.raises(ProtocolError, match="not a memfd"):
        reader.read_frame()


def test_an_unsealed_memfd_is_refused(raw_pair):
    raw, reader = raw_pair
    _crafted(raw, reader, _sealed_memfd(4096, seals=()), 100)
    with pytest.raises(ProtocolError, match="not sealed against shrinking"):
        reader.read_frame()


def test_a_memfd_smaller_than_declared_is_refused(raw_pair):
    raw, reader = raw_pair
    _crafted(raw, reader, _sealed_memfd(4096), 4097)
    with pytest.raises(ProtocolError, match="smaller than the buffer"):
        reader.read_frame()


def test_an_offset_past_the_end_is_refused(raw_pair):
    raw, reader = raw_pair
    _crafted(raw, reader, _sealed_memfd(4096), 10, offset=4090)
    with pytest.raises(ProtocolError, match="smaller than the buffer"):
        reader.read_frame()


def test_a_read_only_memfd_is_refused(raw_pair):
    raw, reader = raw_pair
    fd = _sealed_memfd(4096)
    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    _crafted(raw, reader, ro, 100)
    with pytest.raises(ProtocolError, match="cannot map"):
        reader.read_frame()


def test_more_fds_than_the_frame_declares_are_refused(raw_pair):
    raw, reader = raw_pair
    body, lengths, offsets = _array_frame(100)
    header = pack_header(KIND_TASK, 1, 0, len(body), lengths, offsets=offsets)
    fds = [_sealed_memfd(4096), _sealed_memfd(4096)]
    _send_raw(raw.fileno(), header, body, fds)
    for fd in fds:
        os.close(fd)
    with pytest.raises(ProtocolError, match="but 2 file descriptors arrived"):
        reader.read_frame()


def _plain_frame():
    body = pickle.dumps(None, 5)
    return pack_header(KIND_TASK, 1, 0, len(body)) + body


def test_fds_no_frame_uses_are_refused_at_the_next_frame(raw_pair):
    raw, reader = raw_pair
    plain = _plain_frame()
    fd = _sealed_memfd(4096)
    _send_raw(raw.fileno(), plain, b"", [fd])    # an fd on a frame without fds
    os.close(fd)
    assert _decode(reader.read_frame()) is None  # could be a later frame's: kept
    assert reader.queued_fds == 1
    _send_raw(raw.fileno(), plain, b"", [])
    with pytest.raises(ProtocolError, match="without a frame that uses them"):
        reader.read_frame()
    assert reader.queued_fds == 0


def test_fds_no_frame_uses_are_refused_at_the_end_of_the_stream(raw_pair):
    raw, reader = raw_pair
    fd = _sealed_memfd(4096)
    _send_raw(raw.fileno(), _plain_frame(), b"", [fd])
    os.close(fd)
    reader.read_frame()
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="no frame uses"):
        reader.read_frame()
    assert reader.queued_fds == 0


def test_closing_a_channel_closes_the_fds_it_still_holds(raw_pair):
    raw, reader = raw_pair
    fd = _sealed_memfd(4096)
    _send_raw(raw.fileno(), _plain_frame(), b"", [fd])
    os.close(fd)
    reader.read_frame()
    assert reader.queued_fds == 1
    reader.close()   # the no_leaks fixture checks that the fd went with it
    assert reader.queued_fds == 0


def test_a_truncated_control_message_closes_what_arrived(tmp_path):
    # MSG_CTRUNC: the receiver has no room for the fds (RLIMIT_NOFILE), so
    # the kernel drops them; in a child, whose fd limit can be lowered.
    script = tmp_path / "ctrunc.py"
    script.write_text(textwrap.dedent(f"""
        import os, pickle, resource, socket, sys
        sys.path.insert(0, {HERE!r})
        from test_shm import _sealed_memfd, _array_frame
        from swarm import ProtocolError
        from swarm._core.frame import KIND_TASK, pack_header
        from swarm._core.sock import Channel
        a, b = socket.socketpair()
        reader = Channel(b.detach())
        body, lengths, offsets = _array_frame(100)
        lengths, offsets = lengths * 8, [0] * 8
        header = pack_header(KIND_TASK, 1, 0, len(body), lengths, offsets=offsets)
        fds = [_sealed_memfd(4096) for _ in range(8)]
        socket.send_fds(a, [header + body], fds)
        for fd in fds:
            os.close(fd)
        highest = max(int(x) for x in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        try:
            reader.read_frame()
        except ProtocolError as exc:
            print("refused:", exc)
        memfds = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                memfds += os.readlink(f"/proc/self/fd/{{fd}}").startswith("/memfd:")
            except OSError:
                pass  # the fd listdir used
        print("memfds left:", memfds)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=TIMEOUT_S, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             [os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")])))
    assert "refused:" in out.stdout and "cut off (MSG_CTRUNC)" in out.stdout, out
    assert "memfds left: 0" in out.stdout, out


def test_a_live_worker_refuses_bad_fds_and_keeps_serving(shm_worker):
    with Socket(shm_worker.pid) as steady:
        steady.connect()
        for bad in (lambda: _sealed_memfd(4096, seals=()), lambda: _sealed_memfd(10)):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(TIMEOUT_S)
            s.connect(shm_worker.socket_path)
            fd = bad()
            body, lengths, offsets = _array_frame(100)
            header = pack_header(KIND_TASK, 1, 0, len(body), lengths, offsets=offsets)
            socket.send_fds(s, [header + body], [fd])
            os.close(fd)
            assert s.recv(1) == b""   # refused: the worker closed this connection
            s.close()
        _, (fds, maps) = steady.do_task([0, (_shm_tasks.memfd_report,)], timeout=TIMEOUT_S)
        assert (fds, maps) == ([], [])   # the refused fds were closed, not kept
        shared = swarm.zeros(10)
        steady.do_task([1, (_shm_tasks.fill, shared, 1.0)], timeout=TIMEOUT_S)
        assert (shared == 1.0).all()


# ---------------------------------------------------------------- SharedBuffer

def test_a_shared_buffer_is_unmapped_when_its_last_view_goes():
    buf = SharedBuffer(1 << 16)
    view = np.frombuffer(buf, dtype=np.uint8)
    assert buf.exports == 1 and _mapped(view)
    fd = buf.fd
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:swarm")
    del buf
    view[:] = 1                      # still mapped: the view holds it
    address = view.__array_interface__["data"][0]
    del view
    with open("/proc/self/maps") as f:
        assert not any(int(line.split("-")[0], 16) == address for line in f)
    assert not os.path.exists(f"/proc/self/fd/{fd}") or not os.readlink(
        f"/proc/self/fd/{fd}").startswith("/memfd:swarm")


def test_a_shared_buffer_is_sealed_against_resizing():
    import fcntl
    buf = SharedBuffer(4096)
    seals = fcntl.fcntl(buf.fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
    with pytest.raises(PermissionError):
        os.ftruncate(buf.fd, 10)


def test_empty_refuses_object_dtypes_and_bad_shapes():
    with pytest.raises(TypeError, match="Python objects"):
        swarm.empty(3, dtype=object)
    with pytest.raises(ValueError, match="negative"):
        swarm.empty((2, -1))
    assert swarm.zeros((2, 3), dtype="i2").sum() == 0
