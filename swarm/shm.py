"""numpy arrays in swarm shared memory: sent to a worker without a copy.

An array made here lives in a sealed memfd (``swarm._core.shm.SharedBuffer``).
When it, or a contiguous view of it, is part of a task or a result, its
file descriptor is passed over the socket instead of its bytes, and the
other side maps the same memory: nothing is copied, and a worker that
writes into the array writes into the caller's array::

    import swarm
    frame = swarm.empty((1080, 1920, 3), dtype="uint8")
    frame[...] = grab()                       # fill it in place
    worker.do_task([0, (denoise_in_place, frame)])

Arrays that are not in shared memory still cross without pickling their
bytes: below ``swarm._core.sock.SHM_THRESHOLD`` they are gathered into the
socket write, at or above it they are copied once into a fresh memfd.

The memory is released when the last array over it (here and in any
process it was sent to) is gone. numpy is imported only when one of these
functions is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Sequence, Union

from swarm._core.shm import SharedBuffer

if TYPE_CHECKING:  # numpy is optional: only the type checker needs it here
    import numpy as np

__all__ = ["empty", "zeros", "is_shared"]

_Shape = Union[int, Sequence[int]]


def empty(shape: _Shape, dtype: Any = float, order: Literal["C", "F"] = "C") -> "np.ndarray":
    """Return a new array in swarm shared memory, without initializing it.

    Like ``numpy.empty``; the array is writable and can be sent to a worker
    (and back) without a copy. A fresh memfd is zero-filled, so the contents
    are in fact zeros, but ``zeros`` is the one that promises it.

    Parameters
    ----------
    shape : int or sequence of ints
    dtype : numpy dtype or anything ``numpy.dtype`` accepts (default float64);
        dtypes holding Python objects cannot live in shared memory.
    order : ``"C"`` (row-major, default) or ``"F"`` (column-major)

    Raises
    ------
    TypeError
        For a dtype with Python objects in it.
    ValueError
        For a negative dimension or an order other than ``"C"``/``"F"``.
    """
    import numpy as np

    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python objects, which cannot live in shared memory")
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dims = tuple(int(d) for d in dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    nbytes = dt.itemsize
    for d in dims:
        nbytes *= d
    return np.ndarray(dims, dtype=dt, buffer=SharedBuffer(nbytes), order=order)


def zeros(shape: _Shape, dtype: Any = float, order: Literal["C", "F"] = "C") -> "np.ndarray":
    """Return a new array of zeros in swarm shared memory (see `empty`)."""
    # A new memfd reads as zeros: nothing to fill.
    return empty(shape, dtype, order)


def is_shared(array: Any) -> bool:
    """True when ``array``'s memory lives in swarm shared memory.

    Such an array is a ``swarm.empty``/``swarm.zeros`` array, a view of one,
    or an array received over shared memory. Sent on, a contiguous one is
    passed by file descriptor without a copy (a received one only while
    the process holds its fd: see ``swarm._core.shm``); a non-contiguous
    view is pickled as bytes, like any such array.
    """
    obj = array
    for _ in range(32):
        if isinstance(obj, SharedBuffer):
            return True
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        if obj is None:
            return False
    return False
