# cython: language_level=3
"""Frames over a raw AF_UNIX stream fd.

Python-visible surface:

``Channel(fd, *, blocking=True, max_frame=DEFAULT_MAX_FRAME, shm_threshold=SHM_THRESHOLD)``
    Takes ownership of a connected stream socket fd.
``Channel.push(kind, task_id, aux, obj) -> int``
    Pickle ``obj`` (protocol 5) and queue it as one frame; return the
    frame's size in bytes (buffers that travel as fds included). Each out-of-band
    buffer (a numpy array) travels one of three ways:

    - it lives in swarm shared memory (a ``SharedBuffer``, e.g. an array
      from ``swarm.empty``): its memfd is passed with ``SCM_RIGHTS``, no
      byte is copied, and the receiver maps the same memory;
    - it has at least ``shm_threshold`` bytes: it is copied once into
      recycled shared memory of this process (a Lent, see shm.pyx), whose
      memfd is passed the same way, marked lent; the peer's Channel sends a
      release frame when its last view of it is gone, and the memory is
      refilled for a later array (past ``shm.LEND_MAX`` Lents it goes
      inline instead). The receiving Channel keeps its mapping of such a
      memfd for the peer's next arrays (``shm.MAP_CACHE_MAX``), until the
      peer sends a retire frame (it unmapped the memfd) or the Channel
      closes;
    - otherwise it is queued as a view of its own memory, and nothing is
      copied until the kernel copies it.

    Raises before queueing anything if ``obj`` cannot be pickled or the
    frame is over ``max_frame`` (shared buffers count toward it too).
``Channel.flush() -> bool``
    Write queued frames, many per ``sendmsg``. A blocking channel returns
    True once everything is written; a non-blocking one returns False when
    the socket is full (call again when it is writable).
``Channel.send(kind, task_id, aux, obj)``
    ``push`` then ``flush``.
``Channel.read_frame() -> (kind, task_id, aux, body, buffers) | None``
    One complete frame. ``body`` is the pickle stream (bytes), ``buffers`` a
    list of writable buffers the frame's arrays are to be rebuilt over
    (``pickle.loads(body, buffers=buffers)``): a bytearray (or RecvBuffer)
    for each buffer that came inline, a SharedBuffer (the received memfd,
    mapped) for each one that came as an fd. None: a non-blocking channel
    has no complete frame yet, or a blocking one read only release or
    retire frames (handled here) and has no further byte buffered. Raises ``PeerClosed`` at a clean end of
    stream, ``ProtocolError`` for a malformed frame and ``TruncatedFrame``
    (both a ProtocolError and a PeerClosed) for one cut off by the peer's
    close (the channel is then unusable), ``TimeoutError`` when a blocking channel's
    receive timeout runs out (the frame read so far is kept: call again).
``Channel.set_recv_timeout(seconds)``
    The blocking receive timeout (``SO_RCVTIMEO``); 0 waits for ever.
``fileno()``, ``close()``, ``closed``, ``buffered`` (received bytes not yet
consumed), ``in_frame`` (part of a frame received, the rest not yet),
``pending`` (True while queued bytes are not yet written), ``queued_fds``
(received fds no frame has taken yet), ``shm_threshold``, ``lent_out``
(fds of lent memory the peer has not released yet).
``SHM_THRESHOLD``
    The default ``shm_threshold``, in bytes (see its comment for the
    measurement); the environment variable ``SWARM_SHM_THRESHOLD``
    overrides it at import (0: never copy into shared memory), which is how
    a benchmark sets both ends of a connection at once.

File descriptors. Received fds (``recvmsg`` with ``MSG_CMSG_CLOEXEC``) are
queued in arrival order and taken by the frames that declare fd-carried
buffers (frame.pxd). Every fd is owned by exactly one thing at a time: the
queue, or the SharedBuffer that maps it. A frame whose fds did not arrive
with its first byte, fds that no frame uses, a truncated control message,
or an fd that is not a sealed memfd large enough is a ProtocolError, and
every queued fd is closed with it; ``close()`` closes them too.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytearray cimport PyByteArray_FromStringAndSize, PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from swarm._core.posix cimport (
    errno, EINTR, EAGAIN, memcpy, memmove, strerror,
    iovec, msghdr, cmsghdr, sendmsg, recvmsg, MSG_NOSIGNAL, MSG_DONTWAIT,
    MSG_CTRUNC, MSG_CMSG_CLOEXEC, SCM_RIGHTS, CMSG_FIRSTHDR, CMSG_NXTHDR,
    CMSG_DATA, CMSG_SPACE, CMSG_LEN, close,
    setsockopt, SOL_SOCKET, SO_RCVTIMEO, timeval)
from swarm._core.recvbuf cimport RecvBuffer, recv_buffer, RECV_SIZE_CLASS
from swarm._core.frame cimport (
    FrameHeader, header_read, header_write, header_check, header_entry_size,
    FRAME_HEADER_SIZE, FRAME_MAX_BUFFERS, FRAME_MAX_FDS, FRAME_MAGIC,
    FRAME_VERSION, FRAME_FLAG_FDS, FRAME_FD_BUFFER, FRAME_LENT_BUFFER, FRAME_RELEASE,
    FRAME_RETIRE)
from swarm._core.shm cimport (
    SharedBuffer, Lent, ReleaseSink, lend_copy, lent_sent_on, lent_release, lent_abandon, lent_find, lend_user_add,
    lend_user_remove, shared_from_fd, shared_owner)

import os
import pickle

from swarm.errors import PeerClosed, ProtocolError, TruncatedFrame
from swarm._core.frame import DEFAULT_MAX_FRAME

cdef object _dumps = pickle.dumps

# Out-of-band buffers of at least this many bytes are copied once into
# recycled shared memory (a Lent, shm.pyx) and passed as an fd; smaller ones
# are gathered into the sendmsg. (Arrays already in shared memory always go
# as fds, whatever their size.) Measured with bench/shm_threshold.py (one
# request outstanding, --pin split, a 2-CPU VM), one way, inline / lent:
# 0.71 at 256 KiB, 0.82 at 512 KiB, 0.92 at 1 MiB, 1.09 at 2 MiB, 1.19-1.28
# from 4 to 64 MiB; an 8 MiB echo is 3.5x faster lent (the echo goes back
# as a view of the sender's own memory). 1 MiB sits at the crossover of the
# one-way cost, and from there on the echo and the pool's throughput gain
# (bench/numpy_in.py, numpy_roundtrip.py). Once the receiver kept its
# mappings of lent memfds (shm.MAP_CACHE_MAX), the same bench gave 1.58 at
# 512 KiB, 1.83 at 1 MiB, 2.9 at 8 MiB (0.71 at 256 KiB): 512 KiB would do
# too; 1 MiB is kept, with margin. Before Lents, each copy went to
# a fresh memfd whose pages cost a fault each, and lost to inline up to
# 16 MiB; the threshold was then 64 MiB.
SHM_THRESHOLD = int(os.environ.get("SWARM_SHM_THRESHOLD", 1 << 20))
if SHM_THRESHOLD < 0:
    raise ValueError(f"SWARM_SHM_THRESHOLD must be >= 0, got {SHM_THRESHOLD}")
# Shared by every frame without out-of-band buffers (never mutated), so the
# common small frame costs no list.
cdef list _NO_BUFFERS = []

cdef enum:
    # Read-ahead size. Small frames arrive many per recv; a payload at least
    # half this size is received straight into its own buffer instead, so
    # large arrays are copied once (kernel -> array), never twice.
    RBUF_SIZE = 256 * 1024
    # Segments gathered per sendmsg. Well under IOV_MAX (1024); Py_buffers
    # for the batch live on the stack.
    IOV_BATCH = 64
    # Words of the sendmsg control buffer on the stack: at least
    # CMSG_SPACE(FRAME_MAX_FDS * sizeof(int)) bytes (1032 on Linux; checked
    # at import).
    SEND_CBUF_WORDS = 136

if CMSG_SPACE(FRAME_MAX_FDS * sizeof(int)) > SEND_CBUF_WORDS * sizeof(uint64_t):
    raise ImportError("swarm._core.sock: SEND_CBUF_WORDS is too small for this platform")


cdef inline int _raise_errno(int err) except -1:
    raise OSError(err, strerror(err).decode("utf-8", "replace"))


# __dealloc__ abandons what the peer holds and leaves its sink: a garbage
# cycle (Channel -> sink -> waker -> pool -> Channel) must not have these
# fields cleared to None first.
@cython.no_gc_clear
cdef class Channel:

    def __cinit__(self, int fd, *, bint blocking=True, max_frame=DEFAULT_MAX_FRAME,
                  shm_threshold=None):
        self._fd = -1
        self._rfd_head = self._rfd_tail = self._rb_n = 0
        self._rbuf = <char *>malloc(RBUF_SIZE)
        self._rcbuf_len = CMSG_SPACE(FRAME_MAX_FDS * sizeof(int))
        self._rcbuf = <char *>malloc(self._rcbuf_len)
        self._rfds = <int *>malloc(RFD_CAPACITY * sizeof(int))
        if self._rbuf == NULL or self._rcbuf == NULL or self._rfds == NULL:
            raise MemoryError()
        if fd < 0:
            raise ValueError(f"fd must be a non-negative file descriptor, got {fd}")
        if max_frame < FRAME_HEADER_SIZE:
            raise ValueError(f"max_frame must be at least {FRAME_HEADER_SIZE} bytes, got {max_frame}")
        if shm_threshold is None:
            shm_threshold = SHM_THRESHOLD
        if shm_threshold < 0:
            raise ValueError(f"shm_threshold must be >= 0, got {shm_threshold}")
        self._shm_threshold = shm_threshold
        self._holds = {}
        self._maps = {}
        self._sink = ReleaseSink()
        if shm_threshold > 0:
            lend_user_add()
            self._lends = True
        self._fd_frames = []
        self._fd_i = 0
        self._fill = _NO_BUFFERS
        self._fd = fd
        self._blocking = blocking
        self._max_frame = max_frame
        self._rcap = RBUF_SIZE
        self._rpos = 0
        self._rend = 0
        self._stage = STAGE_HEADER
        self._bufs = _NO_BUFFERS
        self._segs = []
        self._seg_i = 0
        self._seg_off = 0
        self._pickled_bufs = []
        self._pickled_append = self._pickled_bufs.append

    def __dealloc__(self):
        # Last resort only: owners close channels explicitly.
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1
        try:
            self._drop_lends()
        except Exception:
            pass
        if self._rfds != NULL:
            self._close_fds()
            free(self._rfds)
            self._rfds = NULL
        if self._rbuf != NULL:
            free(self._rbuf)
            self._rbuf = NULL
        if self._rcbuf != NULL:
            free(self._rcbuf)
            self._rcbuf = NULL

    def fileno(self):
        return self._fd

    def close(self):
        """Close the fd and drop anything queued. Safe to call twice."""
        cdef int fd = self._fd
        self._fd = -1
        self._segs = []
        self._seg_i = self._seg_off = 0
        self._fd_frames = []
        self._fd_i = 0
        self._body = None
        self._bufs = self._fill = _NO_BUFFERS
        self._close_fds()
        self._drop_lends()
        if fd >= 0:
            os.close(fd)

    cdef int _drop_lends(self) except -1:
        # The peer can no longer release what it holds, and may still map
        # it: those Lents are never refilled (shm.pyx). Buffers it lent us
        # that go from now on append to a list nobody reads.
        cdef dict holds = self._holds
        self._holds = {}
        if self._sink is not None:
            self._sink.waker = None  # buffers still alive keep the old sink, not its owner
        self._sink = ReleaseSink()
        self._maps = {}  # (unmapped once no array over them is left)
        for lent, count in (holds or {}).items():
            lent_abandon(<Lent>lent, <Py_ssize_t>count)
        if self._lends:
            self._lends = False
            lend_user_remove()
        return 0

    @property
    def lent_out(self):
        """Fds of this process's lent memory that the peer holds now."""
        return sum(self._holds.values())

    @property
    def cached_maps(self):
        """Mappings of the peer's lent memfds kept for its next arrays."""
        return len(self._maps)

    @property
    def releases_waiting(self):
        """Release and retire notices for the peer, not sent yet."""
        return len(self._sink)

    def set_release_waker(self, waker):
        """``waker()`` is called, from any thread, when releases start
        waiting: an owner that sleeps in poll uses it to come and flush."""
        self._sink.waker = waker

    @property
    def closed(self):
        return self._fd < 0

    @property
    def buffered(self):
        return self._rend - self._rpos

    @property
    def in_frame(self):
        return self._stage != STAGE_HEADER or self._rend > self._rpos

    @property
    def pending(self):
        return self._seg_i < len(self._segs)

    @property
    def queued_fds(self):
        return self._rfd_tail - self._rfd_head

    @property
    def shm_threshold(self):
        return self._shm_threshold

    def set_recv_timeout(self, double seconds):
        cdef timeval tv
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        if self._fd < 0:
            raise ValueError("channel is closed")
        tv.tv_sec = <long>seconds
        tv.tv_usec = <long>((seconds - tv.tv_sec) * 1e6)
        if setsockopt(self._fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0:
            _raise_errno(errno)

    @property
    def max_frame(self):
        return self._max_frame

    # ------------------------------------------------------------ writing

    cpdef push(self, int kind, uint64_t task_id, uint64_t aux, object obj):
        cdef list pickled = self._pickled_bufs
        cdef list raws, shared = None, offsets = None, carried, copied = None
        cdef Py_ssize_t n, i, entry, nfds = 0, ncopy = 0
        cdef uint64_t total, length, offset
        cdef FrameHeader h
        cdef SharedBuffer sb
        cdef Lent lent
        cdef Py_buffer src
        if self._fd < 0:
            raise ValueError("channel is closed")
        try:
            body = _dumps(obj, 5, buffer_callback=self._pickled_append)
            n = len(pickled)
            if n > FRAME_MAX_BUFFERS:
                raise ProtocolError(
                    f"object has {n} out-of-band buffers, over the limit of {FRAME_MAX_BUFFERS}")
            raws = [(<object>pickled[i]).raw() for i in range(n)] if n else None
        finally:
            pickled.clear()
        # Where each buffer goes (module doc): shared[i] is the SharedBuffer
        # whose fd carries buffer i, the Lent that carries it, True for one
        # still to be copied into a Lent, None for an inline buffer. Decided
        # before anything is copied, so that an oversize frame costs no copy.
        total = len(body)
        for i in range(n):
            raw = raws[i]
            length = len(raw)
            total += length
            if length == 0 or nfds == FRAME_MAX_FDS:
                # An empty buffer needs no memory; past FRAME_MAX_FDS the
                # frame's fds would not fit one SCM_RIGHTS message.
                continue
            sb = shared_owner(raw, &offset)
            if sb is not None:
                if sb._lent is not None:
                    # Our own lent memory, come back: lend it again as is.
                    # (A channel that does not lend sends it inline.)
                    x = sb._lent if self._lends else None
                elif sb._lender is not None and sb._lender is not self._sink:
                    # Lent to us by another peer, which could not know when
                    # this one is done with it: copied, like any array.
                    x = True if self._lends and length >= <uint64_t>self._shm_threshold else None
                else:
                    x = sb    # ours to pass on, or back to the peer that lent it
            elif self._lends and length >= <uint64_t>self._shm_threshold:
                x = True
            else:
                continue
            if x is None:
                continue
            if shared is None:
                shared = [None] * n
                offsets = [0] * n
            shared[i] = x
            if x is True:
                ncopy += 1
            else:
                offsets[i] = offset
            nfds += 1
        entry = header_entry_size(FRAME_FLAG_FDS if nfds else 0)
        if total + FRAME_HEADER_SIZE + entry * n > self._max_frame or len(body) > 0xFFFFFFFF:
            raise ProtocolError(
                f"frame of {total + FRAME_HEADER_SIZE + entry * n} bytes is over the "
                f"frame limit of {self._max_frame} bytes")
        try:
            for i in range(n if ncopy else 0):
                if shared[i] is not True:
                    continue
                # The one copy of the shared-memory path, into recycled
                # memory (shm.pyx). Made now, like the pickle stream, so
                # that the frame is a snapshot of obj whatever the caller
                # does with it after push.
                PyObject_GetBuffer(raws[i], &src, PyBUF_SIMPLE)
                try:
                    shared[i] = lend_copy(<const char *>src.buf, src.len)
                except (OSError, ProtocolError):
                    shared[i] = None   # no memfd or mapping to be had: inline
                finally:
                    PyBuffer_Release(&src)
                if shared[i] is None:  # no Lent to be had: inline after all
                    nfds -= 1
                else:
                    if copied is None:
                        copied = []
                    copied.append(i)
        except BaseException:
            for i in copied or ():  # copies made before the failure
                lent_release(<Lent>shared[i])
            raise
        entry = header_entry_size(FRAME_FLAG_FDS if nfds else 0)
        total += FRAME_HEADER_SIZE + entry * n
        h.magic = FRAME_MAGIC
        h.version = FRAME_VERSION
        h.kind = kind
        h.flags = FRAME_FLAG_FDS if nfds else 0
        h.nbufs = n
        h.body_len = len(body)
        h.task_id = task_id
        h.aux = aux
        header = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_SIZE + entry * n)
        cdef char *p = PyBytes_AS_STRING(header)
        header_write(p, &h)
        carried = [] if nfds else None
        for i in range(n):
            length = len(<object>raws[i])
            offset = 0
            if nfds and shared[i] is not None:
                x = shared[i]
                offset = offsets[i]
                length |= FRAME_FD_BUFFER
                if type(x) is Lent:
                    lent = <Lent>x
                    if copied is None or i not in copied:
                        lent.holds += 1   # lent again (a copy came with its hold)
                    length |= FRAME_LENT_BUFFER
                    self._holds[lent] = self._holds.get(lent, 0) + 1
                    lent_sent_on(lent, self._sink)
                    carried.append(lent.sb)
                elif (<SharedBuffer>x)._parent is not None:
                    carried.append((<SharedBuffer>x)._parent)  # its fd is the parent's
                else:
                    carried.append(x)
            memcpy(p + FRAME_HEADER_SIZE + entry * i, &length, 8)
            if nfds:
                memcpy(p + FRAME_HEADER_SIZE + entry * i + 8, &offset, 8)
        if nfds:
            self._fd_frames.append((len(self._segs), tuple(carried)))
        self._segs.append(header)
        self._segs.append(body)
        if nfds:
            self._segs.extend([raws[i] for i in range(n) if shared[i] is None])
        elif n:
            self._segs.extend(raws)
        return total

    cpdef bint flush(self) except -1:
        cdef Py_buffer views[IOV_BATCH]
        cdef iovec iov[IOV_BATCH]
        cdef uint64_t cbuf[SEND_CBUF_WORDS]
        cdef msghdr msg
        cdef cmsghdr *cmsg
        cdef int *cfds
        cdef list segs
        cdef list fd_frames = self._fd_frames
        cdef tuple carried
        cdef Py_ssize_t nsegs, k, j, got, limit, ncarry
        cdef ssize_t sent
        cdef int err, flags = MSG_NOSIGNAL
        cdef Py_ssize_t left
        if not self._blocking:
            flags |= MSG_DONTWAIT
        if (self._sink.inos or self._sink.retired) and self._fd >= 0:
            self._queue_releases()
        segs = self._segs
        nsegs = len(segs)
        while self._seg_i < nsegs:
            if self._fd < 0:
                raise ValueError("channel is closed")
            # A frame's fds go with the sendmsg that starts at its first
            # byte (the receiver checks this), so a batch ends before the
            # next frame with fds; ancillary data rides on the first byte of
            # a sendmsg, so a partial send still delivers all of them, and
            # a send that took nothing (EAGAIN) is retried with them.
            limit = nsegs
            carried = None
            if self._fd_i < len(fd_frames):
                mark = fd_frames[self._fd_i]
                if <Py_ssize_t>mark[0] == self._seg_i:
                    # (_seg_off is 0: no byte of a header leaves without its fds)
                    carried = mark[1]
                    if self._fd_i + 1 < len(fd_frames):
                        limit = fd_frames[self._fd_i + 1][0]
                else:
                    limit = mark[0]
            got = 0
            try:
                k = 0
                j = self._seg_i
                while k < IOV_BATCH and j < limit:
                    PyObject_GetBuffer(segs[j], &views[k], PyBUF_SIMPLE)
                    got += 1
                    iov[k].iov_base = <char *>views[k].buf
                    iov[k].iov_len = views[k].len
                    if j == self._seg_i:
                        iov[k].iov_base = <char *>views[k].buf + self._seg_off
                        iov[k].iov_len -= self._seg_off
                    k += 1
                    j += 1
                msg.msg_name = NULL
                msg.msg_namelen = 0
                msg.msg_iov = iov
                msg.msg_iovlen = k
                msg.msg_control = NULL
                msg.msg_controllen = 0
                msg.msg_flags = 0
                if carried is not None:
                    ncarry = len(carried)
                    memset(cbuf, 0, sizeof(cbuf))
                    msg.msg_control = cbuf
                    msg.msg_controllen = CMSG_SPACE(ncarry * sizeof(int))
                    cmsg = CMSG_FIRSTHDR(&msg)
                    cmsg.cmsg_level = SOL_SOCKET
                    cmsg.cmsg_type = SCM_RIGHTS
                    cmsg.cmsg_len = CMSG_LEN(ncarry * sizeof(int))
                    cfds = <int *>CMSG_DATA(cmsg)
                    for j in range(ncarry):
                        # Still open: a SharedBuffer closes its fd only when
                        # deallocated, and the tuple holds each one.
                        cfds[j] = (<SharedBuffer>carried[j])._fd
                if self._blocking:
                    with nogil:
                        sent = sendmsg(self._fd, &msg, flags)
                        err = errno
                else:
                    sent = sendmsg(self._fd, &msg, flags)
                    err = errno
            finally:
                for j in range(got):
                    PyBuffer_Release(&views[j])
            if sent < 0:
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                if err == EAGAIN:
                    if self._blocking:
                        raise TimeoutError("timed out sending a frame")
                    return False
                _raise_errno(err)
            if carried is not None:
                # Delivered (the kernel took at least the first byte): the
                # receiver holds its own fds now; ours may go.
                fd_frames[self._fd_i] = None
                self._fd_i += 1
            # Advance past what the kernel took: whole segments, then an offset.
            for j in range(k):
                left = iov[j].iov_len
                if sent >= left:
                    sent -= left
                    self._seg_i += 1
                    self._seg_off = 0
                else:
                    self._seg_off += sent
                    break
        segs.clear()
        fd_frames.clear()
        self._fd_i = 0
        self._seg_i = 0
        self._seg_off = 0
        return True

    cdef int _queue_releases(self) except -1:
        # One header-only frame per notice, naming an inode: a release per
        # lent buffer gone, a retire per memfd of ours unmapped; all of
        # them in one segment per pass. (A collection run by the allocation
        # may add to the lists: those are taken by the next pass.)
        cdef list releases = self._sink.inos, retired = self._sink.retired
        cdef Py_ssize_t nrel, n, i
        cdef FrameHeader h
        cdef char *p
        h.magic = FRAME_MAGIC
        h.version = FRAME_VERSION
        h.flags = 0
        h.nbufs = 0
        h.body_len = 0
        h.task_id = 0
        while releases or retired:
            nrel = len(releases)
            n = nrel + len(retired)
            out = PyBytes_FromStringAndSize(NULL, n * FRAME_HEADER_SIZE)
            p = PyBytes_AS_STRING(out)
            for i in range(n):
                h.kind = FRAME_RELEASE if i < nrel else FRAME_RETIRE
                h.aux = releases[i] if i < nrel else retired[i - nrel]
                header_write(p + i * FRAME_HEADER_SIZE, &h)
            del releases[:nrel]
            del retired[:n - nrel]
            self._segs.append(out)
        return 0

    def send(self, int kind, uint64_t task_id, uint64_t aux, object obj):
        """Queue one frame and write everything queued (see module doc)."""
        self.push(kind, task_id, aux, obj)
        return self.flush()

    # ------------------------------------------------------------ reading

    cdef Py_ssize_t _recv(self, char *dst, Py_ssize_t n) except -2:
        # Returns bytes received (> 0), 0 at end of stream, -1 when a
        # non-blocking channel has nothing to read. Always recvmsg with room
        # for one SCM_RIGHTS message: fds may come with any byte, and an fd
        # that arrives in a plain recv is closed by the kernel unseen.
        cdef ssize_t r
        cdef int err, flags = MSG_CMSG_CLOEXEC
        cdef msghdr msg
        cdef iovec iov
        if not self._blocking:
            flags |= MSG_DONTWAIT
        while True:
            if self._fd < 0:
                raise ValueError("channel is closed")
            iov.iov_base = dst
            iov.iov_len = n
            msg.msg_name = NULL
            msg.msg_namelen = 0
            msg.msg_iov = &iov
            msg.msg_iovlen = 1
            msg.msg_control = self._rcbuf
            msg.msg_controllen = self._rcbuf_len
            msg.msg_flags = 0
            if self._blocking:
                with nogil:
                    r = recvmsg(self._fd, &msg, flags)
                    err = errno
            else:
                r = recvmsg(self._fd, &msg, flags)
                err = errno
            if r >= 0:
                if msg.msg_controllen > 0 or msg.msg_flags & MSG_CTRUNC:
                    self._take_fds(&msg, r)
                self._rx_off += <uint64_t>r
                return r
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err == EAGAIN:
                if self._blocking:
                    raise TimeoutError("timed out waiting for a frame")
                return -1
            _raise_errno(err)

    cdef int _take_fds(self, msghdr *msg, Py_ssize_t r) except -1:
        # Queues the fds of one recvmsg as a batch, tagged with the stream
        # offsets of the bytes it returned; raises (closing them) when they
        # cannot be right.
        cdef int fds[FRAME_MAX_FDS + 8]
        cdef Py_ssize_t nfds = 0, i, m
        cdef cmsghdr *cmsg = CMSG_FIRSTHDR(msg)
        cdef bint overflow = False
        cdef int *data
        while cmsg != NULL:
            if cmsg.cmsg_level == SOL_SOCKET and cmsg.cmsg_type == SCM_RIGHTS:
                m = <Py_ssize_t>((cmsg.cmsg_len - CMSG_LEN(0)) // sizeof(int))
                data = <int *>CMSG_DATA(cmsg)
                for i in range(m):
                    if nfds < FRAME_MAX_FDS + 8:
                        fds[nfds] = data[i]
                        nfds += 1
                    else:  # cannot happen with our control buffer size
                        close(data[i])
                        overflow = True
            cmsg = CMSG_NXTHDR(msg, cmsg)
        if msg.msg_flags & MSG_CTRUNC or overflow:
            for i in range(nfds):
                close(fds[i])
            raise ProtocolError(
                "file descriptors from the peer were cut off (MSG_CTRUNC): more "
                f"than {FRAME_MAX_FDS} in one message, or this process is out of "
                "descriptors")
        if nfds == 0:
            return 0
        if self._rb_n == RFD_BATCHES_MAX or nfds > FRAME_MAX_FDS:
            for i in range(nfds):
                close(fds[i])
            raise ProtocolError(
                f"{self.queued_fds + nfds} file descriptors arrived without a frame "
                "that uses them")
        if self._rfd_tail + nfds > RFD_CAPACITY:
            # Compact the queue; it holds at most RFD_CAPACITY - nfds fds
            # here (fewer than RFD_BATCHES_MAX batches of FRAME_MAX_FDS).
            memmove(self._rfds, self._rfds + self._rfd_head,
                    (self._rfd_tail - self._rfd_head) * sizeof(int))
            self._rfd_tail -= self._rfd_head
            self._rfd_head = 0
        memcpy(self._rfds + self._rfd_tail, fds, nfds * sizeof(int))
        self._rfd_tail += nfds
        self._rb_count[self._rb_n] = nfds
        self._rb_start[self._rb_n] = self._rx_off
        self._rb_end[self._rb_n] = self._rx_off + <uint64_t>r
        self._rb_n += 1
        return 0

    cdef int _check_fds(self, uint64_t start, Py_ssize_t nfds) except -1:
        # The frame starting at stream offset `start` declares nfds
        # fd-carried buffers. Its fds came with the recvmsg that returned
        # byte `start`: the batch whose range holds it. A batch that
        # arrived wholly before `start` belongs to no frame.
        if self._rb_n and self._rb_end[0] <= start:
            raise ProtocolError(
                f"{self.queued_fds} file descriptors arrived without a frame that uses them")
        if nfds == 0:
            return 0  # a batch here is for a frame after this one
        if not self._rb_n or self._rb_start[0] > start:
            raise ProtocolError(
                f"frame declares {nfds} fd-carried buffers but no file descriptors "
                f"arrived with it")
        if self._rb_count[0] != nfds:
            raise ProtocolError(
                f"frame declares {nfds} fd-carried buffers but {self._rb_count[0]} "
                f"file descriptors arrived with it")
        return 0

    cdef int _pop_fd(self) noexcept:
        # The first queued fd, now the caller's. Only after _check_fds.
        cdef int fd = self._rfds[self._rfd_head]
        self._rfd_head += 1
        self._rb_count[0] -= 1
        if self._rb_count[0] == 0:
            self._rb_n -= 1
            memmove(self._rb_count, self._rb_count + 1, self._rb_n * sizeof(Py_ssize_t))
            memmove(self._rb_start, self._rb_start + 1, self._rb_n * sizeof(uint64_t))
            memmove(self._rb_end, self._rb_end + 1, self._rb_n * sizeof(uint64_t))
        if self._rfd_head == self._rfd_tail:
            self._rfd_head = self._rfd_tail = 0
        return fd

    cdef void _close_fds(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self._rfd_head, self._rfd_tail):
            close(self._rfds[i])
        self._rfd_head = self._rfd_tail = self._rb_n = 0

    cpdef object read_frame(self):
        # Release and retire frames are handled here; a blocking channel
        # returns None after one when no further byte is buffered (its caller polled for
        # a frame, and must not block for one that may never come).
        while True:
            frame = self._read_one()
            if frame is None or ((<tuple>frame)[0] != FRAME_RELEASE
                                 and (<tuple>frame)[0] != FRAME_RETIRE):
                return frame
            try:
                self._on_notice(<tuple>frame)
            except ProtocolError:
                self._broken = True
                self._close_fds()
                raise
            if self._blocking and self._rend == self._rpos:
                return None

    cdef int _on_notice(self, tuple frame) except -1:
        cdef uint64_t ino = frame[2]
        cdef Lent lent
        if frame[0] == FRAME_RETIRE:
            if frame[3] or frame[4]:
                raise ProtocolError("a retire frame carries a body or buffers")
            self._maps.pop(ino, None)   # (unmapped once no array over it is left)
            return 0
        if frame[3] or frame[4]:
            raise ProtocolError("a release frame carries a body or buffers")
        lent = lent_find(ino)
        count = self._holds.get(lent) if lent is not None else None
        if not count:
            raise ProtocolError(
                f"the peer released a buffer (memfd inode {ino}) that this side did "
                "not lend it")
        if count == 1:
            del self._holds[lent]
        else:
            self._holds[lent] = count - 1
        lent_release(lent)
        return 0

    cdef object _read_one(self):
        cdef Py_ssize_t need, r
        cdef bint parsed
        if self._broken:
            raise ProtocolError("channel closed after an earlier protocol error")
        try:
            if self._stage == STAGE_HEADER:
                need = FRAME_HEADER_SIZE
                parsed = False
                while True:
                    if self._rend - self._rpos >= need:
                        if parsed:
                            break
                        header_read(self._rbuf + self._rpos, &self._hdr)
                        header_check(&self._hdr, self._max_frame)
                        need = (FRAME_HEADER_SIZE + header_entry_size(self._hdr.flags)
                                * <Py_ssize_t>self._hdr.nbufs)
                        parsed = True
                        continue
                    if self._rcap - self._rpos < need:
                        # Compact: the header must be contiguous in _rbuf.
                        memmove(self._rbuf, self._rbuf + self._rpos, self._rend - self._rpos)
                        self._rend -= self._rpos
                        self._rpos = 0
                    r = self._recv(self._rbuf + self._rend, self._rcap - self._rend)
                    if r == 0:
                        if self._rend == self._rpos:
                            if self._rb_n:
                                raise ProtocolError(
                                    f"peer closed the connection leaving {self.queued_fds} "
                                    "file descriptors that no frame uses")
                            raise PeerClosed("peer closed the connection")
                        raise TruncatedFrame(
                            f"connection closed inside a frame header "
                            f"({self._rend - self._rpos} of {need} bytes received)")
                    if r < 0:
                        return None
                    self._rend += r
                self._begin_payload()
            if not self._fill_payload():
                return None
        except (ProtocolError, MemoryError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise  # the frame read so far is kept: call again
            # A malformed frame, no memory for one (or for mapping its
            # fds), a connection error: the stream's framing is lost.
            self._broken = True
            self._body = None
            self._bufs = self._fill = _NO_BUFFERS
            self._close_fds()
            raise
        # Frame complete: hand its parts over and get ready for the next.
        bufs = self._bufs
        frame = (self._hdr.kind, self._hdr.task_id, self._hdr.aux, self._body,
                 bufs if bufs else ())
        self._body = None
        self._bufs = self._fill = _NO_BUFFERS
        self._stage = STAGE_HEADER
        return frame

    cdef int _begin_payload(self) except -1:
        # The header and buffer table sit in _rbuf[_rpos:]: validate the
        # total, then allocate targets sized by the checked lengths only.
        cdef Py_ssize_t i, n = self._hdr.nbufs, nfds = 0
        cdef Py_ssize_t entry = header_entry_size(self._hdr.flags)
        cdef bint has_fds = self._hdr.flags & FRAME_FLAG_FDS
        cdef uint64_t length, offset
        cdef uint64_t total = FRAME_HEADER_SIZE + <uint64_t>entry * n + self._hdr.body_len
        cdef const char *table = self._rbuf + self._rpos + FRAME_HEADER_SIZE
        # This frame's first byte, as a stream offset: in the header stage
        # _rbuf[_rpos:_rend] are the last bytes received.
        cdef uint64_t start = self._rx_off - <uint64_t>(self._rend - self._rpos)
        cdef list bufs, fill
        for i in range(n):
            memcpy(&length, table + entry * i, 8)
            if has_fds and length & FRAME_FD_BUFFER:
                length &= ~(FRAME_FD_BUFFER | FRAME_LENT_BUFFER)
                nfds += 1
            if length > self._max_frame or total + length > self._max_frame:
                raise ProtocolError(   # the sum in Python ints: it may exceed 64 bits
                    f"frame of at least {<object>total + <object>length} bytes is over "
                    f"the frame limit of {self._max_frame} bytes")
            total += length
        for i in range(n if has_fds else 0):
            memcpy(&length, table + entry * i, 8)
            memcpy(&offset, table + entry * i + 8, 8)
            if not length & FRAME_FD_BUFFER and offset != 0:
                raise ProtocolError(
                    f"inline buffer {i} has offset {offset} (only fd-carried buffers have one)")
        self._check_fds(start, nfds)
        self._body = PyBytes_FromStringAndSize(NULL, self._hdr.body_len)
        if n == 0:
            bufs = fill = _NO_BUFFERS
        elif nfds == 0:
            bufs = fill = []
        else:
            bufs = []
            fill = []
        for i in range(n):
            memcpy(&length, table + entry * i, 8)
            if has_fds and length & FRAME_FD_BUFFER:
                memcpy(&offset, table + entry * i + 8, 8)
                # The fd is the SharedBuffer's from here (closed on error).
                bufs.append(shared_from_fd(
                    self._pop_fd(), offset, length & ~(FRAME_FD_BUFFER | FRAME_LENT_BUFFER),
                    True, self._sink if length & FRAME_LENT_BUFFER else None, self._holds,
                    self._maps))
            else:
                if length >= RECV_SIZE_CLASS:  # warm, recycled memory (see recvbuf)
                    buf = recv_buffer(<Py_ssize_t>length)
                else:
                    buf = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>length)
                bufs.append(buf)
                if nfds:
                    fill.append(buf)
        self._bufs = bufs
        self._fill = fill
        self._rpos += FRAME_HEADER_SIZE + entry * n
        self._target = -1
        self._dst = PyBytes_AS_STRING(self._body)
        self._dst_left = self._hdr.body_len
        self._stage = STAGE_PAYLOAD
        return 0

    cdef int _fill_payload(self) except -1:
        # Returns 1 once body and buffers are full, 0 if the socket ran dry.
        cdef Py_ssize_t avail, n, r
        while True:
            while self._dst_left == 0:
                self._target += 1
                if self._target >= len(self._fill):
                    return 1
                buf = self._fill[self._target]
                if type(buf) is RecvBuffer:
                    self._dst = (<RecvBuffer>buf)._base
                    self._dst_left = (<RecvBuffer>buf)._size
                else:
                    self._dst = PyByteArray_AS_STRING(buf)
                    self._dst_left = len(buf)
            avail = self._rend - self._rpos
            if avail > 0:
                n = avail if avail < self._dst_left else self._dst_left
                memcpy(self._dst, self._rbuf + self._rpos, n)
                self._rpos += n
                self._dst += n
                self._dst_left -= n
                continue
            self._rpos = self._rend = 0
            if self._dst_left >= self._rcap // 2:
                r = self._recv(self._dst, self._dst_left)
                if r > 0:
                    self._dst += r
                    self._dst_left -= r
            else:
                r = self._recv(self._rbuf, self._rcap)
                if r > 0:
                    self._rend = r
            if r == 0:
                raise TruncatedFrame(
                    f"connection closed inside a frame ({self._dst_left} bytes "
                    f"of the {'body' if self._target < 0 else 'buffer %d' % self._target} "
                    f"missing)")
            if r < 0:
                return 0
