"""Type stubs for swarm._core.frame (compiled from frame.pyx)."""

from typing import Iterable, Optional, Tuple

from _typeshed import ReadableBuffer

HEADER_SIZE: int
MAGIC: int
VERSION: int
MAX_BUFFERS: int
MAX_FDS: int
FLAG_FDS: int
FD_BUFFER: int
LENT_BUFFER: int
DEFAULT_MAX_FRAME: int

KIND_INIT: int
KIND_TASK: int
KIND_RESULT: int
KIND_ERROR: int
KIND_RELEASE: int
KIND_RETIRE: int

def pack_header(
    kind: int,
    task_id: int,
    aux: int,
    body_len: int,
    buffer_lengths: Iterable[int] = (),
    *,
    offsets: Optional[Iterable[int]] = None,
) -> bytes:
    """The wire header for a frame, buffer length table included (unchecked)."""

def unpack_header(
    data: ReadableBuffer, max_frame: int = ...
) -> Tuple[int, int, int, int, int]:
    """Parse and check a header: ``(kind, task_id, aux, body_len, nbufs)``."""

def kind_name(kind: int) -> str:
    """A readable name for a frame kind (for error messages)."""
