"""Type stubs for swarm._core.shm (compiled from shm.pyx)."""

from typing_extensions import Self

KEEP_FDS_MAX: int
LEND_CLASS: int
LEND_MAX: int
LEND_CACHE_BYTES: int
MAP_CACHE_MAX: int

def lent_stats() -> tuple[int, int, int]:
    """``(lents, free lents, free bytes)`` of this process now."""

def kept_fds() -> int:
    """SharedBuffers of this process that hold their fd open now."""

class ReleaseSink:
    """Inodes of lent buffers that are gone, for a Channel to send back."""
    def __len__(self) -> int: ...

class Lent:
    """One memfd of this process lent to peers; made by Channel.push only."""
    def __repr__(self) -> str: ...

class SharedBuffer:
    """A sealed memfd mapped read-write; exports the buffer protocol."""

    def __new__(cls, size: int) -> Self: ...
    def __init__(self, size: int) -> None: ...
    def __repr__(self) -> str: ...
    @staticmethod
    def from_fd(fd: int, offset: int = 0, length: int = -1) -> "SharedBuffer":
        """Map ``[offset, offset + length)`` of memfd ``fd``, which it owns from now on."""
    @property
    def size(self) -> int: ...
    @property
    def fd(self) -> int:
        """The memfd, or -1 when it was closed after mapping."""
    @property
    def inode(self) -> int:
        """The memfd's inode, for a buffer a peer lent (0 otherwise)."""
    @property
    def file_offset(self) -> int:
        """Where the exported bytes start in the memfd."""
    @property
    def exports(self) -> int:
        """Views (memoryviews, arrays) over this buffer that are alive now."""
