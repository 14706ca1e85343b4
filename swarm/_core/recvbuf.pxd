# RecvBuffer: private anonymous memory that a large inline buffer of a
# received frame is read into, exported through the buffer protocol
# (writable, 1-d bytes). numpy rebuilds the frame's arrays over it.
#
# Lifetime: every exported view holds a reference, so __dealloc__ runs once
# the last array over it is gone; it then gives the memory to a per-process
# cache (up to RECV_CACHE_BYTES) instead of unmapping it, so the next frame
# of a similar size is read into pages that are already faulted in. Fresh
# pages are what a large receive costs most (measured on this project's
# machine: 3-5 ms to fault in 8 MiB, 0.6 ms to copy into warm memory).

cdef enum:
    # Capacities are rounded up to a multiple of this (frames of nearby
    # sizes share cached buffers), and inline buffers of at least this
    # many bytes are read into a RecvBuffer (smaller: a bytearray).
    RECV_SIZE_CLASS = 1 << 20


cdef class RecvBuffer:
    cdef char *_base              # start of the mapping (page aligned)
    cdef Py_ssize_t _cap          # bytes mapped: the cache's size class
    cdef Py_ssize_t _size         # bytes exported (<= _cap)
    cdef Py_ssize_t _exports      # live buffer exports (views, arrays)
    cdef Py_ssize_t _itemsize     # 1: strides[0] of the exported view


# A RecvBuffer of size bytes, from the cache when it holds one of that size
# class, else freshly mapped.
cdef RecvBuffer recv_buffer(Py_ssize_t size)
