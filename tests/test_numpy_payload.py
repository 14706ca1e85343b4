"""numpy arrays travel as out-of-band buffers: gathered from the array's own
memory by one sendmsg, received into fresh buffers the array is rebuilt
over (no copy through the pickle stream)."""

import numpy as np
import pytest

from swarm import Socket


def _arrays():
    rng = np.random.default_rng(7)
    base = rng.random((6, 8))
    yield "float64 C", base
    yield "float32 F", np.asfortranarray(base.astype(np.float32))
    yield "non-contiguous", base[::2, 1::3]
    yield "negative strides", base[::-1, ::-2]
    yield "0-d", np.array(3.5)
    yield "empty", np.empty((0, 4), dtype=np.int16)
    yield "big-endian", np.arange(10, dtype=">i4")
    yield "structured", np.array([(1, 2.0, b"ab"), (3, 4.5, b"cd")],
                                 dtype=[("a", "<i8"), ("b", "<f4"), ("c", "S2")])
    yield "bool", base > 0.5
    yield "complex", (base + 1j * base).astype(np.complex64)
    yield "uint8 3-d", rng.integers(0, 255, (3, 4, 5), dtype=np.uint8)
    yield "datetime", np.array(["2026-11-25", "1970-01-01"], dtype="datetime64[D]")
    yield "object", np.array([1, "two", None], dtype=object)


@pytest.mark.parametrize("name,array", list(_arrays()), ids=[n for n, _ in _arrays()])
def test_array_round_trips_equal(echo_worker, name, array):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (array,)])
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_received_arrays_are_writable(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (np.arange(1000.0),)])
    back[0] = 42.0
    assert back[0] == 42.0


def test_several_arrays_in_one_task(echo_worker):
    arrays = [np.full(n, n, dtype=np.int64) for n in (1, 1000, 100_000)]
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (arrays[0], arrays[1], arrays[2])])
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)


def test_64_mib_array_in_and_out(echo_worker):
    array = np.random.default_rng(1).random(8 * 1024 * 1024)  # 64 MiB
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        _, back = worker.do_task([0, (array,)])
    assert back.nbytes == 64 * 1024 * 1024
    np.testing.assert_array_equal(back, array)
