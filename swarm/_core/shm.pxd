# SharedBuffer: a sealed memfd and a MAP_SHARED mapping of (part of) it,
# exported through the buffer protocol (writable, 1-d bytes).
#
# Lifetime: every exported view (a memoryview, a numpy array) holds a
# reference to the SharedBuffer, so __dealloc__ -- munmap, then close the
# fd -- runs only once the last of them is gone. Nothing else frees it.
#
# sock.pyx uses the three cdef functions below: shared_copy to copy a large
# out-of-band buffer into shared memory, shared_owner to find the
# SharedBuffer an outgoing buffer already lives in (no copy), and
# shared_from_fd to map a memfd received with SCM_RIGHTS.

from libc.stdint cimport uint64_t


cdef class SharedBuffer:
    cdef int _fd                  # the memfd, or -1: closed after mapping
                                  # (a received buffer over the fd budget)
    cdef bint _counts_fd          # _fd is counted in the process-wide budget
    cdef char *_base              # start of the mapping (page aligned), or NULL
    cdef Py_ssize_t _map_len      # bytes mapped at _base (>= 1); 0: not mapped
                                  # (a copy made only to send its fd)
    cdef char *_addr              # first exported byte, _base + a page offset
    cdef Py_ssize_t _size         # exported bytes, from _addr
    cdef uint64_t _file_off       # offset of _addr in the memfd
    cdef Py_ssize_t _exports      # live buffer exports (views, arrays)
    cdef Py_ssize_t _itemsize     # 1: strides[0] of the exported view
    cdef int _create(self, Py_ssize_t size) except -1
    cdef int _map(self, uint64_t offset, uint64_t length, bint populate) except -1


# A fresh sealed memfd holding a copy of src[:size], not mapped in this
# process: it exists to send its fd (exporting it raises BufferError).
cdef SharedBuffer shared_copy(const char *src, Py_ssize_t size)

# Maps bytes [offset, offset + length) of a received fd, which it owns from
# the call on (closed on any error). Raises ProtocolError when the fd is not
# a memfd sealed against shrinking or is smaller than offset + length.
# keep_fd: keep the fd open (so that the buffer can be sent on without a
# copy) if the process-wide budget allows; otherwise it is closed at once.
cdef SharedBuffer shared_from_fd(int fd, uint64_t offset, uint64_t length, bint keep_fd)

# The SharedBuffer, holding its fd, whose exported bytes contain all the
# bytes of `view` (a contiguous buffer, e.g. PickleBuffer.raw()), found by
# walking memoryview.obj / .base from view; None if there is none. On
# success *file_off is the offset of view's first byte in the memfd.
cdef SharedBuffer shared_owner(object view, uint64_t *file_off)
