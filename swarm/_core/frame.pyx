# cython: language_level=3
"""Frame header limits and validation (see frame.pxd for the layout).

Python-visible surface, used by tests and by the client to build
well-formed or deliberately malformed frames:

- ``pack_header(kind, task_id, aux, body_len, buffer_lengths=(), *, offsets=None) -> bytes``
- ``unpack_header(data, max_frame=DEFAULT_MAX_FRAME) -> (kind, task_id, aux, body_len, nbufs)``
- ``kind_name(kind) -> str``
- constants ``HEADER_SIZE``, ``MAGIC``, ``VERSION``, ``MAX_BUFFERS``,
  ``MAX_FDS``, ``FLAG_FDS``, ``FD_BUFFER``, ``LENT_BUFFER``,
  ``DEFAULT_MAX_FRAME`` and the kinds ``KIND_INIT``, ``KIND_TASK``,
  ``KIND_RESULT``, ``KIND_ERROR``, ``KIND_RELEASE``, ``KIND_RETIRE``.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint64_t

from swarm.errors import ProtocolError

HEADER_SIZE = FRAME_HEADER_SIZE
MAGIC = FRAME_MAGIC
VERSION = FRAME_VERSION
MAX_BUFFERS = FRAME_MAX_BUFFERS
MAX_FDS = FRAME_MAX_FDS
FLAG_FDS = FRAME_FLAG_FDS
FD_BUFFER = FRAME_FD_BUFFER
LENT_BUFFER = FRAME_LENT_BUFFER
# Largest frame accepted by default, header and buffers included: large
# enough for a 1 GiB array, small enough that a corrupt length cannot make a
# reader allocate without bound. Override per Socket/worker with max_frame=.
DEFAULT_MAX_FRAME = (1 << 30) + (1 << 20)

KIND_INIT = FRAME_INIT
KIND_TASK = FRAME_TASK
KIND_RESULT = FRAME_RESULT
KIND_ERROR = FRAME_ERROR
KIND_RELEASE = FRAME_RELEASE
KIND_RETIRE = FRAME_RETIRE

_KIND_NAMES = {FRAME_INIT: "init", FRAME_TASK: "task",
               FRAME_RESULT: "result", FRAME_ERROR: "error", FRAME_RELEASE: "release",
               FRAME_RETIRE: "retire"}


cdef int header_check(const FrameHeader *h, uint64_t max_frame) except -1:
    if h.magic != FRAME_MAGIC:
        raise ProtocolError(
            f"bad frame magic 0x{h.magic:08x} (expected 0x{FRAME_MAGIC:08x}): "
            "the peer is not speaking the swarm protocol")
    if h.version != FRAME_VERSION:
        raise ProtocolError(
            f"unsupported frame version {h.version} (this side speaks "
            f"{FRAME_VERSION})")
    if h.kind < 1 or h.kind > FRAME_KIND_MAX:
        raise ProtocolError(f"unknown frame kind {h.kind}")
    if h.flags & ~FRAME_FLAG_FDS:
        raise ProtocolError(f"reserved frame flags set: 0x{h.flags:04x}")
    if h.nbufs > FRAME_MAX_BUFFERS:
        raise ProtocolError(
            f"frame announces {h.nbufs} out-of-band buffers, over the limit "
            f"of {FRAME_MAX_BUFFERS}")
    if (<uint64_t>h.body_len + FRAME_HEADER_SIZE
            + <uint64_t>header_entry_size(h.flags) * h.nbufs > max_frame):
        raise ProtocolError(
            f"frame body of {h.body_len} bytes is over the frame limit of "
            f"{max_frame} bytes")
    return 0


def pack_header(int kind, uint64_t task_id, uint64_t aux, Py_ssize_t body_len,
                buffer_lengths=(), *, offsets=None):
    """Return the wire header for a frame, buffer length table included.

    With ``offsets`` (one per buffer) the frame has ``FLAG_FDS`` set and
    16-byte table entries ``(length, offset)``; a length or'ed with
    ``FD_BUFFER`` says that buffer travels as a memfd (see frame.pxd).

    No validation beyond the field widths: tests use this to build frames
    that a reader must reject.
    """
    cdef list lengths = list(buffer_lengths)
    cdef list offs = None if offsets is None else list(offsets)
    cdef Py_ssize_t n = len(lengths), i, entry
    cdef FrameHeader h
    cdef uint64_t length, offset
    if body_len < 0 or body_len > 0xFFFFFFFF:
        raise ValueError(f"body_len {body_len} does not fit the header")
    if offs is not None and len(offs) != n:
        raise ValueError(f"{len(offs)} offsets for {n} buffers")
    h.magic = FRAME_MAGIC
    h.version = FRAME_VERSION
    h.kind = kind
    h.flags = 0 if offs is None else FRAME_FLAG_FDS
    h.nbufs = n
    h.body_len = body_len
    h.task_id = task_id
    h.aux = aux
    entry = header_entry_size(h.flags)
    out = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_SIZE + entry * n)
    cdef char *p = PyBytes_AS_STRING(out)
    header_write(p, &h)
    for i in range(n):
        length = lengths[i]
        memcpy(p + FRAME_HEADER_SIZE + entry * i, &length, 8)
        if offs is not None:
            offset = offs[i]
            memcpy(p + FRAME_HEADER_SIZE + entry * i + 8, &offset, 8)
    return out


def unpack_header(const unsigned char[::1] data not None, uint64_t max_frame=DEFAULT_MAX_FRAME):
    """Parse and check a fixed header; return ``(kind, task_id, aux, body_len, nbufs)``.

    Raises ProtocolError for a header that a reader would reject.
    """
    cdef FrameHeader h
    if data.shape[0] < FRAME_HEADER_SIZE:
        raise ProtocolError(f"header needs {FRAME_HEADER_SIZE} bytes, got {data.shape[0]}")
    header_read(<const char *>&data[0], &h)
    header_check(&h, max_frame)
    return (h.kind, h.task_id, h.aux, h.body_len, h.nbufs)


def kind_name(int kind):
    """Return a readable name for a frame kind (for error messages)."""
    return _KIND_NAMES.get(kind, f"kind {kind}")
