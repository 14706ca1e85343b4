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
what a chunk of tiny tasks is made of (bench/tiny_mapped.py). Signals are
checked between tasks, as the interpreter's loop would.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.stdint cimport int64_t


def run_chunk(list tasks not None, object fn, bint builtin, object progress,
              object error_body, object stop):
    cdef Py_ssize_t i, n = len(tasks)
    cdef list results = [None] * n
    cdef dict errors = None
    cdef Py_buffer page
    cdef int64_t *pos = NULL
    cdef object task, call
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
            PyErr_CheckSignals()
            task = tasks[i]
            try:
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
