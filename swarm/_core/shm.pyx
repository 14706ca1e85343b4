# cython: language_level=3
"""Shared memory: a sealed memfd mapped MAP_SHARED, lent out as a buffer.

Python-visible surface:

``SharedBuffer(size)``
    A fresh memfd (``MFD_CLOEXEC | MFD_ALLOW_SEALING``) of ``size`` bytes,
    zero-filled, sealed against shrinking and growing (``F_SEAL_SHRINK |
    F_SEAL_GROW | F_SEAL_SEAL``), and mapped read-write. It exports the
    buffer protocol (writable, 1-d unsigned bytes), so
    ``numpy.frombuffer(buf, dtype)`` is an array over shared memory.
``SharedBuffer.from_fd(fd, offset=0, length=-1)``
    Map bytes ``[offset, offset + length)`` of a memfd (``length=-1``: to its
    end). Takes ownership of ``fd`` (closed on error). Raises
    ``ProtocolError`` when the fd is not a memfd sealed against shrinking,
    or is smaller than ``offset + length`` -- a peer could otherwise shrink
    the file under our mapping and make us SIGBUS.
``size``, ``fd`` (-1 once closed), ``file_offset``, ``exports`` (live views)
    Read-only properties.
``KEEP_FDS_MAX``, ``kept_fds()``
    The fd budget for received buffers, and how many SharedBuffers of this
    process hold an fd now.
``LEND_MAX``, ``LEND_CACHE_BYTES``, ``lent_stats()``
    The most Lents (below) a process has at once, the most bytes of free
    ones it keeps, and ``(lents, free lents, free bytes)`` now.

Lifetime is exact: the mapping is unmapped and the fd closed when the
SharedBuffer is deallocated, which happens only after every view over it
(memoryview, numpy array) is gone.

Keeping the fd. A SharedBuffer made here (``swarm.empty``, or a copy made to
send an array) keeps its fd: that is what lets it be sent again without a
copy, and the caller decides how many exist. A buffer mapped from a
received fd keeps the fd only while fewer than ``KEEP_FDS_MAX`` buffers of
the process hold one; past that the fd is closed right after mapping (the
mapping alone keeps the memory alive) and sending that buffer on copies it.
Lending. An ordinary array (not in shared memory) that a Channel sends
through shared memory is copied into a Lent: a memfd of this process that
stays mapped here, is sent as an fd with the "lent" mark, and is filled
again for a later array once every peer that got it has said it is done.
A peer maps it (a SharedBuffer whose ``_lender`` is the receiving Channel's
release list); when that buffer goes, its inode goes on the list, and the
Channel sends a release frame back. So the copy lands in pages that are
already faulted in, and the receiver's pages are those same pages: one
memcpy per array and no page zeroing, where a fresh memfd per array costs
a page fault per 4 KiB (about 3-5 ms per 8 MiB on the machine this was
measured on, against 0.6 ms for the copy).

A Lent is reused only when nobody can read it any more: ``holds`` counts
each fd sent and not yet released, and each view of it that came back
(an echo: a peer sent our own Lent back, plain, and we view our mapping
instead of mapping it again). A peer that goes away without releasing
(its Channel closes) may still map the memory, so its Lents are
abandoned: unmapped here when the other holds go, never refilled. A
borrowed buffer is sent back as a plain fd only to the Channel it came
from (its owner recognises its own inode); any other peer gets a copy, as
its owner could not know when that peer is done with it.

Lents are bounded twice: at most ``LEND_MAX`` exist (each holds an fd;
past that, buffers go inline), and free ones hold at most
``LEND_CACHE_BYTES``; once no Channel of the process lends any more, the
free ones are unmapped.

The alternative, closing every received fd and ``dup``-ing at send time, is
not possible: once closed, a mapping cannot give its fd back. Keeping fds
without a bound is not safe either: a client that collects thousands of
array results would run out of descriptors (``RLIMIT_NOFILE`` is often
1024). The budget keeps the common echo and in-place cases zero-copy (a
worker holds a task's arrays, a few at a time) and bounds what a peer can
make us hold.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.memoryview cimport PyMemoryView_Check
from libc.stdint cimport uint64_t, int64_t

from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memcpy

from swarm._core.bytesview cimport export_bytes
from swarm._core.posix cimport (
    pwrite, errno, EINTR, EACCES, EPERM, EINVAL, ENODEV, strerror, close, ftruncate,
    sysconf, _SC_PAGESIZE, fcntl, F_ADD_SEALS, F_GET_SEALS, F_SEAL_SEAL,
    F_SEAL_SHRINK, F_SEAL_GROW, F_DUPFD_CLOEXEC, struct_stat, fstat, memfd_create, mmap, munmap,
    MAP_FAILED, MFD_CLOEXEC, MFD_ALLOW_SEALING, PROT_READ, PROT_WRITE,
    MAP_SHARED, MAP_POPULATE)

import os
import weakref

from swarm.errors import ProtocolError
from swarm._core.recvbuf import _default_cache_bytes

# Buffers mapped from received fds keep their fd only while fewer than this
# many SharedBuffers of the process hold one (see the module doc). 256 fds
# is a quarter of the common 1024 soft limit; beyond it a received array
# sent on is copied once instead of passed as is. Read once, at import:
# changing the module attribute later has no effect.
KEEP_FDS_MAX = 256
cdef Py_ssize_t _keep_fds_max = KEEP_FDS_MAX
# SharedBuffers of this process holding their fd open.
cdef Py_ssize_t _kept_fds = 0
# Fds of Channels' cached mappings (shared_from_fd), bounded by
# KEEP_FDS_MAX too but apart: they must not starve received arrays.
cdef Py_ssize_t _cache_fds = 0
cdef Py_ssize_t _page = sysconf(_SC_PAGESIZE)
# How far shared_owner follows memoryview.obj / .base (numpy views of
# views of ... a SharedBuffer); deeper chains are sent as plain bytes.
cdef enum:
    OWNER_DEPTH_MAX = 32
# Exported by a zero-length buffer: a valid pointer that is never read.
cdef char _empty[1]

# Lending (module doc). A Lent's capacity is its size rounded up to
# LEND_CLASS, and a free one is reused for sizes down to half of it.
LEND_CLASS = 1 << 20
# Each Lent holds an fd, and a client that keeps many results, or a worker
# whose client keeps them, holds one Lent per array: 128 leaves most of a
# 1024-fd limit to the program, and covers 128 arrays in flight.
LEND_MAX = int(os.environ.get("SWARM_LEND_MAX", 128))
LEND_CACHE_BYTES = int(os.environ.get("SWARM_LEND_CACHE", _default_cache_bytes()))
if LEND_MAX < 0 or LEND_CACHE_BYTES < 0:
    raise ValueError("SWARM_LEND_MAX and SWARM_LEND_CACHE must be >= 0")
cdef Py_ssize_t _lend_max = LEND_MAX
cdef Py_ssize_t _lend_cache_max = LEND_CACHE_BYTES
cdef dict _lents = {}             # inode -> Lent, every Lent of the process
cdef list _lent_free = []         # free Lents, oldest first
cdef Py_ssize_t _lent_free_bytes = 0
cdef Py_ssize_t _lend_users = 0   # Channels that may lend
cdef unsigned long _fork_gen = 0  # forks of this process (os.fork)


def lent_stats():
    """``(lents, free lents, free bytes)`` of this process now."""
    return len(_lents), len(_lent_free), _lent_free_bytes


def kept_fds():
    """SharedBuffers of this process that hold their fd open now."""
    return _kept_fds


cdef inline int _raise_errno(int err, str what) except -1:
    raise OSError(err, f"{what}: {strerror(err).decode('utf-8', 'replace')}")


# __dealloc__ releases through _lender / _lent: a garbage cycle must not
# have them cleared to None first (the release would be lost).
@cython.no_gc_clear
cdef class SharedBuffer:

    def __cinit__(self, *args, **kwargs):
        self._fd = -1
        self._counts_fd = False
        self._cache_fd = False
        self._base = NULL
        self._map_len = 0
        self._addr = _empty
        self._size = 0
        self._file_off = 0
        self._exports = 0
        self._itemsize = 1
        self._ino = 0
        self._lender = None
        self._lent = None

    def __init__(self, Py_ssize_t size):
        global _kept_fds
        if self._base != NULL or self._fd >= 0:
            raise TypeError("SharedBuffer is already initialized")
        self._create(size)
        self._counts_fd = True
        _kept_fds += 1
        # Not prefaulted: like numpy.empty, pages are allocated as written.
        self._map(0, <uint64_t>size, False)

    cdef int _create(self, Py_ssize_t size) except -1:
        # A sealed memfd of `size` bytes, not mapped (nor counted in
        # _kept_fds: the caller decides).
        cdef int fd, rc, err
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        fd = memfd_create(b"swarm", MFD_CLOEXEC | MFD_ALLOW_SEALING)
        if fd < 0:
            _raise_errno(errno, "memfd_create")
        self._fd = fd
        while True:
            rc = ftruncate(fd, size)
            err = errno
            if rc == 0:
                break
            if err != EINTR:
                _raise_errno(err, f"ftruncate of a memfd to {size} bytes")
        # Sealed before anyone else can see the fd: a receiver can then map
        # it without fearing that it shrinks (SIGBUS) or grows.
        if fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0:
            _raise_errno(errno, "sealing a memfd")
        self._size = size
        return 0

    cdef int _map(self, uint64_t offset, uint64_t length, bint populate) except -1:
        # Maps [offset, offset + length) of self._fd; mmap wants a page
        # aligned file offset, so the mapping may start a little earlier.
        cdef uint64_t start = offset - offset % <uint64_t>_page
        cdef size_t map_len = <size_t>(offset - start + length)
        cdef int flags = MAP_SHARED | (MAP_POPULATE if populate else 0)
        cdef void *p
        cdef int err
        if map_len == 0:
            map_len = 1  # never read: a zero-length buffer still needs a mapping
        # Without the GIL: MAP_POPULATE faults in every page of a received
        # buffer, which for a large one takes a while.
        with nogil:
            p = mmap(NULL, map_len, PROT_READ | PROT_WRITE, flags, self._fd, <long>start)
            err = errno
        if p == MAP_FAILED:
            if err in (EACCES, EPERM, EINVAL, ENODEV):
                # Read-only fd, a write seal, a file that cannot be mapped:
                # what the peer sent is unusable, not a local failure.
                raise ProtocolError(
                    f"cannot map a received memfd read-write: "
                    f"{strerror(err).decode('utf-8', 'replace')}")
            _raise_errno(err, f"mmap of {map_len} bytes of a memfd")
        self._base = <char *>p
        self._map_len = map_len
        self._addr = self._base + (offset - start)
        self._size = <Py_ssize_t>length
        self._file_off = offset
        return 0

    def __dealloc__(self):
        global _kept_fds, _cache_fds
        # Runs only when no view is left: each one holds a reference.
        if self._lender is not None:
            # Borrowed: the lender may refill this memory once we are done.
            # (From whatever thread drops the last view; the Channel sends
            # it with its next flush.) Not after a fork: a child may still
            # map it, so the lender keeps it until the connection ends.
            if self._gen == _fork_gen:
                self._lender.add(self._ino)
            self._lender = None
        if self._lent is not None:
            if self._gen != _fork_gen:
                (<Lent>self._lent).abandoned = True  # a child may map it
            lent_release(<Lent>self._lent)
            self._lent = None
        if self._base != NULL:
            munmap(self._base, self._map_len)
            self._base = NULL
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1
        if self._counts_fd:
            _kept_fds -= 1
            self._counts_fd = False
        if self._cache_fd:
            _cache_fds -= 1
            self._cache_fd = False

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self._base == NULL and self._size > 0 and self._lent is None \
                and self._parent is None:
            raise BufferError("this SharedBuffer only carries an fd: it is not mapped here")
        view.obj = self
        export_bytes(view, flags, self._addr, &self._size, &self._itemsize)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1

    @staticmethod
    def from_fd(int fd, int64_t offset=0, int64_t length=-1):
        """Map ``[offset, offset + length)`` of memfd ``fd`` (owned from now on).

        ``length=-1`` maps to the end of the file. Raises ProtocolError for
        an fd that is not a memfd sealed against shrinking, or one smaller
        than ``offset + length``.
        """
        cdef struct_stat st
        if fd < 0:
            raise ValueError(f"fd must be a non-negative file descriptor, got {fd}")
        if offset < 0 or length < -1:
            close(fd)
            raise ValueError(f"bad offset {offset} or length {length}")
        if length == -1:
            if fstat(fd, &st) != 0:
                err = errno
                close(fd)
                _raise_errno(err, "fstat")
            length = st.st_size - offset if st.st_size > offset else 0
        return shared_from_fd(fd, <uint64_t>offset, <uint64_t>length, True, None, None, None)

    @property
    def size(self):
        return self._size

    @property
    def fd(self):
        return self._fd

    @property
    def inode(self):
        """The memfd's inode, for a buffer a peer lent (0 otherwise)."""
        return self._ino

    @property
    def file_offset(self):
        return self._file_off

    @property
    def exports(self):
        return self._exports

    def __repr__(self):
        return (f"<SharedBuffer size={self._size} fd={self._fd} "
                f"offset={self._file_off} exports={self._exports}>")


cdef SharedBuffer shared_from_fd(int fd, uint64_t offset, uint64_t length, bint keep_fd,
                                 ReleaseSink lender, dict holds, dict maps):
    global _kept_fds
    cdef SharedBuffer sb = SharedBuffer.__new__(SharedBuffer)
    cdef Lent own
    cdef struct_stat st
    cdef int seals, err
    sb._fd = fd  # owned from here: __dealloc__ closes it on any error below
    seals = fcntl(fd, F_GET_SEALS)
    if seals < 0:
        err = errno
        raise ProtocolError(
            f"a received file descriptor is not a memfd "
            f"({strerror(err).decode('utf-8', 'replace')})")
    if not seals & F_SEAL_SHRINK:
        raise ProtocolError(
            "a received memfd is not sealed against shrinking: the peer could "
            "truncate it under the mapping")
    if fstat(fd, &st) != 0:
        err = errno
        raise ProtocolError(
            f"cannot fstat a received memfd: {strerror(err).decode('utf-8', 'replace')}")
    if offset > <uint64_t>st.st_size or length > <uint64_t>st.st_size - offset:
        raise ProtocolError(
            f"a received memfd of {st.st_size} bytes is smaller than the buffer it "
            f"carries ({length} bytes at offset {offset})")
    sb._gen = _fork_gen
    if lender is not None:
        sb._lender = lender
        sb._ino = st.st_ino
        if maps is not None and 2 * length >= <uint64_t>st.st_size:
            whole = _cached_mapping(maps, fd, &st)
            if whole is not None:
                close(fd)
                sb._fd = -1
                sb._parent = whole
                sb._addr = whole._addr + offset
                sb._size = <Py_ssize_t>length
                sb._file_off = offset
                return sb
    else:
        own = _lents.get(st.st_ino)
        if own is not None and own.sb._fd >= 0 and _same_file(fd, own.sb._fd):
            # Our own Lent, back from a peer: a view of our mapping. Only a
            # peer that holds it may send it (one that released it sends
            # memory that may be refilled any time).
            if holds is None or not holds.get(own):
                raise ProtocolError(
                    "the peer sent back lent memory that it does not hold")
            close(fd)
            sb._fd = -1
            own.holds += 1
            sb._lent = own
            sb._addr = own.sb._addr + offset
            sb._size = <Py_ssize_t>length
            sb._file_off = offset
            return sb
    sb._map(offset, length, True)
    if keep_fd and _kept_fds < _keep_fds_max:
        sb._counts_fd = True
        _kept_fds += 1
    else:
        close(fd)  # the mapping keeps the memory; see the module doc
        sb._fd = -1
    return sb


# Mappings a Channel keeps of the memfds its peer lends (see shared_from_fd).
# A lender refills a few memfds over and over (one or two per array in
# flight); 8 covers that and bounds what a peer's retired memfds can keep
# alive here until the connection ends. Measured (bench/numpy_in.py, 8 MiB
# arrays in, 2 workers): 5.8-7.5 GB/s mapping each array, 13.2 with the
# cache; a 64-entry cache gained nothing more on the echo bench, which is
# bound by the sender's copy.
MAP_CACHE_MAX = 8


cdef SharedBuffer _cached_mapping(dict maps, int fd, struct_stat *st):
    # The cached whole-file mapping of fd's memfd, made now if need be;
    # None when the fd budget is spent (the caller maps just the buffer).
    global _cache_fds
    cdef SharedBuffer whole
    identity = (st.st_dev, st.st_size, st.st_ctim.tv_sec, st.st_ctim.tv_nsec)
    entry = maps.pop(st.st_ino, None)
    if entry is not None and entry[1] == identity:
        maps[st.st_ino] = entry           # the most recently used goes last
        return <SharedBuffer>entry[0]
    if _cache_fds >= _keep_fds_max:
        return None
    whole = SharedBuffer.__new__(SharedBuffer)
    whole._fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    if whole._fd < 0:
        return None
    whole._cache_fd = True
    _cache_fds += 1
    try:
        whole._map(0, <uint64_t>st.st_size, True)
    except (OSError, ProtocolError):
        return None   # (whole goes: its fd is closed) the caller maps the buffer alone
    maps[st.st_ino] = (whole, identity)
    while len(maps) > MAP_CACHE_MAX:
        del maps[next(iter(maps))]        # the least recently used (unmapped
                                          # once no view of it is left)
    return whole


cdef SharedBuffer shared_owner(object view, uint64_t *file_off):
    cdef object obj = view
    cdef SharedBuffer sb
    cdef Py_buffer buf
    cdef char *p
    cdef Py_ssize_t n
    cdef int depth
    for depth in range(OWNER_DEPTH_MAX):
        if type(obj) is SharedBuffer:
            break
        if PyMemoryView_Check(obj):
            obj = obj.obj
        else:
            # numpy arrays (and anything that follows its convention) name
            # the object their memory comes from in .base.
            obj = getattr(obj, "base", None)
        if obj is None:
            return None
    else:
        return None
    sb = <SharedBuffer>obj
    if sb._fd < 0 and sb._lent is None and sb._parent is None:
        return None
    # The chain only says where to look; the addresses decide, so that an
    # unrelated .base can never make us send the wrong bytes.
    PyObject_GetBuffer(view, &buf, PyBUF_SIMPLE)
    p = <char *>buf.buf
    n = buf.len
    PyBuffer_Release(&buf)
    if p < sb._addr or n > sb._size or p - sb._addr > sb._size - n:
        return None
    file_off[0] = sb._file_off + <uint64_t>(p - sb._addr)
    return sb


cdef class ReleaseSink:
    """Inodes of lent buffers that are gone, for a Channel to send back."""

    def __cinit__(self):
        self.inos = []
        self.retired = []
        self.waker = None

    cdef void add(self, uint64_t ino) noexcept:
        # Runs in __dealloc__, in any thread: nothing may escape.
        try:
            self.inos.append(ino)
            if self.waker is not None and len(self.inos) + len(self.retired) == 1:
                self.waker()
        except BaseException:
            pass

    cdef void retire(self, uint64_t ino) noexcept:
        try:
            self.retired.append(ino)
            if self.waker is not None and len(self.inos) + len(self.retired) == 1:
                self.waker()
        except BaseException:
            pass

    def __len__(self):
        return len(self.inos) + len(self.retired)


cdef bint _same_file(int a, int b) noexcept:
    cdef struct_stat sa, sb
    if fstat(a, &sa) != 0 or fstat(b, &sb) != 0:
        return False
    return sa.st_ino == sb.st_ino and sa.st_dev == sb.st_dev


cdef class Lent:
    """One memfd of this process lent to peers (module doc); sock.pyx only."""

    def __repr__(self):
        return f"<Lent cap={self.cap} holds={self.holds} abandoned={self.abandoned}>"


cdef Lent lend_copy(const char *src, Py_ssize_t size):
    cdef Lent lent = None, cand
    cdef Py_ssize_t cap = ((size + LEND_CLASS - 1) // LEND_CLASS) * LEND_CLASS
    cdef Py_ssize_t i
    cdef struct_stat st
    cdef char *dst
    if cap == 0:
        cap = LEND_CLASS
    for i in range(len(_lent_free) - 1, -1, -1):  # the warmest first
        cand = <Lent>_lent_free[i]
        if cand.cap >= cap and cand.cap // 2 <= cap:
            lent = _free_take(i)
            break
    if lent is None:
        if len(_lents) >= _lend_max:
            if not _lent_free:
                return None
            _lent_destroy(_free_take(0))  # the coldest makes room
        lent = Lent.__new__(Lent)
        lent.sb = SharedBuffer.__new__(SharedBuffer)
        lent.sb._create(cap)
        lent.sb._map(0, <uint64_t>cap, False)
        if fstat(lent.sb._fd, &st) != 0:
            _raise_errno(errno, "fstat of a memfd")
        lent.ino = st.st_ino
        lent.cap = cap
        _lents[lent.ino] = lent
    lent.holds = 1
    dst = lent.sb._addr
    with nogil:
        memcpy(dst, src, <size_t>size)
    return lent


cdef Lent _free_take(Py_ssize_t i):
    global _lent_free_bytes
    cdef Lent lent = <Lent>_lent_free.pop(i)
    _lent_free_bytes -= lent.cap
    return lent


cdef void _lent_destroy(Lent lent) noexcept:
    # Unmaps and closes (SharedBuffer.__dealloc__), unless a view of it is
    # alive: the views hold the Lent, and its sb, until they go. Peers that
    # keep a mapping of it for our next arrays are told to drop it.
    _lents.pop(lent.ino, None)
    lent.abandoned = True
    if lent.holds == 0:
        lent.sb = None
        peers, lent.peers = lent.peers, None
        if peers is not None:
            try:
                for sink in list(peers):
                    (<ReleaseSink>sink).retire(lent.ino)
            except BaseException:
                pass


cdef int lent_sent_on(Lent lent, ReleaseSink sink) except -1:
    if lent.peers is None:
        lent.peers = weakref.WeakSet()
    lent.peers.add(sink)
    return 0


cdef int lent_release(Lent lent) except -1:
    global _lent_free_bytes
    lent.holds -= 1
    if lent.holds > 0:
        return 0
    if lent.abandoned or _lend_users == 0 or _lent_free_bytes + lent.cap > _lend_cache_max:
        _lent_destroy(lent)
        return 0
    _lent_free.append(lent)
    _lent_free_bytes += lent.cap
    return 0


cdef int lent_abandon(Lent lent, Py_ssize_t count) except -1:
    lent.abandoned = True
    lent.holds -= count - 1
    return lent_release(lent)


cdef Lent lent_find(uint64_t ino):
    return _lents.get(ino)


cdef void lend_user_add() noexcept:
    global _lend_users
    _lend_users += 1


cdef int lend_user_remove() except -1:
    global _lend_users, _lent_free_bytes
    _lend_users -= 1
    if _lend_users == 0:
        while _lent_free:
            _lent_destroy(_free_take(len(_lent_free) - 1))
    return 0


def _count_fork():
    # Before os.fork, in the parent (the child inherits the count): shared
    # memory mapped now is mapped by the child too (see SharedBuffer.__dealloc__).
    global _fork_gen
    _fork_gen += 1


def _forget_lents_in_child():
    # A forked child shares the parent's Lents (MAP_SHARED): refilling one
    # would overwrite what the parent lent. The child forgets them all;
    # their mappings and fds go with the objects, never refilled.
    global _lent_free_bytes
    for lent in _lents.values():
        (<Lent>lent).abandoned = True
    _lents.clear()
    _lent_free.clear()
    _lent_free_bytes = 0


os.register_at_fork(before=_count_fork, after_in_child=_forget_lents_in_child)
