# The frame header: layout, kinds and limits, shared by every module that
# reads or writes frames. Header read/write are inline so that sock.pyx
# packs and parses without a call.
#
# A frame on the wire, all integers little-endian:
#
#   magic u32 | version u8 | kind u8 | flags u16 | nbufs u32 | body_len u32 |
#   task_id u64 | aux u64 |  nbufs x u64 buffer lengths  | body | buffers...
#
# body is a pickle protocol-5 stream; buffers are its out-of-band buffers in
# the order pickle produced them.
#
# Shared memory (flags & FRAME_FLAG_FDS). Some buffers then travel as a
# memfd passed with SCM_RIGHTS instead of inline, and each entry of the
# buffer table is 16 bytes instead of 8:
#
#   ... aux u64 |  nbufs x (u64 length | u64 offset)  | body | inline buffers...
#
# A length with bit 63 set (FRAME_FD_BUFFER) is carried by an fd: its low 63
# bits are the buffer's length, offset is where the buffer starts in that
# memfd, and no bytes of it follow in the stream. Other entries are inline
# buffers as above, with offset 0. The fd-carried buffers take the frame's
# file descriptors in order, and every fd-carried length counts toward
# max_frame like an inline one (it bounds what a peer makes us map).
#
# A length with bits 63 and 62 set (FRAME_FD_BUFFER | FRAME_LENT_BUFFER) is
# a lent fd-carried buffer: recycled memory of the sender, which it refills
# only after the receiver sends a FRAME_RELEASE frame naming the memfd's
# inode (aux), once per lent buffer received, when it is done with it.
#
# The fds of a frame arrive in one SCM_RIGHTS message attached to the
# sendmsg that starts with the frame's first header byte, so at most
# FRAME_MAX_FDS (the kernel's SCM_MAX_FD) buffers of a frame travel as fds;
# the sender sends any further ones inline. A frame whose fds did not
# arrive with its first byte, or fds that no frame uses, are a protocol
# error. Frames without the flag are laid out exactly as before.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef enum:
    FRAME_MAGIC = 0x4D525753      # b"SWRM" read as a little-endian u32
    FRAME_VERSION = 2             # bumped on any incompatible layout change
    FRAME_HEADER_SIZE = 32              # fixed part, before the buffer lengths
    FRAME_MAX_BUFFERS = 4096            # out-of-band buffers per frame; bounds the
                                  # length table (32 KiB, 64 KiB with fds) a
                                  # reader must hold
    FRAME_MAX_FDS = 253           # fd-carried buffers per frame: SCM_MAX_FD,
                                  # the most fds one sendmsg may carry
    FRAME_FLAG_FDS = 0x0001       # flags: 16-byte table entries, some
                                  # buffers travel as memfds (see above)


cdef enum FrameKind:
    FRAME_INIT = 1                # client -> worker: body is init_data tuple
    FRAME_TASK = 2                # client -> worker: body is the task
    FRAME_RESULT = 3              # worker -> client: body is the result
    FRAME_ERROR = 4               # worker -> client: body describes a failure
    FRAME_RELEASE = 5             # either way: a lent buffer (its memfd's inode
                                  # in aux) is free again; no body, no buffers.
                                  # Handled inside Channel, never returned.
    FRAME_RETIRE = 6              # either way: the sender unmapped a memfd it
                                  # lent (inode in aux): drop any mapping of it
                                  # kept for its next arrays. No body, no
                                  # buffers; handled inside Channel.
    FRAME_KIND_MAX = 6


cdef extern from *:
    """
    #define SWARM_FRAME_FD_BUFFER (((uint64_t)1) << 63)
    #define SWARM_FRAME_LENT_BUFFER (((uint64_t)1) << 62)
    """
    # Bit 63 of a buffer length in a FRAME_FLAG_FDS frame: carried by an fd
    # (an enum cannot hold it: enums are C ints).
    const uint64_t FRAME_FD_BUFFER "SWARM_FRAME_FD_BUFFER"
    # Bit 62, only with bit 63: the buffer is lent (see above).
    const uint64_t FRAME_LENT_BUFFER "SWARM_FRAME_LENT_BUFFER"


cdef struct FrameHeader:
    uint32_t magic
    uint8_t version
    uint8_t kind
    uint16_t flags                # FRAME_FLAG_FDS or 0; other bits reserved (0)
    uint32_t nbufs                # count of out-of-band buffers
    uint32_t body_len             # bytes of pickle stream
    uint64_t task_id              # opaque to _core; the sender's sequence
    uint64_t aux                  # per-kind extra: task run time in ns for
                                  # FRAME_RESULT / FRAME_ERROR, else 0


# The header is memcpy'd field by field rather than cast, so that the wire
# layout does not depend on struct padding; x86-64 and aarch64 are both
# little-endian, which is all swarm builds for (Linux only).
cdef inline void header_write(char *p, const FrameHeader *h) noexcept nogil:
    memcpy(p, &h.magic, 4)
    memcpy(p + 4, &h.version, 1)
    memcpy(p + 5, &h.kind, 1)
    memcpy(p + 6, &h.flags, 2)
    memcpy(p + 8, &h.nbufs, 4)
    memcpy(p + 12, &h.body_len, 4)
    memcpy(p + 16, &h.task_id, 8)
    memcpy(p + 24, &h.aux, 8)


cdef inline void header_read(const char *p, FrameHeader *h) noexcept nogil:
    memcpy(&h.magic, p, 4)
    memcpy(&h.version, p + 4, 1)
    memcpy(&h.kind, p + 5, 1)
    memcpy(&h.flags, p + 6, 2)
    memcpy(&h.nbufs, p + 8, 4)
    memcpy(&h.body_len, p + 12, 4)
    memcpy(&h.task_id, p + 16, 8)
    memcpy(&h.aux, p + 24, 8)


# Bytes per buffer table entry of a frame with these flags.
cdef inline Py_ssize_t header_entry_size(uint16_t flags) noexcept nogil:
    return 16 if flags & FRAME_FLAG_FDS else 8


# Checks a parsed header against the limits; raises swarm.ProtocolError
# naming what is wrong. max_frame bounds the whole frame in bytes.
cdef int header_check(const FrameHeader *h, uint64_t max_frame) except -1
