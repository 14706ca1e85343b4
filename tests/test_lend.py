"""Lending: ordinary arrays of at least SHM_THRESHOLD bytes travel in
recycled shared memory of the sender (a Lent, swarm/_core/shm.pyx).

The sender copies the array once into a memfd it keeps mapped and sends the
fd marked lent; the receiver maps it, and when its last view is gone its
Channel sends a release frame; only then is that memory filled again. An
echo comes back to its owner as a view of the owner's own mapping; a
borrowed array sent to a third peer is copied; a peer that goes away
abandons what it holds (never refilled). Lents are bounded (LEND_MAX), and
none outlives the last channel that lends.
"""

import gc
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest

import _shm_tasks
from swarm import PeerClosed, ProtocolError
from swarm._core import frame
from swarm._core.frame import KIND_RESULT, pack_header
from swarm._core.shm import MAP_CACHE_MAX, SharedBuffer, lent_stats
from swarm._core.sock import SHM_THRESHOLD, Channel
from swarm.client import BatchManager, Pool, Sprint

MIB = 1 << 20
BIG = 4 << 20                 # bytes: over the default threshold (1 MiB)
N = BIG // 8                  # float64 elements


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a.detach()), Channel(b.detach())


@pytest.fixture
def chans():
    """Three connected pairs, closed afterwards: (a<->b), (b2<->c)."""
    made = []

    def make():
        pair = _pair()
        made.extend(pair)
        return pair

    yield make
    for chan in made:
        chan.close()


def _send(src, dst, obj):
    """src sends obj, dst reads it; returns (value, buffers)."""
    src.send(KIND_RESULT, 1, 0, obj)
    _, _, _, body, buffers = dst.read_frame()
    return pickle.loads(body, buffers=buffers), buffers


def _settle(src, dst):
    """src sends the releases it owes dst; dst handles them."""
    src.flush()
    assert dst.read_frame() is None   # a blocking channel: only releases came


def test_the_default_threshold_is_one_mib():
    assert SHM_THRESHOLD == 1 << 20


def test_a_lent_array_is_refilled_only_after_the_peer_releases_it(chans):
    left, right = chans()
    x = np.arange(N, dtype=np.float64)
    got, buffers = _send(left, right, x)
    assert type(buffers[0]) is SharedBuffer and right.cached_maps == 1
    np.testing.assert_array_equal(got, x)
    assert left.lent_out == 1 and lent_stats() == (1, 0, 0)
    # Held by the receiver: a second array needs a second Lent.
    got2, _ = _send(left, right, x + 1)
    assert left.lent_out == 2 and lent_stats()[:2] == (2, 0)
    np.testing.assert_array_equal(got, x)          # untouched by the second send
    np.testing.assert_array_equal(got2, x + 1)
    del got, buffers, got2, _
    _settle(right, left)
    assert left.lent_out == 0 and lent_stats() == (2, 2, 2 * BIG)
    # Refilled: no new Lent for the next array.
    got3, _ = _send(left, right, x * 3)
    assert lent_stats()[:2] == (2, 1)
    np.testing.assert_array_equal(got3, x * 3)


def test_a_refilled_lent_memfd_is_not_mapped_again(chans):
    left, right = chans()
    x = np.arange(N, dtype=np.float64)
    for k in range(1, 5):
        got, _ = _send(left, right, x * k)
        np.testing.assert_array_equal(got, x * k)    # the refill, seen through the cache
        if k == 1:
            maps = len(_shm_tasks.memfd_report()[1])
        assert len(_shm_tasks.memfd_report()[1]) == maps   # no new mapping
        del got, _
        _settle(right, left)
    assert lent_stats()[0] == 1 and right.cached_maps == 1


def test_a_channel_keeps_at_most_map_cache_max_mappings(chans):
    left, right = chans()
    held = [_send(left, right, np.full(N, float(i)))[0] for i in range(MAP_CACHE_MAX + 3)]
    assert right.cached_maps == MAP_CACHE_MAX       # the oldest dropped ...
    assert [float(h[0]) for h in held] == [float(i) for i in range(MAP_CACHE_MAX + 3)]
    del held                                        # ... and unmapped with their arrays
    right.close()
    left.close()
    assert _shm_tasks.memfd_report() == ([], [])


def test_the_frame_is_a_snapshot_of_the_array_at_push(chans):
    left, right = chans()
    x = np.ones(N)
    left.push(KIND_RESULT, 1, 0, x)
    x[:] = 7.0                                     # after push, before flush
    left.flush()
    _, _, _, body, buffers = right.read_frame()
    assert (pickle.loads(body, buffers=buffers) == 1.0).all()


def test_an_echo_comes_back_as_a_view_of_the_owners_memory(chans):
    left, right = chans()
    x = np.arange(N, dtype=np.float64)
    borrowed, _ = _send(left, right, x)
    echo, buffers = _send(right, left, borrowed)   # back to its owner: plain fd
    assert buffers[0].fd == -1                     # a view of the Lent, not a new mapping
    assert lent_stats()[0] == 1
    np.testing.assert_array_equal(echo, x)
    del borrowed, _
    _settle(right, left)                           # the peer let go; our echo holds it
    assert left.lent_out == 0
    other, _ = _send(left, right, x * 5)           # so this needs another Lent
    assert lent_stats()[0] == 2
    np.testing.assert_array_equal(echo, x)
    np.testing.assert_array_equal(other, x * 5)
    del echo, buffers
    assert lent_stats()[1] == 1                    # the echo was the last hold


def test_an_echo_can_be_lent_again_without_a_copy(chans):
    left, right = chans()
    borrowed, _ = _send(left, right, np.full(N, 2.0))
    echo, _ = _send(right, left, borrowed)
    del borrowed, _
    again, buffers = _send(left, right, echo)      # our own memory: lent as is
    assert lent_stats()[0] == 1 and left.lent_out == 2   # one release still owed
    np.testing.assert_array_equal(again, np.full(N, 2.0))


def test_a_borrowed_array_sent_to_a_third_peer_is_copied(chans):
    a, b = chans()
    b2, c = chans()
    x = np.arange(N, dtype=np.float64)
    at_b, _ = _send(a, b, x)
    at_c, buffers = _send(b2, c, at_b)             # b forwards what a lent it
    assert lent_stats()[0] == 2                    # a's Lent and b's copy
    del at_b, _
    _settle(b, a)                                  # b is done: a may refill its Lent
    assert a.lent_out == 0 and b2.lent_out == 1
    _send(a, b, np.zeros(N))                       # ... and does
    np.testing.assert_array_equal(at_c, x)         # c's array is b's copy: intact


def test_a_peer_that_goes_away_abandons_what_it_holds(chans):
    left, right = chans()
    x = np.arange(N, dtype=np.float64)
    held, _ = _send(left, right, x)
    left.close()                                   # the holder's peer is gone
    assert lent_stats()[0] == 0                    # unmapped here, never refilled
    np.testing.assert_array_equal(held, x)         # the receiver's mapping is its own
    del held, _
    with pytest.raises(PeerClosed):                # its release will go nowhere
        right.read_frame()


def test_releases_from_another_thread_go_with_the_next_flush(chans):
    left, right = chans()
    got, buffers = _send(left, right, np.ones(N))
    box = [got, buffers]
    del got, buffers
    thread = threading.Thread(target=box.clear)    # the last view dies there
    thread.start()
    thread.join()
    _settle(right, left)
    assert left.lent_out == 0 and lent_stats()[1] == 1


def test_a_borrowed_array_twice_in_one_frame_is_held_twice(chans):
    left, right = chans()
    borrowed, _ = _send(left, right, np.ones(N))
    (p, q), _ = _send(right, left, (borrowed[:], borrowed[1:]))   # two fds, one Lent
    assert lent_stats()[0] == 1
    del borrowed, _
    _settle(right, left)
    assert left.lent_out == 0 and lent_stats()[1] == 0   # the two views hold it
    del p
    assert lent_stats()[1] == 0
    del q
    assert lent_stats()[1] == 1


def test_below_the_threshold_arrays_go_inline(chans):
    left, right = chans()
    x = np.ones(SHM_THRESHOLD // 8 - 1)
    sender = threading.Thread(target=left.send, args=(KIND_RESULT, 1, 0, x))
    sender.start()      # inline, larger than the socket buffer: read while sent
    _, _, _, body, buffers = right.read_frame()
    sender.join()
    assert type(buffers[0]) is not SharedBuffer and lent_stats()[0] == 0
    np.testing.assert_array_equal(pickle.loads(body, buffers=buffers), x)


@pytest.mark.parametrize("body, nbufs, message", [
    (b"", 0, "did not lend"),
    (b"xx", 0, "carries a body"),
])
def test_a_bad_release_frame_is_a_protocol_error(body, nbufs, message):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = Channel(b.detach())
    try:
        a.sendall(pack_header(frame.KIND_RELEASE, 0, 12345, len(body)) + body)
        with pytest.raises(ProtocolError, match=message):
            reader.read_frame()
        with pytest.raises(ProtocolError, match="earlier protocol error"):
            reader.read_frame()
    finally:
        a.close()
        reader.close()


def test_a_release_for_what_was_lent_on_another_channel_is_refused(chans):
    a, b = chans()
    c, d = chans()
    _, buffers = _send(a, b, np.ones(N))
    lent_ino = buffers[0].inode
    raw = os.dup(d.fileno())                       # d's socket, written by hand
    try:
        os.write(raw, pack_header(frame.KIND_RELEASE, 0, lent_ino, 0))
    finally:
        os.close(raw)
    with pytest.raises(ProtocolError, match="did not lend"):
        c.read_frame()
    assert a.lent_out == 1                         # a's hold is untouched


def test_past_lend_max_arrays_go_inline():
    code = textwrap.dedent("""
        import pickle, socket, threading
        import numpy as np
        from swarm._core.shm import SharedBuffer, lent_stats
        from swarm._core.sock import Channel
        a, b = socket.socketpair()
        left, right = Channel(a.detach()), Channel(b.detach())
        held = []
        for i in range(3):
            # (the third goes inline, larger than the socket: sent from a thread)
            sender = threading.Thread(target=left.send,
                                      args=(3, i, 0, np.full(1 << 18, float(i))))
            sender.start()
            _, _, _, body, buffers = right.read_frame()
            sender.join()
            held.append((pickle.loads(body, buffers=buffers), type(buffers[0])))
        assert [t is SharedBuffer for _, t in held] == [True, True, False], held
        assert [float(x[0]) for x, _ in held] == [0.0, 1.0, 2.0]
        assert lent_stats()[0] == 2
        print("ok")
    """)
    env = dict(os.environ, SWARM_LEND_MAX="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_no_lent_memory_outlives_the_last_channel_that_lends(chans):
    left, right = chans()
    got, _ = _send(left, right, np.ones(N))
    del got, _
    _settle(right, left)
    assert lent_stats() == (1, 1, BIG)
    left.close()
    right.close()
    assert lent_stats() == (0, 0, 0)
    assert _shm_tasks.memfd_report() == ([], [])


def test_a_batch_recycles_a_few_lents_for_many_arrays():
    arrays = [np.full(1 << 18, float(i)) for i in range(40)]   # 2 MiB each
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_shm_tasks.total, a) for a in arrays]).batch
        batch.start()
        assert batch.list_results() == [float(i) * (1 << 18) for i in range(40)]
        lents = lent_stats()[0]
    assert 1 <= lents <= 12          # a few per worker in flight, not one per task
    gc.collect()
    assert lent_stats() == (0, 0, 0)


def test_results_kept_after_the_pool_closes_stay_valid():
    arrays = [np.full(1 << 18, float(i)) for i in range(6)]
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_shm_tasks.scale, a, 2.0) for a in arrays]).batch
        batch.start()
        results = batch.list_results()
    # The workers that lent these are gone; the mappings are ours.
    assert [float(r[-1]) for r in results] == [2.0 * i for i in range(6)]
    assert all(_shm_tasks.is_shared(r) for r in results)


# ------------------------------------------------- found in reviews

def _run_script(source, **env):
    full_env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), **env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_evicting_a_free_lent_keeps_the_free_bytes_right():
    # At LEND_MAX, a size no free Lent fits evicts the coldest one: its
    # bytes must leave the count, or the cache soon refuses everything.
    _run_script("""
        import pickle, socket
        import numpy as np
        from swarm._core.frame import KIND_RESULT
        from swarm._core.shm import lent_stats
        from swarm._core.sock import Channel
        MIB = 1 << 20
        a, b = socket.socketpair()
        left, right = Channel(a.detach()), Channel(b.detach())
        for rnd, size in enumerate([1, 4] * 4):       # caps that never fit each other
            left.send(KIND_RESULT, rnd, 0, np.ones(size * MIB // 8))
            f = right.read_frame()
            while f is None:   # a retire frame came first (the evicted memfd)
                f = right.read_frame()
            arr = pickle.loads(f[3], buffers=f[4])
            assert arr[0] == 1
            del f, arr
            right.flush()
            assert left.read_frame() is None
            assert left.lent_out == 0
            assert lent_stats() == (1, 1, size * MIB), (rnd, lent_stats())
        left.close(); right.close()
    """, SWARM_LEND_MAX="1", SWARM_LEND_CACHE=str(16 << 20))


def test_own_lent_memory_sent_back_after_its_release_is_refused():
    # A peer that released a Lent no longer holds it: sending it back would
    # make us view memory we refill. (A raw peer, in a subprocess.)
    _run_script("""
        import os, pickle, socket, struct
        import numpy as np
        from swarm import ProtocolError
        from swarm._core import frame
        from swarm._core.frame import FD_BUFFER, KIND_RELEASE, KIND_RESULT, pack_header
        from swarm._core.shm import lent_stats
        from swarm._core.sock import Channel
        MIB = 1 << 20
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        left = Channel(a.detach())
        left.send(KIND_RESULT, 1, 0, np.full(2 * MIB // 8, 1.0))
        data, fds, _flags, _addr = socket.recv_fds(b, 1 << 16, 8)
        kind, task_id, aux, body_len, nbufs = frame.unpack_header(data)
        length, offset = struct.unpack("<QQ", data[frame.HEADER_SIZE:frame.HEADER_SIZE + 16])
        body = data[frame.HEADER_SIZE + 16:]
        while len(body) < body_len:
            body += b.recv(body_len - len(body))
        assert length & frame.LENT_BUFFER
        b.sendall(pack_header(KIND_RELEASE, 0, os.fstat(fds[0]).st_ino, 0))   # done with it
        size = length & ~(FD_BUFFER | frame.LENT_BUFFER)
        socket.send_fds(b, [pack_header(KIND_RESULT, 2, 0, len(body), [size | FD_BUFFER],
                                        offsets=[offset]) + body], [fds[0]])  # ... here it is
        os.close(fds[0])
        try:
            while left.read_frame() is None:
                pass
        except ProtocolError as exc:
            assert "does not hold" in str(exc), exc
        else:
            raise AssertionError("accepted")
        assert lent_stats() == (1, 1, 2 * MIB)    # free once, and only once
        print("ok")
    """)


def test_an_idle_worker_gets_its_releases_when_the_caller_drops_results():
    with Pool(workers=1) as pool:
        sprint = Sprint()
        pool.submit_sprint(sprint)
        sprint.submit_tasks([(np.ones, 2 * MIB // 8) for _ in range(3)])
        results = [r for _i, r in sprint.yield_results()]
        assert all(r.shape == (2 * MIB // 8,) and _shm_tasks.is_shared(r) for r in results)
        del results                         # the releases go now, not with the next task
        chans = [w.chan for w in pool._workers.values()]
        deadline = time.monotonic() + 10
        while any(c.releases_waiting for c in chans) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(c.releases_waiting for c in chans)
        # Sent before the next task: the worker has them all when it runs it.
        sprint.submit_tasks([(lent_stats,)])
        (_i, (lents, free, _bytes)), = list(sprint.yield_results())
        assert lents >= 1 and free == lents, f"worker: {lents} Lents, {free} free"


def test_a_forked_child_never_refills_the_lents_it_inherited():
    _run_script("""
        import os, pickle, socket
        import numpy as np
        from swarm._core.frame import KIND_RESULT
        from swarm._core.shm import lent_stats
        from swarm._core.sock import Channel
        MIB = 1 << 20

        def pair():
            a, b = socket.socketpair()
            return Channel(a.detach()), Channel(b.detach())

        def get(ch):
            f = ch.read_frame()
            while f is None:
                f = ch.read_frame()
            return pickle.loads(f[3], buffers=f[4])

        left, right = pair()
        left.send(KIND_RESULT, 0, 0, np.zeros(2 * MIB // 8))   # warms one Lent ...
        get(right)
        right.flush()
        left.read_frame()                                       # ... free again
        assert lent_stats()[1] == 1
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(go_r, 1)
            assert lent_stats() == (0, 0, 0)
            l2, r2 = pair()
            l2.send(KIND_RESULT, 0, 0, np.full(2 * MIB // 8, 7.0))
            get(r2)
            os._exit(0)
        left.send(KIND_RESULT, 1, 0, np.full(2 * MIB // 8, 1.0))   # the parent lends it
        got = get(right)
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert (got == 1.0).all(), "the parent's array in flight was overwritten by the child"
    """)


def _one(sprint, task):
    sprint.submit_tasks([task])
    (_i, r), = list(sprint.yield_results())
    return r


def _wait_releases(pool, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(w.chan.releases_waiting for w in pool._workers.values()
                   if w.chan is not None):
            return
        time.sleep(0.02)
    raise AssertionError("releases never sent")


def test_a_forked_child_keeps_the_result_arrays_it_inherited():
    # A result is the worker's lent memory, MAP_SHARED. A forked child
    # (multiprocessing's fork context, say) inherits the mapping; once the
    # parent drops its copy, the worker refills that memory with the next
    # result and the child's array changes under it. _forget_lents_in_child
    # only covers the process's own Lents, not borrowed buffers.
    with Pool(workers=1) as pool:
        sprint = Sprint()
        pool.submit_sprint(sprint)
        r = _one(sprint, (np.full, N, 1.0))
        assert _shm_tasks.is_shared(r)
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: looks at its array once the parent moved on
            try:
                os.read(go_r, 1)
                os._exit(0 if (r == 1.0).all() else 1)
            finally:
                os._exit(2)
        os.close(go_r)
        del r
        _wait_releases(pool)
        r2 = _one(sprint, (np.full, N, 2.0))   # the worker refills its free Lent
        os.write(go_w, b"x")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        del r2
    assert os.waitstatus_to_exitcode(status) == 0, \
        "the forked child's inherited result array was overwritten by a later result"


def test_releases_for_a_worker_that_just_died_do_not_kill_the_io_thread():
    # The "releases" command iterates self._workers.values() and flushes;
    # a flush to a dead worker reaps it and spawns a replacement (the dict
    # changes during the iteration: RuntimeError, the pool's I/O thread dies).
    # The GIL is held (long switch interval) so that the I/O thread handles
    # the wake-up before it has seen the worker's EOF.
    with Pool(workers=1) as pool:
        sprint = Sprint()
        pool.submit_sprint(sprint)
        r = _one(sprint, (np.ones, N))
        assert _shm_tasks.is_shared(r)
        pid, = pool.pids
        old = sys.getswitchinterval()
        sys.setswitchinterval(30.0)
        try:
            del r                       # waker -> _post: the I/O thread wakes for the pipe
            os.kill(pid, signal.SIGKILL)
            t = time.perf_counter()
            while time.perf_counter() - t < 0.5:   # the GIL stays here; the worker dies
                pass
        finally:
            sys.setswitchinterval(old)
        time.sleep(1.0)
        assert pool._fatal is None, f"the pool's I/O thread died: {pool._fatal!r}"
        assert _one(sprint, (abs, -3)) == 3


def test_a_kept_result_does_not_keep_its_closed_pool_alive():
    # Each borrowed result holds its Channel's ReleaseSink, whose waker is
    # the pool's bound method: one kept array keeps a closed Pool (and its
    # requestors) alive. Channel.close() swaps the sink but leaves the old
    # one's waker set.
    pool = Pool(workers=1)
    sprint = Sprint()
    pool.submit_sprint(sprint)
    r = _one(sprint, (np.ones, N))
    assert _shm_tasks.is_shared(r)
    pool.close()
    ref = weakref.ref(pool)
    del pool, sprint
    gc.collect()
    try:
        assert ref() is None, "a result array keeps its closed pool alive"
    finally:
        del r


def test_a_channel_in_a_garbage_cycle_through_its_waker_is_collected():
    # Channel -> sink -> waker -> owner -> Channel, as a pool makes: the
    # collector must not clear the channel's fields before its __dealloc__
    # (which used them: a crash once, in the suite).
    class Owner:
        def wake(self):
            pass

    for _ in range(20):
        left, right = _pair()
        owner = Owner()
        owner.chan = left
        left.set_release_waker(owner.wake)
        got, _ = _send(left, right, np.ones(N))
        del owner, left, got, _
        gc.collect()
        right.close()
    assert lent_stats()[0] == 0


def test_a_worker_that_dies_holding_a_lent_array_costs_nothing_but_a_retry(tmp_path):
    marker = str(tmp_path / "died")
    arrays = [np.full(1 << 18, float(i)) for i in range(6)]     # 2 MiB each: lent
    with Pool(workers=2, max_retries=1) as pool:
        tasks = [(_shm_tasks.total, a) for a in arrays]
        tasks[3] = (_shm_tasks.total_dying_once, marker, arrays[3])
        batch = BatchManager(pool, tasks).batch
        batch.start()
        assert batch.list_results() == [float(i) * (1 << 18) for i in range(6)]
        assert os.path.exists(marker)
    assert lent_stats() == (0, 0, 0)    # the dead worker's hold was abandoned, then unmapped


def test_memory_the_lender_unmapped_is_not_kept_by_the_receiver():
    # The lender's free cache is small here: each released memfd is
    # unmapped, and the receiver, told so (a retire frame), drops its mapping.
    _run_script("""
        import pickle, socket, sys
        sys.path.insert(0, %r)
        import numpy as np
        import _shm_tasks
        from swarm._core.frame import KIND_RESULT
        from swarm._core.shm import lent_stats
        from swarm._core.sock import Channel
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        left, right = Channel(a.detach()), Channel(b.detach())
        for k in range(8):
            left.send(KIND_RESULT, 1, 0, np.full(1 << 20, float(k)))   # 8 MiB
            _, _, _, body, bufs = right.read_frame()
            got = pickle.loads(body, buffers=bufs)
            assert got[0] == k
            del got, bufs, body
            right.flush()                      # the release ...
            assert left.read_frame() is None   # ... unmaps the lender's memfd
            left.flush()                       # the retire ...
            assert right.read_frame() is None  # ... drops the receiver's mapping
        assert lent_stats()[0] == 0 and right.cached_maps == 0
        assert _shm_tasks.memfd_report() == ([], [])
    """ % os.path.dirname(os.path.abspath(__file__)), SWARM_LEND_CACHE=str(4 << 20))


def test_cached_mappings_do_not_spend_the_received_arrays_fd_budget(chans):
    x = np.ones(MIB // 8)
    for _ in range(40):                       # 40 connections x 8 cached memfds
        left, right = chans()
        held = [_send(left, right, x)[0] for _ in range(MAP_CACHE_MAX)]
        del held
        _settle(right, left)
    a, b = chans()
    shared = SharedBuffer(MIB)
    got, bufs = _send(a, b, np.frombuffer(shared, dtype=np.uint8))
    assert bufs[0].fd >= 0                    # kept: it can be sent on without a copy


def test_an_echo_whose_view_went_before_the_flush_arrives_before_its_release(chans):
    # The queued frame holds the cached mapping, not the view: the view's
    # release is made before the frame leaves, and must still follow it.
    left, right = chans()
    x = np.arange(N, dtype=np.float64)
    got, bufs = _send(left, right, x)
    assert right.cached_maps == 1
    right.push(KIND_RESULT, 2, 0, got)
    del got, bufs
    gc.collect()
    assert right.releases_waiting == 1
    right.flush()
    _, _, _, body, buffers = left.read_frame()
    back = pickle.loads(body, buffers=buffers)
    np.testing.assert_array_equal(back, x)
    assert left.read_frame() is None            # the release, after the echo
    assert left.lent_out == 0
    del back, buffers
    assert lent_stats()[1] == 1                 # free once the echo's view went


def test_a_view_outlives_its_channel_and_the_cache(chans):
    left, right = chans()
    first, _ = _send(left, right, np.full(N, 7.0))
    for k in range(MAP_CACHE_MAX + 1):          # pushed out of the cache ...
        _send(left, right, np.full(N, float(k)))
    right.close()                               # ... and its channel gone
    left.close()
    assert (first == 7.0).all()
