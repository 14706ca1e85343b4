"""The client side: Socket (one worker by pid); Pool, Sprint, BatchManager.

Data flow of a Pool::

    Sprint/Batch.submit ──> common queue (_core.taskqueue, per-requestor links)
                               │  free worker: first task of its requestor,
                               ▼  else the first task in the queue
                         I/O thread ──frames──> worker processes (AF_UNIX)
                               ▲                     │
                               └──── result frames ──┘
                               │
                 per-requestor result queue ──> Sprint.yield_results (as done)
                                            └─> Batch (reorder buffer, in order)
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import time
from typing import Any, Optional, Tuple

from swarm import _runtime
from swarm._core.frame import (DEFAULT_MAX_FRAME, KIND_ERROR, KIND_INIT,
                               KIND_RESULT, KIND_TASK)
from swarm._core.sock import Channel
from swarm.errors import (PeerClosed, ProtocolError, SwarmError, TaskError,
                          WorkerDied, WorkerNotFound)

__all__ = ["Socket"]

# Pause between connection attempts while a worker is still starting.
CONNECT_RETRY_S = 0.01


def _task_error(body: bytes, buffers, task_id: Any) -> TaskError:
    """Rebuild the exception a worker sent in a FRAME_ERROR body."""
    phase, exc_type, message, tb, pickled = pickle.loads(body, buffers=buffers)
    exception = None
    if pickled is not None:
        try:
            exception = pickle.loads(pickled)
        except Exception:
            exception = None  # e.g. its class exists only in the worker
    where = "initializer" if phase == "initializer" else f"task {task_id!r}"
    if phase in ("task", "initializer"):
        text = f"{where} raised {exc_type}: {message}"
    else:
        text = f"{where} failed in {phase}: {exc_type}: {message}"
    return TaskError(text, task_id=task_id, phase=phase, exc_type=exc_type,
                     remote_traceback=tb, exception=exception)


def _set_timeout(fd: int, timeout: Optional[float]) -> None:
    """Set SO_RCVTIMEO/SO_SNDTIMEO on fd (None: block without limit)."""
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive or None, got {timeout!r}")
    sec = usec = 0
    if timeout is not None:
        sec = int(timeout)
        usec = max(1, int((timeout - sec) * 1e6)) if sec == 0 else int((timeout - sec) * 1e6)
    value = struct.pack("ll", sec, usec)
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.detach()


class Socket:
    """A connection to one worker process, found by its pid.

    The low-level way to use a worker: one request at a time, on the
    caller's thread, no pool.

    Parameters
    ----------
    pid
        Process id of a running worker (a script calling
        ``swarm.worker.run``).
    max_frame
        Largest frame sent or accepted, in bytes.

    Example
    -------
    >>> with Socket(proc.pid) as worker:          # doctest: +SKIP
    ...     worker.connect(timeout=5)
    ...     worker.initialize((scale,))
    ...     task_id, result = worker.do_task([0, (array,)])
    """

    def __init__(self, pid: int, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError(f"pid must be a positive int, got {pid!r}")
        self.pid = pid
        self.max_frame = max_frame
        self._chan: Optional[Channel] = None
        self._seq = 0
        self._timeout: Optional[float] = None

    def __enter__(self) -> "Socket":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self._chan is not None else "not connected"
        return f"<swarm.Socket pid={self.pid} {state}>"

    @property
    def path(self) -> str:
        """The worker's socket file."""
        return _runtime.socket_path(self.pid)

    def connect(self, timeout: float = 5.0) -> None:
        """Connect to the worker, waiting up to ``timeout`` s for its socket.

        Raises
        ------
        WorkerNotFound
            No process has this pid, or it did not open a worker socket in
            time, or the socket file is stale (its process is gone).
        """
        if self._chan is not None:
            return
        path = self.path
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if not _runtime.pid_alive(self.pid):
                    stale = " (its socket file is stale)" if os.path.exists(path) else ""
                    raise WorkerNotFound(
                        f"no worker with pid {self.pid}: the process does not exist{stale}"
                    ) from exc
                if time.monotonic() >= deadline:
                    raise WorkerNotFound(
                        f"process {self.pid} has no worker socket at {path} after "
                        f"{timeout:g} s: is it a swarm worker?") from exc
                time.sleep(CONNECT_RETRY_S)
            except BaseException:
                sock.close()
                raise
        self._chan = Channel(sock.detach(), blocking=True, max_frame=self.max_frame)

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        chan, self._chan = self._chan, None
        if chan is not None:
            chan.close()

    def initialize(self, init_data: Any = (), timeout: Optional[float] = None) -> None:
        """Run the worker's ``initializer(*init_data)``.

        Raises TaskError (phase ``"initializer"``) if the initializer raises;
        the worker then refuses tasks until an initialize succeeds.
        """
        self._request(KIND_INIT, None, init_data, timeout)

    def do_task(self, task_and_id: Any, timeout: Optional[float] = None) -> Tuple[Any, Any]:
        """Run one task: ``do_task([task_id, task]) -> (task_id, result)``.

        ``task`` runs as ``task_processor(*task)`` (a non-tuple task as the
        single argument); ``task_id`` is any object and comes back unchanged.

        Raises
        ------
        TaskError
            The task raised (the original is in ``.exception``, the remote
            traceback in ``.remote_traceback`` and ``__cause__``), or its
            task or result could not be pickled.
        WorkerDied
            The worker's connection closed before the result arrived.
        TimeoutError
            No result within ``timeout`` seconds (the connection is closed,
            since its late reply would be out of step).
        """
        try:
            task_id, task = task_and_id
        except (TypeError, ValueError):
            raise TypeError(
                f"do_task takes [task_id, task], got {task_and_id!r}") from None
        return task_id, self._request(KIND_TASK, task_id, task, timeout)

    def _request(self, kind: int, task_id: Any, payload: Any,
                 timeout: Optional[float]) -> Any:
        chan = self._chan
        if chan is None:
            raise SwarmError(f"{self!r}: call connect() first")
        if timeout != self._timeout:
            _set_timeout(chan.fileno(), timeout)
            self._timeout = timeout
        what = "initialize" if kind == KIND_INIT else f"task {task_id!r}"
        self._seq += 1
        try:
            chan.push(kind, self._seq, 0, payload)
        except ProtocolError:
            raise
        except Exception as exc:
            phase = "init_data" if kind == KIND_INIT else "task"
            raise TaskError(f"{what}: {phase} could not be pickled: {exc}",
                            task_id=task_id, phase=f"{phase} pickling in the client",
                            exc_type=type(exc).__qualname__, exception=exc) from exc
        try:
            chan.flush()
            frame = chan.read_frame()
        except (PeerClosed, ConnectionError) as exc:
            self.close()
            raise WorkerDied(
                f"worker {self.pid} closed the connection during {what}"
                + ("" if _runtime.pid_alive(self.pid) else " (the process is gone)")
            ) from exc
        except (ProtocolError, TimeoutError):
            self.close()
            raise
        rkind, seq, _aux, body, buffers = frame
        if seq != self._seq:
            self.close()
            raise ProtocolError(f"worker {self.pid} answered request {seq}, "
                                f"expected {self._seq}")
        if rkind == KIND_ERROR:
            raise _task_error(body, buffers, task_id)
        if rkind != KIND_RESULT:
            self.close()
            raise ProtocolError(f"worker {self.pid} sent a frame of kind {rkind}")
        try:
            return pickle.loads(body, buffers=buffers)
        except Exception as exc:
            raise TaskError(
                f"{what}: result could not be unpickled in the client: "
                f"{type(exc).__qualname__}: {exc}", task_id=task_id,
                phase="result unpickling in the client",
                exc_type=type(exc).__qualname__, exception=exc) from exc
