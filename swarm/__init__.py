"""swarm: a process pool for time-consuming batches of tasks.

Workers are processes reached over AF_UNIX sockets; the per-task path is
Cython over raw file descriptors, and numpy arrays cross without a copy
through pickle. See ``swarm.client`` (Pool, Sprint, BatchManager, Socket)
and ``swarm.worker`` (run).
"""

from swarm._version import __version__
from swarm.errors import (PeerClosed, PoolClosed, ProtocolError, RemoteTraceback,
                          SwarmError, TaskError, WorkerDied, WorkerNotFound,
                          WorkerStartError)
from swarm.client import Socket

__all__ = [
    "__version__", "Socket",
    "SwarmError", "ProtocolError", "PeerClosed", "WorkerNotFound",
    "WorkerStartError", "WorkerDied", "PoolClosed", "TaskError", "RemoteTraceback",
]
