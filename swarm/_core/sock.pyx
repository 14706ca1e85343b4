# cython: language_level=3
"""Frames over a raw AF_UNIX stream fd.

Python-visible surface:

``Channel(fd, *, blocking=True, max_frame=DEFAULT_MAX_FRAME)``
    Takes ownership of a connected stream socket fd.
``Channel.push(kind, task_id, aux, obj)``
    Pickle ``obj`` (protocol 5) and queue it as one frame. Out-of-band
    buffers (numpy arrays) are queued as views of their own memory: nothing
    is copied until the kernel copies it. Raises before queueing anything if
    ``obj`` cannot be pickled or the frame is over ``max_frame``.
``Channel.flush() -> bool``
    Write queued frames, many per ``sendmsg``. A blocking channel returns
    True once everything is written; a non-blocking one returns False when
    the socket is full (call again when it is writable).
``Channel.send(kind, task_id, aux, obj)``
    ``push`` then ``flush``.
``Channel.read_frame() -> (kind, task_id, aux, body, buffers) | None``
    One complete frame. ``body`` is the pickle stream (bytes), ``buffers`` a
    list of writable bytearrays the frame's arrays are to be rebuilt over
    (``pickle.loads(body, buffers=buffers)``). None: a non-blocking channel
    has no complete frame yet. Raises ``PeerClosed`` at a clean end of
    stream, ``ProtocolError`` for a malformed frame and ``TruncatedFrame``
    (both a ProtocolError and a PeerClosed) for one cut off by the peer's
    close (the channel is then unusable), ``TimeoutError`` when a blocking channel's
    receive timeout runs out (the frame read so far is kept: call again).
``Channel.set_recv_timeout(seconds)``
    The blocking receive timeout (``SO_RCVTIMEO``); 0 waits for ever.
``fileno()``, ``close()``, ``closed``, ``buffered`` (received bytes not yet
consumed), ``in_frame`` (part of a frame received, the rest not yet),
``pending`` (True while queued bytes are not yet written).
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytearray cimport PyByteArray_FromStringAndSize, PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free

from swarm._core.posix cimport (
    errno, EINTR, EAGAIN, memcpy, memmove, strerror,
    iovec, msghdr, sendmsg, recv, MSG_NOSIGNAL, MSG_DONTWAIT, close,
    setsockopt, SOL_SOCKET, SO_RCVTIMEO, timeval)
from swarm._core.frame cimport (
    FrameHeader, header_read, header_write, header_check,
    FRAME_HEADER_SIZE, FRAME_MAX_BUFFERS, FRAME_MAGIC, FRAME_VERSION)

import os
import pickle

from swarm.errors import PeerClosed, ProtocolError, TruncatedFrame
from swarm._core.frame import DEFAULT_MAX_FRAME

cdef object _dumps = pickle.dumps
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


cdef inline int _raise_errno(int err) except -1:
    raise OSError(err, strerror(err).decode("utf-8", "replace"))


cdef class Channel:

    def __cinit__(self, int fd, *, bint blocking=True, max_frame=DEFAULT_MAX_FRAME):
        self._fd = -1
        self._rbuf = <char *>malloc(RBUF_SIZE)
        if self._rbuf == NULL:
            raise MemoryError()
        if fd < 0:
            raise ValueError(f"fd must be a non-negative file descriptor, got {fd}")
        if max_frame < FRAME_HEADER_SIZE:
            raise ValueError(f"max_frame must be at least {FRAME_HEADER_SIZE} bytes, got {max_frame}")
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
        if self._rbuf != NULL:
            free(self._rbuf)
            self._rbuf = NULL

    def fileno(self):
        return self._fd

    def close(self):
        """Close the fd and drop anything queued. Safe to call twice."""
        cdef int fd = self._fd
        self._fd = -1
        self._segs = []
        self._seg_i = self._seg_off = 0
        self._body = None
        self._bufs = _NO_BUFFERS
        if fd >= 0:
            os.close(fd)

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
        cdef list raws
        cdef Py_ssize_t n, i
        cdef uint64_t total, length
        cdef FrameHeader h
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
        total = FRAME_HEADER_SIZE + 8 * n + len(body)
        for i in range(n):
            total += len(<object>raws[i])
        if total > self._max_frame or len(body) > 0xFFFFFFFF:
            raise ProtocolError(
                f"frame of {total} bytes is over the frame limit of {self._max_frame} bytes")
        h.magic = FRAME_MAGIC
        h.version = FRAME_VERSION
        h.kind = kind
        h.flags = 0
        h.nbufs = n
        h.body_len = len(body)
        h.task_id = task_id
        h.aux = aux
        header = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_SIZE + 8 * n)
        cdef char *p = PyBytes_AS_STRING(header)
        header_write(p, &h)
        for i in range(n):
            length = len(<object>raws[i])
            memcpy(p + FRAME_HEADER_SIZE + 8 * i, &length, 8)
        self._segs.append(header)
        self._segs.append(body)
        if n:
            self._segs.extend(raws)

    cpdef bint flush(self) except -1:
        cdef Py_buffer views[IOV_BATCH]
        cdef iovec iov[IOV_BATCH]
        cdef msghdr msg
        cdef list segs = self._segs
        cdef Py_ssize_t nsegs = len(segs), k, j, got
        cdef ssize_t sent
        cdef int err, flags = MSG_NOSIGNAL
        cdef Py_ssize_t left
        if not self._blocking:
            flags |= MSG_DONTWAIT
        while self._seg_i < nsegs:
            if self._fd < 0:
                raise ValueError("channel is closed")
            got = 0
            try:
                k = 0
                j = self._seg_i
                while k < IOV_BATCH and j < nsegs:
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
        self._seg_i = 0
        self._seg_off = 0
        return True

    def send(self, int kind, uint64_t task_id, uint64_t aux, object obj):
        """Queue one frame and write everything queued (see module doc)."""
        self.push(kind, task_id, aux, obj)
        return self.flush()

    # ------------------------------------------------------------ reading

    cdef Py_ssize_t _recv(self, char *dst, Py_ssize_t n) except -2:
        # Returns bytes received (> 0), 0 at end of stream, -1 when a
        # non-blocking channel has nothing to read.
        cdef ssize_t r
        cdef int err
        while True:
            if self._fd < 0:
                raise ValueError("channel is closed")
            if self._blocking:
                with nogil:
                    r = recv(self._fd, dst, n, 0)
                    err = errno
            else:
                r = recv(self._fd, dst, n, MSG_DONTWAIT)
                err = errno
            if r >= 0:
                return r
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err == EAGAIN:
                if self._blocking:
                    raise TimeoutError("timed out waiting for a frame")
                return -1
            _raise_errno(err)

    cpdef object read_frame(self):
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
                        need = FRAME_HEADER_SIZE + 8 * <Py_ssize_t>self._hdr.nbufs
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
        except ProtocolError:
            self._broken = True
            self._body = None
            self._bufs = _NO_BUFFERS
            raise
        # Frame complete: hand its parts over and get ready for the next.
        bufs = self._bufs
        frame = (self._hdr.kind, self._hdr.task_id, self._hdr.aux, self._body,
                 bufs if bufs else ())
        self._body = None
        self._bufs = _NO_BUFFERS
        self._stage = STAGE_HEADER
        return frame

    cdef int _begin_payload(self) except -1:
        # The header and length table sit in _rbuf[_rpos:]: validate the
        # total, then allocate targets sized by the checked lengths only.
        cdef Py_ssize_t i, n = self._hdr.nbufs
        cdef uint64_t length, total = FRAME_HEADER_SIZE + 8 * <uint64_t>n + self._hdr.body_len
        cdef const char *table = self._rbuf + self._rpos + FRAME_HEADER_SIZE
        for i in range(n):
            memcpy(&length, table + 8 * i, 8)
            if length > self._max_frame or total + length > self._max_frame:
                raise ProtocolError(   # the sum in Python ints: it may exceed 64 bits
                    f"frame of at least {<object>total + <object>length} bytes is over "
                    f"the frame limit of {self._max_frame} bytes")
            total += length
        self._body = PyBytes_FromStringAndSize(NULL, self._hdr.body_len)
        if n == 0:
            self._bufs = _NO_BUFFERS
        else:
            self._bufs = bufs = []
        for i in range(n):
            memcpy(&length, table + 8 * i, 8)
            bufs.append(PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>length))
        self._rpos += FRAME_HEADER_SIZE + 8 * n
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
                if self._target >= len(self._bufs):
                    return 1
                buf = self._bufs[self._target]
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
