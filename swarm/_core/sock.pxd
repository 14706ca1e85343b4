# Channel: one connected AF_UNIX stream socket carrying swarm frames.
#
# Call order: push() queues a frame (pickling happens here, so a pickling
# error leaves the stream untouched), flush() writes what is queued in as few
# sendmsg calls as possible, read_frame() returns one complete frame or None
# when a non-blocking channel has no complete frame yet.

from libc.stdint cimport uint64_t
from swarm._core.frame cimport FrameHeader


cdef enum ReadStage:
    STAGE_HEADER = 0              # waiting for the fixed header + length table
    STAGE_PAYLOAD = 1             # filling the body, then each buffer in turn


cdef class Channel:
    cdef int _fd                  # owned socket fd, -1 once closed
    cdef bint _blocking           # True: calls block (GIL released); False:
                                  # MSG_DONTWAIT, EAGAIN reported as "not yet"
    cdef uint64_t _max_frame      # largest frame accepted or sent, in bytes

    # reading
    cdef char *_rbuf              # read-ahead buffer for headers and small
                                  # frames; large payloads bypass it
    cdef Py_ssize_t _rcap         # capacity of _rbuf
    cdef Py_ssize_t _rpos         # first unconsumed byte in _rbuf
    cdef Py_ssize_t _rend         # one past the last received byte
    cdef ReadStage _stage         # where the frame being read stands
    cdef FrameHeader _hdr         # header of the frame being read
    cdef object _body             # bytes being filled with the pickle stream
    cdef list _bufs               # bytearrays being filled, one per buffer
    cdef Py_ssize_t _target       # -1: body; i >= 0: _bufs[i]
    cdef char *_dst               # next byte to fill in the current target
    cdef Py_ssize_t _dst_left     # bytes still missing in the current target
    cdef bint _broken             # a protocol error was raised: never read again

    # writing
    cdef list _segs               # queued segments (bytes or memoryviews),
                                  # kept alive until the kernel has them
    cdef Py_ssize_t _seg_i        # first segment not fully sent
    cdef Py_ssize_t _seg_off      # bytes of _segs[_seg_i] already sent
    cdef list _pickled_bufs       # reused buffer_callback target of dumps
    cdef object _pickled_append   # its bound append, cached

    cpdef push(self, int kind, uint64_t task_id, uint64_t aux, object obj)
    cpdef bint flush(self) except -1
    cpdef object read_frame(self)
    cdef Py_ssize_t _recv(self, char *dst, Py_ssize_t n) except -2
    cdef int _begin_payload(self) except -1
    cdef int _fill_payload(self) except -1
