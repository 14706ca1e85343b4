# cython: language_level=3
"""The worker's loop over the tasks of a chunk.

Python-visible surface:

``run_chunk(tasks, fn, builtin, progress, error_body, stop) -> (results, errors)``
    Runs every task of ``tasks`` (a list) in order: ``fn(task)`` for a task
    that is not a tuple, ``task[0](*task[1:])`` for a tuple when
    ``builtin`` (the built-in worker's ``(callable, *args)``), else
    ``fn(*task)``. ``results[i]`` is what task i returned (None if it
    raised); ``errors`` is None, or a dict ``i -> error_body(exc)`` for the
    tasks that raised. An exception that is an instance of ``stop`` (a
    class or tuple of them: the worker being stopped) is not caught.
    ``progress``: None, or a writable buffer of at least two int64s (the
    pool's progress page); item 1 is set to i before task i runs and to
    ``len(tasks)`` after the last one, so that whoever sees the worker die
    knows which task was running.

The loop was Python; here a task costs its call and nothing else, which is
what a chunk of tiny tasks is made of (bench/tiny_mapped.py). What the
interpreter's loop did between tasks is kept: signal handlers run before
each task (an exception one raises is that task's, unless it is a
``stop``), and the GIL is let go at least every switch interval, so that
the worker's other threads (its parent watchdog, a task's own) run while a
chunk of C functions does.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.stdint cimport int64_t

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum: CLOCK_MONOTONIC_COARSE

import sys

cdef inline int64_t _now_ns() noexcept nogil:
    # The coarse clock: a few ns to read, a few ms of resolution, as much as
    # a switch interval needs.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def run_chunk(list tasks not None, object fn, bint builtin, object progress,
              object error_body, object stop):
    cdef Py_ssize_t i, n = len(tasks)
    cdef list results = [None] * n
    cdef dict errors = None
    cdef Py_buffer page
    cdef int64_t *pos = NULL
    cdef object task, call
    cdef int64_t switch_ns = <int64_t>(sys.getswitchinterval() * 1e9)
    cdef int64_t yield_at = _now_ns() + switch_ns
    if progress is not None:
        PyObject_GetBuffer(progress, &page, PyBUF_WRITABLE)
        if page.len < 2 * <Py_ssize_t>sizeof(int64_t):
            PyBuffer_Release(&page)
            raise ValueError("progress must hold at least two int64 values")
        pos = <int64_t *>page.buf
    try:
        for i in range(n):
            if pos != NULL:
                pos[1] = i
            if _now_ns() >= yield_at:
                with nogil:
                    pass          # other threads waiting for the GIL get it
                yield_at = _now_ns() + switch_ns
            task = tasks[i]
            try:
                PyErr_CheckSignals()
                if type(task) is not tuple:
                    results[i] = fn(task)
                elif builtin and PyTuple_GET_SIZE(task) > 0:
                    call = (<tuple>task)[0]
                    if PyTuple_GET_SIZE(task) == 1:
                        results[i] = call()
                    else:
                        results[i] = call(*(<tuple>task)[1:])
                else:
                    results[i] = fn(*task)
            except BaseException as exc:  # shipped to the client, per task
                if isinstance(exc, stop):
                    raise
                if errors is None:
                    errors = {}
                errors[i] = error_body(exc)
        if pos != NULL:
            pos[1] = n
    finally:
        if pos != NULL:
            PyBuffer_Release(&page)
    return results, errors
