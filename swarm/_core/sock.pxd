# Channel: one connected AF_UNIX stream socket carrying swarm frames.
#
# Call order: push() queues a frame (pickling happens here, so a pickling
# error leaves the stream untouched), flush() writes what is queued in as few
# sendmsg calls as possible, read_frame() returns one complete frame or None
# when a non-blocking channel has no complete frame yet.

from libc.stdint cimport uint64_t
from swarm._core.frame cimport FrameHeader, FRAME_MAX_FDS
from swarm._core.posix cimport msghdr
from swarm._core.shm cimport ReleaseSink


cdef enum ReadStage:
    STAGE_HEADER = 0              # waiting for the fixed header + length table
    STAGE_PAYLOAD = 1             # filling the body, then each buffer in turn


cdef enum:
    # Batches of received fds (one SCM_RIGHTS message each) a channel holds
    # before the frames that use them are parsed. One frame's fds arrive in
    # one message with its first byte, and a reader receives only when it
    # has consumed every complete frame, so 2 are ever legitimately queued
    # (the current frame's, and one for a frame starting in the bytes just
    # received); more is a peer sending fds that no frame uses.
    RFD_BATCHES_MAX = 4
    RFD_CAPACITY = RFD_BATCHES_MAX * FRAME_MAX_FDS


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
    cdef list _fill               # the inline buffers of _bufs, filled in turn
                                  # (_bufs itself when no buffer came by fd)
    cdef uint64_t _rx_off         # bytes received on this stream so far
    cdef char *_rcbuf             # recvmsg control buffer (one SCM_RIGHTS of
                                  # FRAME_MAX_FDS fds)
    cdef Py_ssize_t _rcbuf_len    # its size
    cdef int *_rfds               # received fds no frame has taken yet, owned:
                                  # _rfds[_rfd_head:_rfd_tail], arrival order
    cdef Py_ssize_t _rfd_head
    cdef Py_ssize_t _rfd_tail
    cdef Py_ssize_t _rb_n         # batches in _rfds (one per recvmsg with fds)
    cdef Py_ssize_t _rb_count[RFD_BATCHES_MAX]   # fds of each batch, head first
    cdef uint64_t _rb_start[RFD_BATCHES_MAX]     # stream offsets of the bytes
    cdef uint64_t _rb_end[RFD_BATCHES_MAX]       # that recvmsg returned

    # writing
    cdef list _segs               # queued segments (bytes or memoryviews),
                                  # kept alive until the kernel has them
    cdef Py_ssize_t _seg_i        # first segment not fully sent
    cdef Py_ssize_t _seg_off      # bytes of _segs[_seg_i] already sent
    cdef list _pickled_bufs       # reused buffer_callback target of dumps
    cdef object _pickled_append   # its bound append, cached
    cdef list _fd_frames          # per queued frame with fd-carried buffers:
                                  # (index of its header in _segs, tuple of
                                  # the SharedBuffers whose fds it sends), or
                                  # None once sent
    cdef Py_ssize_t _fd_i         # first of _fd_frames not sent yet
    cdef Py_ssize_t _shm_threshold  # buffers this large or larger are copied
                                  # into shared memory (lent); 0: never
    cdef bint _lends              # counted in shm.lend_user_add (threshold > 0)
    cdef dict _holds              # Lent -> fds of it sent on this channel and
                                  # not released by the peer yet
    cdef dict _maps               # mappings of the peer's lent memfds, kept
                                  # for its next arrays (shm.shared_from_fd)
    cdef ReleaseSink _sink        # inodes of buffers the peer lent us that are
                                  # gone (added by SharedBuffer.__dealloc__,
                                  # from any thread); sent by flush()

    cpdef push(self, int kind, uint64_t task_id, uint64_t aux, object obj)
    cpdef bint flush(self) except -1
    cpdef object read_frame(self)
    cdef object _read_one(self)
    cdef int _on_notice(self, tuple frame) except -1
    cdef int _queue_releases(self) except -1
    cdef int _drop_lends(self) except -1
    cdef Py_ssize_t _recv(self, char *dst, Py_ssize_t n) except -2
    cdef int _take_fds(self, msghdr *msg, Py_ssize_t r) except -1
    cdef int _check_fds(self, uint64_t start, Py_ssize_t nfds) except -1
    cdef int _pop_fd(self) noexcept
    cdef void _close_fds(self) noexcept
    cdef int _begin_payload(self) except -1
    cdef int _fill_payload(self) except -1
