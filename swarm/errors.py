"""Every exception swarm raises on purpose, under one base class."""

from __future__ import annotations

from typing import Any, Optional


class SwarmError(Exception):
    """Base class of swarm's own exceptions."""


class ProtocolError(SwarmError):
    """A peer sent something that is not a well-formed swarm frame.

    The connection it came on is closed; other connections are unaffected.
    """


class PeerClosed(SwarmError, ConnectionError):
    """The peer closed the connection between two frames."""


class TruncatedFrame(ProtocolError, PeerClosed):
    """The peer closed the connection inside a frame: it died (or hung up)
    while sending. Both a protocol error for that frame and a closed peer."""


class WorkerNotFound(SwarmError):
    """No live swarm worker listens for the given pid."""


class WorkerStartError(SwarmError):
    """A worker process could not be started (the message carries its stderr)."""


class WorkerDied(SwarmError):
    """A worker process died while it held a task."""


class PoolClosed(SwarmError):
    """The pool was closed while results were still expected."""


class RemoteTraceback(Exception):
    """Carries a worker-side traceback as text; set as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class TaskError(SwarmError):
    """A task (or an initializer) failed in a worker.

    Attributes
    ----------
    task_id
        The id of the task that failed (None for an initializer).
    phase
        Where it failed: ``"task"``, ``"initializer"``, ``"task unpickling in
        the worker"``, ``"result pickling in the worker"``, ``"result
        unpickling in the client"``, or ``"worker died"``.
    exc_type
        The name of the original exception type, e.g. ``"ValueError"``.
    remote_traceback
        The traceback text from the worker ('' when there is none).
    exception
        The original exception object when it could be sent back and
        rebuilt, else None.

    The remote traceback is also attached as ``__cause__`` (a
    `RemoteTraceback`), so an unhandled TaskError prints both tracebacks.
    """

    def __init__(self, message: str, *, task_id: Any = None, phase: str = "task",
                 exc_type: str = "", remote_traceback: str = "",
                 exception: Optional[BaseException] = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.phase = phase
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.exception = exception
        if remote_traceback:
            self.__cause__ = RemoteTraceback(remote_traceback)

    def __reduce__(self) -> Any:
        return (_rebuild_task_error, (self.args[0], self.task_id, self.phase,
                                      self.exc_type, self.remote_traceback))


def _rebuild_task_error(message: str, task_id: Any, phase: str, exc_type: str,
                        remote_traceback: str) -> TaskError:
    return TaskError(message, task_id=task_id, phase=phase, exc_type=exc_type,
                     remote_traceback=remote_traceback)
