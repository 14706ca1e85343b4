"""Type stubs for swarm._core.recvbuf (compiled from recvbuf.pyx)."""

RECV_MIN: int
RECV_CACHE_BYTES: int

def cached_bytes() -> int:
    """Bytes of released receive buffers the process keeps mapped for reuse."""

class RecvBuffer:
    """Memory a large inline buffer of a received frame was read into."""

    def __len__(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def exports(self) -> int:
        """Views (memoryviews, arrays) over this buffer that are alive now."""
