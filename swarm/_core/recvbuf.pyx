# cython: language_level=3
"""Receive buffers for large inline payloads, recycled through a cache.

Python-visible surface:

``RecvBuffer`` (made by ``Channel.read_frame`` only): ``len()``, ``size``,
``exports``, the buffer protocol (writable bytes).
``RECV_MIN``
    Inline buffers of at least this many bytes are read into a RecvBuffer;
    smaller ones into a bytearray.
``RECV_CACHE_BYTES``
    Most bytes of released RecvBuffers the process keeps mapped for reuse:
    1/16 of physical memory, at most 1 GiB; ``SWARM_RECV_CACHE`` (bytes)
    overrides it, 0 turns the cache off. Read once, at import.
``cached_bytes()``
    Bytes the cache holds now.

The cache holds what was received and then released, never more than the
peak in use: a worker that takes one 8 MiB array per task keeps one or two;
a client that kept 100 results until a batch ended keeps up to the cap.
"""


from swarm._core.bytesview cimport export_bytes
from swarm._core.posix cimport (mmap, munmap, MAP_FAILED, PROT_READ, PROT_WRITE,
                                MAP_PRIVATE, MAP_ANONYMOUS, errno, strerror)

import os

RECV_MIN = RECV_SIZE_CLASS


def _default_cache_bytes():
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        physical = 0
    return min(1 << 30, physical // 16)


RECV_CACHE_BYTES = int(os.environ.get("SWARM_RECV_CACHE", _default_cache_bytes()))
if RECV_CACHE_BYTES < 0:
    raise ValueError(f"SWARM_RECV_CACHE must be >= 0, got {RECV_CACHE_BYTES}")
cdef Py_ssize_t _cache_max = RECV_CACHE_BYTES
cdef Py_ssize_t _cached = 0
# capacity -> addresses of cached mappings of that capacity (as ints)
cdef dict _free = {}


def cached_bytes():
    return _cached


cdef class RecvBuffer:

    def __cinit__(self):
        self._base = NULL
        self._cap = 0
        self._size = 0
        self._exports = 0
        self._itemsize = 1

    def __init__(self):
        raise TypeError("RecvBuffers are made by Channel.read_frame")

    def __dealloc__(self):
        # Runs only when no view is left: each one holds a reference.
        global _cached
        if self._base == NULL:
            return
        cdef dict free = _free
        if free is not None and _cached + self._cap <= _cache_max:
            lst = free.get(self._cap)
            if lst is None:
                free[self._cap] = lst = []
            lst.append(<size_t>self._base)
            _cached += self._cap
        else:
            munmap(self._base, self._cap)
        self._base = NULL

    def __len__(self):
        return self._size

    @property
    def size(self):
        return self._size

    @property
    def exports(self):
        return self._exports

    def __repr__(self):
        return f"<swarm RecvBuffer size={self._size} exports={self._exports}>"

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.obj = self
        export_bytes(view, flags, self._base, &self._size, &self._itemsize)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1


cdef RecvBuffer recv_buffer(Py_ssize_t size):
    global _cached
    cdef Py_ssize_t cap = (size + RECV_SIZE_CLASS - 1) // RECV_SIZE_CLASS * RECV_SIZE_CLASS
    cdef RecvBuffer buf = RecvBuffer.__new__(RecvBuffer)
    cdef void *p
    cdef int err
    if cap == 0:
        cap = RECV_SIZE_CLASS
    lst = _free.get(cap)
    if lst:
        buf._base = <char *><size_t>lst.pop()
        _cached -= cap
    else:
        with nogil:
            p = mmap(NULL, <size_t>cap, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            err = errno
        if p == MAP_FAILED:
            raise MemoryError(f"cannot map {cap} bytes for a received buffer: "
                              f"{strerror(err).decode('utf-8', 'replace')}")
        buf._base = <char *>p
    buf._cap = cap
    buf._size = size
    return buf
