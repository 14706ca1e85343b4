"""swarm: a process pool for time-consuming batches of tasks.

Workers are processes reached over AF_UNIX sockets; the per-task path is
Cython over raw file descriptors, and numpy arrays cross without a copy
through pickle -- large ones, and those made by ``swarm.empty`` /
``swarm.zeros``, as shared memory. See ``swarm.client`` (Pool, Sprint,
BatchManager, Socket), ``swarm.worker`` (run) and ``swarm.shm``.
"""

from typing import TYPE_CHECKING, Any

from swarm._version import __version__

try:
    from swarm._core import frame as _frame  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "swarm's compiled core (swarm._core) is not built. Install the package "
        "(pip install .) or, in a source checkout, build it in place "
        "(pip install -e . or python setup.py build_ext --inplace). If you are "
        "running tests from a source checkout, run `pytest`, not `python -m "
        "pytest`: the latter imports the unbuilt source tree.") from exc
from swarm.errors import (PeerClosed, PoolClosed, ProtocolError, RemoteTraceback,
                          SwarmError, TaskError, TruncatedFrame, WorkerDied,
                          WorkerNotFound, WorkerStartError)
from swarm.shm import empty, zeros

if TYPE_CHECKING:
    from swarm.client import Socket


def __getattr__(name: str) -> Any:
    # swarm.client (the pool, with logging, subprocess, threads) loads on
    # first use: a worker process imports only what serving needs, which
    # keeps a worker's start-up short.
    if name == "Socket":
        from swarm.client import Socket
        return Socket
    raise AttributeError(f"module 'swarm' has no attribute {name!r}")


__all__ = [
    "__version__", "Socket", "empty", "zeros",
    "SwarmError", "ProtocolError", "PeerClosed", "TruncatedFrame", "WorkerNotFound",
    "WorkerStartError", "WorkerDied", "PoolClosed", "TaskError", "RemoteTraceback",
]
