"""swarm._core.recvbuf: large inline buffers are read into recycled memory."""

import pickle
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from swarm._core.frame import KIND_RESULT
from swarm._core.recvbuf import RECV_MIN, RecvBuffer
from swarm._core.sock import Channel


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = Channel(a.detach(), shm_threshold=0), Channel(b.detach(), shm_threshold=0)
    yield left, right
    left.close()
    right.close()


def _send_and_read(pair, obj):
    import threading
    left, right = pair
    sender = threading.Thread(target=left.send, args=(KIND_RESULT, 1, 0, obj))
    sender.start()   # a large frame does not fit the socket: read while it is sent
    frame = right.read_frame()
    sender.join()
    return frame


def test_a_large_inline_buffer_lands_in_a_recv_buffer(pair):
    array = np.arange(RECV_MIN // 8 * 3, dtype=np.float64).reshape(3, -1)
    _, _, _, body, buffers = _send_and_read(pair, array)
    assert [type(b) for b in buffers] == [RecvBuffer]
    assert len(buffers[0]) == array.nbytes
    back = pickle.loads(body, buffers=buffers)
    assert np.array_equal(back, array) and back.flags.writeable
    back[0, 0] = -1.0                      # ours to write, like any result
    assert buffers[0].exports >= 1         # the array holds its buffer


def test_small_buffers_stay_bytearrays(pair):
    array = np.ones(RECV_MIN // 8 - 1)
    _, _, _, _, buffers = _send_and_read(pair, array)
    assert [type(b) for b in buffers] == [bytearray]


REUSE = """
import pickle, socket, threading
import numpy as np
from swarm._core.frame import KIND_RESULT
from swarm._core.recvbuf import RECV_MIN, cached_bytes
from swarm._core.sock import Channel

a, b = socket.socketpair()
left, right = Channel(a.detach(), shm_threshold=0), Channel(b.detach(), shm_threshold=0)

def receive(array):
    t = threading.Thread(target=left.send, args=(KIND_RESULT, 0, 0, array))
    t.start()
    _, _, _, body, buffers = right.read_frame()
    t.join()
    return pickle.loads(body, buffers=buffers)

assert cached_bytes() == 0
back = receive(np.full(RECV_MIN // 8 * 2, 1.0))
assert cached_bytes() == 0
del back
assert cached_bytes() == 2 * RECV_MIN          # released into the cache, still mapped
back = receive(np.full(RECV_MIN // 8 * 2, 2.0))
assert cached_bytes() == 0                      # taken from the cache
assert (back == 2.0).all()                      # no stale bytes
left.close(); right.close()
"""


def test_a_released_buffer_is_reused_by_the_next_frame_of_its_size():
    # In a fresh process: the cache's state is the process's.
    out = subprocess.run([sys.executable, "-c", REUSE], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr


def test_recv_buffers_are_not_made_by_hand():
    with pytest.raises(TypeError):
        RecvBuffer()


@pytest.mark.parametrize("cache", ["0", str(3 * RECV_MIN)])
def test_the_cache_never_holds_more_than_its_bound(cache):
    code = textwrap.dedent(f"""
        import pickle, socket, threading
        import numpy as np
        from swarm._core.frame import KIND_RESULT
        from swarm._core.recvbuf import RECV_CACHE_BYTES, RECV_MIN, cached_bytes
        from swarm._core.sock import Channel
        assert RECV_CACHE_BYTES == {cache}
        a, b = socket.socketpair()
        left, right = Channel(a.detach(), shm_threshold=0), Channel(b.detach(), shm_threshold=0)
        kept = []
        for i in range(6):   # 6 MiB alive at once, then all released
            t = threading.Thread(target=left.send, args=(KIND_RESULT, i, 0, np.ones(RECV_MIN // 8)))
            t.start()
            _, _, _, body, buffers = right.read_frame()
            t.join()
            kept.append(pickle.loads(body, buffers=buffers))
            del body, buffers
        kept.clear()
        assert cached_bytes() <= {cache}, cached_bytes()
        print(cached_bytes())
        left.close(); right.close()
    """)
    env = dict(__import__("os").environ, SWARM_RECV_CACHE=cache)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == int(cache)
