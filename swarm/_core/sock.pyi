"""Type stubs for swarm._core.sock (compiled from sock.pyx)."""

from typing import Callable, Optional, Sequence, Tuple, Union

from typing_extensions import Self

from swarm._core.shm import SharedBuffer

DEFAULT_MAX_FRAME: int
SHM_THRESHOLD: int

class Channel:
    """Frames over a connected AF_UNIX stream fd, which it owns."""

    def __new__(
        cls,
        fd: int,
        *,
        blocking: bool = True,
        max_frame: int = ...,
        shm_threshold: Optional[int] = None,
    ) -> Self: ...
    def fileno(self) -> int: ...
    def close(self) -> None:
        """Close the fd and drop anything queued. Safe to call twice."""
    @property
    def closed(self) -> bool: ...
    @property
    def buffered(self) -> int:
        """Received bytes not yet consumed."""
    @property
    def in_frame(self) -> bool:
        """Part of a frame has arrived and the rest has not."""
    @property
    def pending(self) -> bool:
        """True while queued frames are not fully written."""
    @property
    def max_frame(self) -> int: ...
    @property
    def shm_threshold(self) -> int:
        """Out-of-band buffers this large or larger travel as lent memfds; 0: never."""
    @property
    def lent_out(self) -> int:
        """Fds of this process's lent memory that the peer holds now."""
    @property
    def cached_maps(self) -> int:
        """Mappings of the peer's lent memfds kept for its next arrays."""
    @property
    def releases_waiting(self) -> int:
        """Release and retire notices for the peer, not sent yet."""
    def set_release_waker(self, waker: Optional[Callable[[], None]]) -> None:
        """``waker()`` is called, from any thread, when releases start waiting."""
    @property
    def queued_fds(self) -> int:
        """Received file descriptors that no frame has taken yet."""
    def set_recv_timeout(self, seconds: float) -> None:
        """The blocking receive timeout (SO_RCVTIMEO); 0 waits for ever."""
    def push(self, kind: int, task_id: int, aux: int, obj: object) -> int:
        """Pickle ``obj`` (protocol 5) and queue it as one frame."""
    def flush(self) -> bool:
        """Write queued frames; False: a non-blocking socket is full."""
    def send(self, kind: int, task_id: int, aux: int, obj: object) -> bool:
        """``push`` then ``flush``."""
    def read_frame(
        self,
    ) -> Optional[Tuple[int, int, int, bytes, Sequence[Union[bytearray, SharedBuffer]]]]:
        """One complete frame ``(kind, task_id, aux, body, buffers)``, or None."""
