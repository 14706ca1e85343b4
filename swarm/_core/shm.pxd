# SharedBuffer: a sealed memfd and a MAP_SHARED mapping of (part of) it,
# exported through the buffer protocol (writable, 1-d bytes).
#
# Lifetime: every exported view (a memoryview, a numpy array) holds a
# reference to the SharedBuffer, so __dealloc__ -- munmap, then close the
# fd -- runs only once the last of them is gone. Nothing else frees it.
#
# sock.pyx uses the cdef functions below: lend_copy to copy a large
# out-of-band buffer into recycled shared memory, shared_owner to find the
# SharedBuffer an outgoing buffer already lives in (no copy), and
# shared_from_fd to map a memfd received with SCM_RIGHTS.

from libc.stdint cimport uint64_t


# Where a Channel collects the inodes of lent buffers that are gone, from
# any thread (SharedBuffer.__dealloc__); the Channel's flush sends them.
# waker, if set, is called when the sink goes from empty to not empty (a
# pool's I/O thread sleeps in poll and must be told to flush).
cdef class ReleaseSink:
    cdef list inos
    cdef list retired             # inodes of our Lents, sent on this Channel
                                  # once, that are unmapped now (FRAME_RETIRE)
    cdef object waker
    cdef object __weakref__       # Lent.peers holds sinks weakly
    cdef void add(self, uint64_t ino) noexcept
    cdef void retire(self, uint64_t ino) noexcept


cdef class SharedBuffer:
    cdef int _fd                  # the memfd, or -1: closed after mapping
                                  # (a received buffer over the fd budget)
    cdef bint _counts_fd          # _fd is counted in the process-wide budget
    cdef bint _cache_fd           # _fd is a Channel's cached mapping's (counted
                                  # apart: no array needs to hold it)
    cdef char *_base              # start of the mapping (page aligned), or NULL
    cdef Py_ssize_t _map_len      # bytes mapped at _base (>= 1); 0: not mapped
                                  # here (a view of a Lent's mapping)
    cdef char *_addr              # first exported byte, _base + a page offset
    cdef Py_ssize_t _size         # exported bytes, from _addr
    cdef uint64_t _file_off       # offset of _addr in the memfd
    cdef Py_ssize_t _exports      # live buffer exports (views, arrays)
    cdef Py_ssize_t _itemsize     # 1: strides[0] of the exported view
    cdef uint64_t _ino            # the memfd's inode (set when it is lent or
                                  # borrowed; 0 otherwise)
    cdef ReleaseSink _lender      # borrowed: the release sink of the Channel
                                  # it came from (its inode is added there
                                  # when this buffer goes); None otherwise
    cdef unsigned long _gen       # _fork_gen when _lender or _lent was set: a
                                  # fork since then shares the memory with a
                                  # child, so it is never released for refill
    cdef SharedBuffer _parent     # a view of this mapping of a whole memfd
                                  # (a Channel's cached mapping of lent memory):
                                  # _base is NULL, _addr points into it
    cdef object _lent             # a view of this process's own lent memory
                                  # that came back from a peer: that Lent
                                  # (not mapped here: _base is NULL); or None
    cdef int _create(self, Py_ssize_t size) except -1
    cdef int _map(self, uint64_t offset, uint64_t length, bint populate) except -1


# Lending: recycled shared memory for ordinary arrays (see shm.pyx's module
# doc). A Lent is one memfd of this process, mapped here, that frames carry
# to peers; `holds` counts who may still read it (one per fd sent to a peer
# that has not released it yet, one per view of it that came back). At 0 it
# is refilled by the next lend_copy, or unmapped if `abandoned`.
cdef class Lent:
    cdef SharedBuffer sb          # the whole memfd, mapped here, never exported
    cdef uint64_t ino
    cdef Py_ssize_t cap           # bytes of the memfd (a multiple of LEND_CLASS)
    cdef Py_ssize_t holds
    cdef bint abandoned           # a peer that held it went away: never reused
    cdef object peers             # WeakSet of the ReleaseSinks of the Channels
                                  # it was sent on: told when it is unmapped


# A Lent holding a copy of src[:size], with holds == 1 (the caller's); None
# when the process already has LEND_MAX of them and none is free.
cdef Lent lend_copy(const char *src, Py_ssize_t size)

# Records that lent was sent on the Channel whose sink this is, so that the
# peer is told (FRAME_RETIRE) when lent is unmapped.
cdef int lent_sent_on(Lent lent, ReleaseSink sink) except -1

# Drops one hold; at 0 the memory is free for the next lend_copy.
cdef int lent_release(Lent lent) except -1

# Drops `count` holds of a peer that went away without releasing them; the
# memory is never reused (the peer may still map it), only unmapped at 0.
cdef int lent_abandon(Lent lent, Py_ssize_t count) except -1

# The Lent of this process with that inode, or None.
cdef Lent lent_find(uint64_t ino)

# Channels that lend count themselves in and out; when none is left, the
# free Lents are unmapped (a process that stopped sending keeps no memory).
cdef void lend_user_add() noexcept
cdef int lend_user_remove() except -1


# Maps bytes [offset, offset + length) of a received fd, which it owns from
# the call on (closed on any error). Raises ProtocolError when the fd is not
# a memfd sealed against shrinking or is smaller than offset + length.
# keep_fd: keep the fd open (so that the buffer can be sent on without a
# copy) if the process-wide budget allows; otherwise it is closed at once.
#
# lender: None for a plain fd; for a lent one (the sender wants it back),
# the receiving Channel's release sink, which gets the memfd's inode when
# the buffer goes. A plain fd whose memfd is one of this process's own
# Lents (an array that went to a peer and came back) is not mapped again:
# the buffer is a view of the Lent's mapping, holding it.
#
# holds: the receiving Channel's Lent -> count map. Our own Lent may only
# come back from a peer that holds it (else a misbehaving peer could make
# us view memory we refill): ProtocolError otherwise.
#
# maps: the receiving Channel's cache of whole-file mappings of lent memfds
# (inode -> (SharedBuffer, identity)), or None. A lent buffer whose memfd is
# cached there becomes a view of that mapping: no mmap, no munmap (the
# lender refills the same memfd, so its pages are already in our page
# tables). Filled on a miss, at most MAP_CACHE_MAX per Channel.
cdef SharedBuffer shared_from_fd(int fd, uint64_t offset, uint64_t length, bint keep_fd,
                                 ReleaseSink lender, dict holds, dict maps)

# The SharedBuffer, holding its fd (or a view of a Lent), whose exported bytes contain all the
# bytes of `view` (a contiguous buffer, e.g. PickleBuffer.raw()), found by
# walking memoryview.obj / .base from view; None if there is none. On
# success *file_off is the offset of view's first byte in the memfd.
cdef SharedBuffer shared_owner(object view, uint64_t *file_off)
