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

import atexit
import collections
import logging
import mmap
import os
import pickle
import queue as _queue
import select
import socket
import struct
import subprocess
import threading
import time
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List,
                    Optional, Tuple)

from swarm import _runtime, _scaling
from swarm.backend import Backend, LocalBackend
from swarm._core.frame import (DEFAULT_MAX_FRAME, KIND_ERROR, KIND_INIT,
                               KIND_RESULT, KIND_TASK)
from swarm._core.reorder import ReorderBuffer
from swarm._core.shm import SharedBuffer
from swarm._core.sock import Channel
from swarm._core.taskqueue import TaskQueue
from swarm.errors import (PeerClosed, PoolClosed, ProtocolError, SwarmError, TaskError,
                          TruncatedFrame, WorkerDied, WorkerNotFound, WorkerStartError)

__all__ = ["Socket"]

if TYPE_CHECKING:
    from swarm.executor import SwarmExecutor

# Pause between connection attempts while a worker is still starting.
CONNECT_RETRY_S = 0.01


def _ewma(average: float, sample: float) -> float:
    """The moving average after sample (the first sample starts it)."""
    return sample if average == 0.0 else average + EWMA_ALPHA * (sample - average)


def _frame_bytes(body: bytes, buffers: Any) -> int:
    """Bytes of a received frame's body and out-of-band buffers."""
    size = len(body)
    for buf in buffers:
        size += buf.size if type(buf) is SharedBuffer else len(buf)
    return size


def _task_error(body: bytes, buffers, task_id: Any) -> TaskError:
    """Rebuild the exception a worker sent in a FRAME_ERROR body."""
    return _task_error_from(pickle.loads(body, buffers=buffers), task_id)


def _task_error_from(fields: Tuple[str, str, str, str, Optional[bytes]],
                     task_id: Any) -> TaskError:
    """Rebuild a worker's exception from its (phase, type, message,
    traceback, pickled exception or None)."""
    phase, exc_type, message, tb, pickled = fields
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
            while frame is None:  # it read release frames only
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
        assert frame is not None  # a blocking channel returns a frame or raises
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


# ====================================================================== pool
#
# Policy, all of it on the pool's I/O thread (the only thread that touches
# workers, the queue and the in-flight records; user threads talk to it
# through a command queue and a wake-up pipe):
#
# - Assignment. Every worker is assigned to one requestor. A free worker
#   takes the first queued task of its requestor; if its requestor has
#   none, it takes the first task in the queue and is reassigned to that
#   task's requestor (it now holds that requestor's init_data, so staying
#   keeps init switches rare). A worker whose requestor finished stays
#   assigned to it until it takes another requestor's task.
# - New requestors. When a requestor is submitted, idle workers are moved
#   to it until it holds its fair share (workers // requestors with queued
#   tasks); when there are more requestors than workers, the newcomer gets
#   workers as others run dry (the fallback rule above).
# - init_data. Before a worker runs a task of a requestor whose init_data
#   it does not hold, the pool sends that init_data first (pipelined: the
#   worker runs frames in order). Requestors without init_data need none.
# - Pipelining. Each worker has up to `depth` frames in flight; depth
#   follows the requestor's measured task time (deep for tiny tasks, 1 for
#   long ones, so a long task never holds short ones hostage).
# - Chunking. Short tasks of one requestor (see CHUNK_*) go several to a
#   frame; the reply carries every result and per-task errors.
# - Death. A worker whose connection drops has its in-flight tasks put back
#   at the head of the queue (up to max_retries times each, then they fail
#   with WorkerDied naming the signal or exit code) and is replaced. Only
#   the task that was running is charged: in a chunk, the worker's progress
#   page says which one.

__all__ += ["Pool", "Sprint", "BatchManager", "Batch", "BatchError"]

log = logging.getLogger("swarm")

# Work queued on one worker beyond the task it runs, in seconds of measured
# task time: enough to cover a client<->worker round trip (~40 us) with
# margin, small enough that the tail of a batch stays balanced.
PIPELINE_AHEAD_S = 200e-6
# Most frames in flight per worker (tiny tasks); bounds head-of-line delay.
MAX_DEPTH = 64
# In-flight frames per worker before any task time has been measured.
INITIAL_DEPTH = 2
# Automatic chunking: a requestor's queued tasks shorter than this go out
# several to a frame, about this many seconds of measured task time per
# chunk (a frame costs a round trip's worth of syscalls and wake-ups, tens
# of microseconds: a chunk of 2 ms keeps that around 2%)...
CHUNK_TARGET_S = 2e-3
# ... never more tasks than this per chunk ...
MAX_CHUNK = 4096
# ... and at most 1/CHUNK_SHARE of the requestor's queued tasks per worker
# (guided scheduling: chunks shrink as the queue drains, so the last ones
# are small and the workers finish together).
CHUNK_SHARE = 2
# ... but not below 1/CHUNK_TAIL of the target's task time: a smaller chunk
# balances the tail by less than its frame costs (tens of microseconds at
# each end). Measured on 20,000 no-ops (bench/tiny_mapped.py's workload,
# interleaved with mp.Pool.map): 38 chunks and 0.155 us/task without the
# floor, 22 chunks and 0.123 us/task with it.
CHUNK_TAIL = 8
# Frames in flight per worker while chunks are sent: one running, one ready.
CHUNK_DEPTH = 2
# ... and no chunk of tasks whose frames (task or result) average more than
# this many bytes in all: beyond it a frame's fixed cost is noise next to
# moving its bytes, and big chunks would only serialize the transfers
# (measured: 8 MiB arrays echoed by 2 workers took 6.1 ms per task chunked,
# 2.5 ms with one worker, before this bound).
CHUNK_MAX_BYTES = 1 << 20
# Weight of the newest task duration in a requestor's moving average.
EWMA_ALPHA = 0.2
# Grace between closing a worker's connection and SIGTERM, then SIGKILL.
STOP_GRACE_S = 2.0
# aux of an error frame for a task the worker refused because its
# initializer had failed (the task never ran). Shared with swarm.worker.
REFUSED_AUX = 2**64 - 1
# Replacement workers in a row that may die before they are ready before
# the pool stops replacing them (and fails the queue if none is left).
MAX_START_FAILURES = 3
# Bytes of a worker's stderr kept for error messages.
STDERR_TAIL = 8192
# Period of the scaling / retirement / progress timer while any of them has
# work, in seconds. Between ticks the I/O thread sleeps in poll().
TICK_S = 0.05
# Idle time after which a worker beyond the configured size retires.
DEFAULT_IDLE_TIMEOUT_S = 5.0

_CLOSED = object()       # result-queue sentinel: the pool shut down
_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()


class BatchError(SwarmError):
    """Some tasks of a batch failed.

    Attributes
    ----------
    errors
        ``{task_id: TaskError}`` for every failed task, in task order.
    results
        The full result list, each failed task's TaskError in its slot.
    """

    def __init__(self, errors: Dict[int, TaskError], results: List[Any]) -> None:
        ids = list(errors)
        shown = ids[:10] + (["..."] if len(ids) > 10 else [])
        first = errors[ids[0]]
        super().__init__(f"{len(ids)} of {len(results)} tasks failed "
                         f"(task ids {shown}); first: {first}")
        self.errors = errors
        self.results = results
        self.__cause__ = first


class _Chunk:
    """Results of a chunk of consecutive tasks, in one result-queue item:
    ``values[i]`` is task ``index + i``'s value or _Failure."""

    __slots__ = ("values", "failed")

    def __init__(self, values: List[Any], failed: Iterable[int]) -> None:
        self.values = values
        self.failed = failed  # positions of the _Failure values


class _Failure:
    """Marks a failed task in a result queue (a task may return an exception)."""
    __slots__ = ("error",)

    def __init__(self, error: TaskError) -> None:
        self.error = error


def _validate_tta(tta: Any) -> Optional[float]:
    if tta is None:
        return None
    if isinstance(tta, bool) or not isinstance(tta, (int, float)) or tta != tta:
        raise ValueError(f"tta must be a number (epoch seconds) or None, got {tta!r}")
    return float(tta)


class _Requestor:
    """What Sprint and Batch share: a lane in the common queue, init_data,
    a result queue the pool fills, and stats."""

    def __init__(self, init_data: Any, tta: Any, max_retries: Optional[int],
                 task_timeout: Optional[float] = None) -> None:
        if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
            raise ValueError(f"max_retries must be an int >= 0 or None, got {max_retries!r}")
        if task_timeout is not None and (isinstance(task_timeout, bool) or
                                         not isinstance(task_timeout, (int, float))
                                         or not task_timeout > 0):
            raise ValueError(f"task_timeout must be a positive number of seconds or None, "
                             f"got {task_timeout!r}")
        self.task_timeout = task_timeout
        self.init_data = init_data
        self.tta = _validate_tta(tta)
        self.max_retries = max_retries
        self._pool: Optional[Pool] = None
        self._lane = -1
        self._results: "_queue.SimpleQueue[Any]" = _queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._submitted = 0          # tasks given ids so far
        self._consumed = 0           # results taken off _results
        # Stats, written by the pool's I/O thread only.
        self.tasks_done = 0
        self.tasks_failed = 0
        self.tasks_cancelled = 0
        # Called on the I/O thread with a task's index just before it is
        # sent; False skips the task (an executor's cancelled future).
        self._on_dispatch: Optional[Callable[[int], bool]] = None
        self.chunks_sent = 0         # frames that carried several tasks
        self.initializations = 0     # initializer runs for this requestor
        self.init_switches = 0       # ... of them on a worker that held another's
        self.workers_assigned = 0
        self.task_time_s = 0.0       # moving average of measured task time
        self._bytes_in = 0.0         # moving averages of a task's frame bytes: to the worker,
        self._bytes_out = 0.0        # ... and back
        self._depth = INITIAL_DEPTH
        # True: never chunk (per-task timeouts or dispatch hooks need each
        # task in its own frame; set too after a chunk that could not be
        # decoded, so every task then gets its own outcome).
        self._solo = task_timeout is not None
        self._init_error: Optional[TaskError] = None
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        # Deadline scaling, written by the I/O thread.
        self._times = _scaling.TaskTimes()
        self.workers_launched = 0    # workers the pool started for this requestor
        self.projected_finish: Optional[float] = None
        self.saturated = False       # wanted more workers, but they would not help
        self._next_step_at = 0.0     # monotonic time before which no growth step
        self._shrink_ok_at = 0.0     # ... and before which no shrinking
        self._progress: Any = None   # a tqdm bar the I/O thread refreshes

    @property
    def stats(self) -> Dict[str, Any]:
        """A snapshot: tasks submitted/done/failed/left, workers assigned,
        frames that carried several tasks (chunks_sent), initializer runs
        and switches, mean task time, start and finish."""
        return {
            "tasks_submitted": self._submitted,
            "tasks_done": self.tasks_done,
            "tasks_failed": self.tasks_failed,
            "tasks_left": self._submitted - self.tasks_done - self.tasks_failed,
            "workers_assigned": self.workers_assigned,
            "chunks_sent": self.chunks_sent,
            "initializations": self.initializations,
            "init_switches": self.init_switches,
            "task_time_s": self.task_time_s,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "tta": self.tta,
            "workers_launched": self.workers_launched,
            "projected_finish": self.projected_finish,
            "tta_met": self.tta_met,
            "missed_by_s": self.missed_by_s,
            "saturated": self.saturated,
        }

    @property
    def tta_met(self) -> Optional[bool]:
        """True/False once finished with a tta; None while running or without one."""
        if self.tta is None or self.finished_at is None:
            return None
        return self.finished_at <= self.tta

    @property
    def missed_by_s(self) -> Optional[float]:
        """Seconds past the tta at the finish (0.0 when met), None if unknown."""
        if self.tta is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.tta)

    @property
    def is_finished(self) -> bool:
        return self.tasks_done + self.tasks_failed + self.tasks_cancelled >= self._submitted

    def _count_cancelled(self) -> None:
        self.tasks_cancelled += 1
        self._check_finished()

    def _check_finished(self) -> None:
        if self.tasks_done + self.tasks_failed + self.tasks_cancelled == self._submitted:
            self.finished_at = time.time()
            self.projected_finish = self.finished_at
            pool = self._pool
            if pool is not None and self._progress is None:
                # Nothing left to run: the pool lets go of it (a Sprint is
                # taken back when it submits again).
                pool._requestors.pop(self._lane, None)

    def _record_duration(self, seconds: float, is_warmup: bool) -> None:
        if self.tta is not None:
            self._times.add(seconds, is_warmup)
        avg = self.task_time_s = _ewma(self.task_time_s, seconds)
        depth = 1 + int(PIPELINE_AHEAD_S / avg) if avg > 0 else MAX_DEPTH
        self._depth = depth if depth < MAX_DEPTH else MAX_DEPTH

    def _take(self, timeout: Optional[float]) -> Tuple[int, Any]:
        """Next (index, value) from the pool; raises on close or timeout."""
        try:
            item = self._results.get(timeout=timeout)
        except _queue.Empty:
            raise TimeoutError(f"no result within {timeout} s") from None
        if item is _CLOSED:
            self._results.put(_CLOSED)  # every later wait sees it too
            fatal = self._pool._fatal if self._pool is not None else None
            if fatal is not None:
                raise PoolClosed(f"the pool stopped on an internal error: {fatal!r}") from fatal
            raise PoolClosed("the pool was closed before every result arrived")
        self._consumed += len(item[1].values) if type(item[1]) is _Chunk else 1
        return item

    def _attach(self, pool: "Pool") -> None:
        if self._pool is not None:
            raise SwarmError(f"{self!r} is already submitted to a pool")
        self._pool = pool
        self.started_at = time.time()


class Sprint(_Requestor):
    """A streaming requestor: submit tasks at any time, get results as done.

    Parameters
    ----------
    tta
        Target time of completion, absolute epoch seconds, or None.
    init_data
        Passed to the worker's ``initializer(*init_data)`` before it runs
        this sprint's tasks (None: no initializer call).
    max_retries
        Retries of a task whose worker died (None: the pool's setting).
    task_timeout
        Seconds a task may run; one that runs longer fails with phase
        ``"timeout"`` (not retried) and its worker is replaced.

    Example
    -------
    >>> sprint = Sprint()                                  # doctest: +SKIP
    >>> with Pool() as pool:
    ...     pool.submit_sprint(sprint)
    ...     sprint.submit_tasks([(abs, -i) for i in range(10)])
    ...     for task_id, result in sprint.yield_results():
    ...         ...
    """

    def __init__(self, tta: Any = None, init_data: Any = None, *,
                 max_retries: Optional[int] = None,
                 task_timeout: Optional[float] = None) -> None:
        super().__init__(init_data, tta, max_retries, task_timeout)
        self._unsent: List[Any] = []  # tasks submitted before the pool
        # Results of a chunk taken off the queue and not yielded yet.
        self._backlog: "collections.deque[Tuple[int, Any]]" = collections.deque()

    def __repr__(self) -> str:
        return f"<swarm.Sprint submitted={self._submitted} done={self.tasks_done}>"

    def submit_tasks(self, tasks: Iterable[Any]) -> range:
        """Queue tasks; return their task ids (0-based, across all calls).

        May be called before or after ``pool.submit_sprint``, and while
        results are being read.
        """
        tasks = list(tasks)
        with self._submit_lock:
            first = self._submitted
            self._submitted += len(tasks)
            if self._pool is None:
                self._unsent.extend(tasks)
            elif tasks:
                self._pool._post(("tasks", self, first, tasks))
        return range(first, first + len(tasks))

    def yield_results(self, return_exceptions: bool = False,
                      timeout: Optional[float] = None,
                      progress: bool = False) -> Iterator[Tuple[int, Any]]:
        """Yield ``(task_id, result)`` as tasks finish.

        Ends once every task submitted so far has been yielded (tasks
        submitted while iterating are included). A failed task raises its
        TaskError, unless ``return_exceptions`` puts it in the result's
        place; the other results stay reachable by a later call.
        ``timeout`` bounds each wait for the next result. ``progress``
        shows a tqdm bar while iterating (the ``swarm[progress]`` extra).
        """
        if self._pool is None:
            raise SwarmError("submit the sprint to a pool first (pool.submit_sprint)")
        if progress and self._progress is None:
            self._progress = _new_progress(self, "swarm sprint")
        backlog = self._backlog
        try:
            while backlog or self._consumed < self._submitted:
                if backlog:
                    index, value = backlog.popleft()
                else:
                    index, value = self._take(timeout)
                    if type(value) is _Chunk:
                        backlog.extend(zip(range(index, index + len(value.values)),
                                           value.values))
                        continue
                if type(value) is _Failure:
                    if not return_exceptions:
                        raise value.error
                    value = value.error
                yield index, value
        finally:
            if progress:
                _close_progress(self)


class Batch(_Requestor):
    """An ordered requestor over a fixed list of tasks (see BatchManager)."""

    def __init__(self, pool: "Pool", tasks: List[Any], init_data: Any,
                 max_retries: Optional[int], task_timeout: Optional[float]) -> None:
        super().__init__(init_data, None, max_retries, task_timeout)
        self._pool_for_start = pool
        self._tasks: Optional[List[Any]] = tasks
        self._submitted = len(tasks)
        self._reorder = ReorderBuffer(len(tasks))
        self._released: List[Any] = []     # results released in order so far
        self._errors: Dict[int, TaskError] = {}

    def __repr__(self) -> str:
        return f"<swarm.Batch tasks={self._submitted} done={self.tasks_done}>"

    def start(self, tta: Any = None, progress: bool = False) -> "Batch":
        """Queue the batch's tasks on the pool.

        Parameters
        ----------
        tta
            Target time of completion, absolute epoch seconds (as
            ``time.time()``), or None. When the batch is projected to miss
            it, the pool launches workers for it (see Pool's max_workers).
            A tta in the past is not an error: the batch runs at full speed
            and its stats say by how much it missed.
        progress
            Show a tqdm progress bar (needs the ``swarm[progress]`` extra).
        """
        tta = _validate_tta(tta)
        if self._pool is not None:
            raise SwarmError("this batch was already started")
        self.tta = tta
        if progress:
            self._progress = _new_progress(self, "swarm batch")
        pool = self._pool_for_start
        pool._attach_requestor(self)
        tasks, self._tasks = self._tasks, None
        if tasks:
            pool._post(("tasks", self, 0, tasks))
        return self

    def yield_results(self, return_exceptions: bool = False,
                      timeout: Optional[float] = None,
                      progress: bool = False) -> Iterator[Any]:
        """Yield results in task order as the completed prefix grows.

        Starts the batch (without tta) if it was not started. A failed task
        raises its TaskError at its position unless ``return_exceptions``.
        Results already yielded are yielded again by a later call, so it
        can resume after an error.
        """
        if self._pool is None:
            self.start(progress=progress)
        elif progress and self._progress is None and not self.is_finished:
            self._progress = _new_progress(self, "swarm batch")
        released = self._released
        position = 0
        while True:
            while position < len(released):
                value = released[position]
                if type(value) is _Failure:
                    if not return_exceptions:
                        # Keep the failure in place so that a later call
                        # sees the same sequence.
                        raise value.error
                    value = value.error
                yield value
                position += 1
            if self._reorder.done:
                return
            self._absorb(*self._take(timeout))

    def _absorb(self, index: int, value: Any) -> None:
        """File one item of the result queue; release the completed prefix."""
        if type(value) is _Chunk:
            for offset in value.failed:
                self._errors[index + offset] = value.values[offset].error
            self._reorder.put_chunk(index, value.values)
        else:
            if type(value) is _Failure:
                self._errors[index] = value.error
            self._reorder.put(index, value)
        self._released.extend(self._reorder.pop_ready())

    def list_results(self, return_exceptions: bool = False,
                     timeout: Optional[float] = None) -> List[Any]:
        """Block until every task is done; return results in task order.

        Raises BatchError naming the failed task ids (with every result and
        error on it) unless ``return_exceptions`` puts each TaskError in its
        task's slot.
        """
        if self._pool is None:
            self.start()
        while not self._reorder.done:
            self._absorb(*self._take(timeout))
        if not self._errors:
            return list(self._released)
        results = [value.error if type(value) is _Failure else value
                   for value in self._released]
        if self._errors and not return_exceptions:
            raise BatchError(dict(sorted(self._errors.items())), results)
        return results


class BatchManager:
    """Builds a Batch of ``tasks`` on ``pool``, sharing ``init_data``.

    ``max_retries`` and ``task_timeout`` are as for Sprint.

    >>> batch = BatchManager(pool, tasks, init_data=(model,)).batch  # doctest: +SKIP
    >>> batch.start(tta=time.time() + 60)
    >>> results = batch.list_results()       # same order as tasks
    """

    def __init__(self, pool: "Pool", tasks: Iterable[Any], init_data: Any = None, *,
                 max_retries: Optional[int] = None,
                 task_timeout: Optional[float] = None) -> None:
        if not isinstance(pool, Pool):
            raise TypeError(f"pool must be a swarm Pool, got {pool!r}")
        self.pool = pool
        self.batch = Batch(pool, list(tasks), init_data, max_retries, task_timeout)


class _Worker:
    """The I/O thread's record of one worker (its handle: see swarm.backend)."""

    __slots__ = ("proc", "pid", "chan", "ready_fd", "stderr_fd", "stderr_tail",
                 "requestor", "init_for", "init_failed", "inflight", "seq",
                 "is_ready", "is_dead", "last_busy", "is_fresh", "head_since",
                 "is_draining", "progress")

    def __init__(self, proc: Any) -> None:
        self.proc = proc   # the backend's handle: Popen-like (see swarm.backend)
        # The page the worker notes its place in a chunk on: [frame id,
        # position] (see swarm.worker); None where memfd is missing.
        self.progress: Optional[mmap.mmap] = proc.progress
        self.pid = proc.pid
        self.chan: Optional[Channel] = None
        self.ready_fd = proc.ready_fd
        self.stderr_fd = proc.stderr.fileno() if proc.stderr is not None else -1
        self.stderr_tail = b""
        self.requestor: Optional[_Requestor] = None
        self.init_for: Optional[_Requestor] = None   # whose init_data it holds
        self.init_failed = False
        # Frames sent and not yet answered, in send order (the worker answers
        # in order): (requestor, index, task, 0) for a task, (requestor,
        # first index, [task, ...], count) for a chunk, (requestor, -1,
        # None, 0) for an initialize.
        self.inflight: "collections.deque[Tuple[_Requestor, int, Any, int]]" = \
            collections.deque()
        self.seq = 0
        self.is_ready = False
        self.is_dead = False
        self.last_busy = time.monotonic()   # last send or reply, for retirement
        self.is_fresh = True                # no task answered yet (warm-up)
        self.head_since = 0.0               # when the oldest frame in flight began to run
        self.is_draining = False            # takes no new task; retires when idle

    def release_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def exit_description(self) -> str:
        return self.proc.describe_exit()


class Pool:
    """A pool of worker processes serving requestors from one common queue.

    Parameters
    ----------
    script
        Path of a worker script (calls ``swarm.worker.run``), relative to
        the current directory; None runs the built-in worker, whose tasks
        are ``(callable, *args)`` with the callable pickled by reference.
    workers
        Number of worker processes; default: the CPUs this process may use.
        The pool keeps this size unless a requestor's tta needs more.
    max_workers
        Most workers the pool grows to for requestors behind their tta;
        default: max(workers, 4 x usable CPUs). Growth also stops, before
        that, when more workers stop raising throughput (saturation).
    idle_timeout
        Seconds after which a worker beyond ``workers`` that has nothing to
        do retires.
    max_retries
        Times a task is retried when its worker dies under it (default 1).
    start_timeout
        Seconds the workers may take to start before WorkerStartError.
    max_frame
        Largest frame sent or accepted, in bytes.
    backend
        Where the workers run (see swarm.backend): default, processes on
        this machine; ``swarm.dask_backend.DaskBackend(client)`` runs the
        same script on a Dask cluster. ``workers`` then defaults to the
        backend's capacity (its Dask workers).
    chunk_target_s
        Seconds of measured task time per chunk when short tasks travel
        several to a frame (see "Chunking" in the README); 0 sends every
        task alone (when a worker dies, the finished tasks of its chunk
        run again, which tasks with side effects may not want).

    Leaving the ``with`` block (or ``close()``) cancels what is still
    queued, stops every worker and removes every socket file.

    Raises
    ------
    WorkerStartError
        A worker could not start (missing script, import error, early
        exit); the message names the script and shows its stderr.
    """

    def __init__(self, script: Optional[str] = None, workers: Optional[int] = None, *,
                 max_workers: Optional[int] = None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
                 max_retries: int = 1, start_timeout: float = 60.0,
                 max_frame: int = DEFAULT_MAX_FRAME,
                 backend: Optional[Backend] = None,
                 chunk_target_s: float = CHUNK_TARGET_S) -> None:
        if isinstance(chunk_target_s, bool) or not isinstance(chunk_target_s, (int, float)) \
                or not chunk_target_s >= 0:
            raise ValueError(f"chunk_target_s must be a number of seconds >= 0, "
                             f"got {chunk_target_s!r}")
        if backend is None:
            backend = LocalBackend()
        elif not isinstance(backend, Backend):
            raise TypeError(f"backend must be a swarm.backend.Backend, got {backend!r}")
        cores = backend.capacity()
        if workers is None:
            workers = cores
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if max_workers is None:
            max_workers = max(workers, 4 * cores)
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < workers:
            raise ValueError(f"max_workers must be an int >= workers ({workers}), got {max_workers!r}")
        if not isinstance(idle_timeout, (int, float)) or idle_timeout < 0:
            raise ValueError(f"idle_timeout must be a number >= 0, got {idle_timeout!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if os.environ.get("SWARM_LOADING_MAIN"):
            raise RuntimeError(
                "a Pool was created while a worker imported the main script: "
                "guard the pool with `if __name__ == '__main__':`")
        if script is not None:
            script = os.path.abspath(os.fspath(script))
            if not os.path.isfile(script):
                raise WorkerStartError(f"worker script {script} does not exist")
        self.script = script
        self.size = workers
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.max_retries = max_retries
        self._cores = cores
        # Deadline scaling state (I/O thread): pool-wide completion rate while
        # a tta is active, the last growth step, and the saturation ceiling.
        self._rate: Optional[_scaling.RateMeter] = None
        self._step: Optional[Dict[str, Any]] = None  # the growth step being judged
        self._saturated_at: Optional[int] = None
        self._cpu: Optional[_scaling.CpuMeter] = None
        self._worker_cpu: Optional[_scaling.WorkerCpu] = None
        self._timeouts_active = False   # some live requestor has a task_timeout
        self._retiring: List[_Worker] = []
        self.max_frame = max_frame
        self.chunk_target_s = float(chunk_target_s)
        self._backend = backend
        backend.attach(self)
        self._queue = TaskQueue()
        self._workers: Dict[int, _Worker] = {}    # pid -> worker
        self._fds: Dict[int, Tuple[Callable[[_Worker], None], _Worker]] = {}
        self._poller = select.poll()
        # lane -> requestor, for requestors that may still have work. Lanes
        # are never reused: a worker may still point at a finished requestor.
        self._requestors: Dict[int, _Requestor] = {}
        self._next_lane = 0
        self._retries: Dict[Tuple[int, int], int] = {}  # (lane, index) -> retries so far
        self._commands: "_queue.SimpleQueue[Any]" = _queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._woken = False  # a wake-up byte is written and its commands unread
        self._closing = False
        self._closed = False
        self._fatal: Optional[BaseException] = None
        self._close_lock = threading.Lock()
        self._start_failures = 0        # workers in a row that died before ready
        self._start_error: Optional[BaseException] = None
        self._started = threading.Event()
        # Every worker is spawned from the I/O thread, the initial ones too:
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits, and the
        # caller's thread may be a short-lived one.
        self._thread = threading.Thread(target=self._io_main, args=(workers, start_timeout),
                                        name="swarm-pool-io", daemon=True)
        self._thread.start()
        try:
            self._started.wait()
        except BaseException:
            self.close()  # e.g. Ctrl-C while the workers start
            raise
        if self._start_error is not None:
            self._thread.join()
            self._closed = True
            raise self._start_error
        _live_pools.add(self)

    # ------------------------------------------------------------ public

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._workers)} workers"
        return f"<swarm.Pool {self.script or 'built-in worker'} {state}>"

    @property
    def pids(self) -> List[int]:
        """Pids of the live worker processes."""
        return [w.pid for w in list(self._workers.values()) if not w.is_dead]

    def executor(self) -> "SwarmExecutor":
        """A ``concurrent.futures.Executor`` running calls on this pool (see
        swarm.executor). Shutting it down leaves the pool open."""
        from swarm.executor import SwarmExecutor
        return SwarmExecutor(self)

    def submit_sprint(self, sprint: Sprint) -> Sprint:
        """Attach a Sprint: its tasks (queued already or later) run here."""
        if not isinstance(sprint, Sprint):
            raise TypeError(f"submit_sprint takes a Sprint, got {sprint!r}")
        with sprint._submit_lock:
            self._attach_requestor(sprint)
            tasks, sprint._unsent = sprint._unsent, []
            if tasks:
                self._post(("tasks", sprint, 0, tasks))
        return sprint

    def close(self) -> None:
        """Cancel queued tasks, stop every worker, remove socket files.

        Waits for the workers to exit (seconds at most: SIGTERM, then
        SIGKILL). Safe to call twice.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closing = True
            thread = self._thread
            if thread is not None and thread.is_alive():
                try:
                    self._post(("stop",))
                except PoolClosed:
                    pass  # the I/O thread is already tearing down
                thread.join()
            else:
                self._teardown()
            self._closed = True
            _live_pools.discard(self)

    # ------------------------------------------------------------ threads

    def _attach_requestor(self, requestor: _Requestor) -> None:
        if self._closing:
            raise PoolClosed("the pool is closed")
        if requestor.init_data is not None:
            try:
                pickle.dumps(requestor.init_data, 5)
            except Exception as exc:
                raise TypeError(f"init_data cannot be pickled: {type(exc).__qualname__}: "
                                f"{exc}") from exc
        requestor._attach(self)
        self._post(("attach", requestor))

    def _releases_waiting(self) -> None:
        # Called from any thread, in a SharedBuffer's __dealloc__.
        try:
            self._post(("releases",))
        except PoolClosed:
            pass  # the channels close with the pool: nothing to release to

    def _post(self, command: Tuple[Any, ...]) -> None:
        """Hand a command to the I/O thread and wake it."""
        if self._closed or (self._closing and command[0] != "stop"):
            if self._fatal is not None:
                raise PoolClosed(f"the pool stopped on an internal error: {self._fatal!r}") \
                    from self._fatal
            raise PoolClosed("the pool is closed")
        self._commands.put(command)
        if self._woken:
            return  # the I/O thread is yet to read the queue: it sees this one
        self._woken = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already
        except OSError:
            # The I/O thread closed the pipe on its way out: it will not
            # see this command; its teardown closes every requestor.
            if command[0] != "stop":
                raise PoolClosed("the pool is closed") from None

    # ------------------------------------------------------------ start-up

    def _spawn(self, for_requestor: Optional[_Requestor] = None) -> _Worker:
        worker = _Worker(self._backend.start_worker())
        worker.requestor = for_requestor
        if for_requestor is not None:
            for_requestor.workers_assigned += 1
            for_requestor.workers_launched += 1
        self._workers[worker.pid] = worker
        self._watch(worker.ready_fd, self._on_ready, worker)
        if worker.stderr_fd >= 0:
            # Non-blocking: a task may hand the pipe to a process that outlives
            # the worker, and the I/O thread must never wait for its EOF.
            os.set_blocking(worker.stderr_fd, False)
            self._watch(worker.stderr_fd, self._on_stderr, worker)
        return worker

    def _start_workers(self, n: int, timeout: float) -> None:
        started = [self._spawn() for _ in range(n)]
        deadline = time.monotonic() + timeout
        while not all(w.is_ready for w in started):
            if self._closing:
                return  # close() while starting
            left = min(deadline - time.monotonic(), 0.1)
            if deadline - time.monotonic() <= 0:
                slow = [w.pid for w in started if not w.is_ready]
                raise WorkerStartError(
                    f"workers {slow} of {self._describe_script()} did not start "
                    f"within {timeout:g} s")
            for fd, _ in self._poller.poll(left * 1000):
                handler, worker = self._fds.get(fd, (None, None))
                if handler is not None:
                    handler(worker)
            for worker in started:
                if worker.is_dead:
                    self._drain_stderr(worker)
                    raise WorkerStartError(
                        f"worker {worker.pid} of {self._describe_script()} "
                        f"{worker.exit_description()} before it was ready; its stderr:\n"
                        + worker.stderr_tail.decode("utf-8", "replace"))

    def _describe_script(self) -> str:
        return f"script {self.script}" if self.script else "the built-in worker"

    def _watch(self, fd: int, handler: Callable[[_Worker], None], worker: _Worker) -> None:
        self._fds[fd] = (handler, worker)
        self._poller.register(fd, select.POLLIN)

    def _unwatch(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def _on_ready(self, worker: _Worker) -> None:
        try:
            signal_byte = os.read(worker.ready_fd, 1)
        except OSError:
            signal_byte = b""
        self._unwatch(worker.ready_fd)
        os.close(worker.ready_fd)
        worker.ready_fd = -1
        if signal_byte != b"R":
            self._reap(worker)
            self._on_start_failed(worker)
            return
        try:
            fd = worker.proc.connect()
        except OSError:
            self._reap(worker)
            self._on_start_failed(worker)
            return
        self._start_failures = 0
        # A worker elsewhere (a Dask slot) gets arrays inline: copying one
        # into shared memory would only add a copy on the way to the engine.
        if self._backend.is_local:
            worker.chan = Channel(fd, blocking=False, max_frame=self.max_frame)
            # Results of 1 MiB or more are the worker's lent memory: when the
            # caller drops one, the release goes now, not with the next task
            # (an idle worker would hold the memory until then).
            worker.chan.set_release_waker(self._releases_waiting)
        else:
            worker.chan = Channel(fd, blocking=False, max_frame=self.max_frame,
                                  shm_threshold=0)
        worker.is_ready = True
        worker.last_busy = time.monotonic()
        step = self._step
        if step is not None and worker.pid in step["pending"]:
            step["pending"].discard(worker.pid)
            if not step["pending"]:
                step["ready_at"] = time.monotonic()
        self._watch(worker.chan.fileno(), self._on_readable, worker)

    def _on_start_failed(self, worker: _Worker) -> None:
        """A worker died before it was ready. During Pool() that is a
        WorkerStartError (see _start_workers); later, a replacement is tried
        a few times, and when no worker is left the queued tasks fail
        instead of waiting forever."""
        if not self._started.is_set() or self._closing:
            return
        self._start_failures += 1
        stderr = worker.stderr_tail.decode("utf-8", "replace")
        if self._start_failures <= MAX_START_FAILURES and len(self._workers) < self.size:
            log.warning("worker %d %s before it was ready; starting another",
                        worker.pid, worker.exit_description())
            self._spawn()
            return
        if any(not w.is_dead for w in self._workers.values()):
            return  # the pool runs smaller; the survivors serve the queue
        error = WorkerStartError(
            f"no worker of {self._describe_script()} is left: {self._start_failures} "
            f"replacements in a row died before they were ready; the last one "
            f"{worker.exit_description()}, its stderr:\n{stderr}")
        log.error("%s", error)
        for requestor in list(self._requestors.values()):
            for index, _task in self._queue.remove_requestor(requestor._lane):
                self._fail(requestor, index, TaskError(
                    f"task {index}: {error}", task_id=index, phase="worker start",
                    exc_type="WorkerStartError", exception=error))

    def _on_stderr(self, worker: _Worker) -> bool:
        """Pass what the worker wrote to stderr on; False once nothing is left."""
        try:
            data = os.read(worker.stderr_fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._unwatch(worker.stderr_fd)
            if worker.is_dead and worker.proc.stderr is not None:
                worker.proc.stderr.close()
            return False
        worker.stderr_tail = (worker.stderr_tail + data)[-STDERR_TAIL:]
        if not self._closing and _stderr_writable():
            try:
                os.write(2, data)  # the worker's stderr shows as the user's
            except OSError:
                pass
        return True

    def _drain_stderr(self, worker: _Worker) -> None:
        """Read what is there now (never wait for EOF: see _spawn)."""
        while worker.stderr_fd in self._fds and self._on_stderr(worker):
            pass

    # ------------------------------------------------------------ I/O loop

    def _io_main(self, workers: int, start_timeout: float) -> None:
        try:
            self._start_workers(workers, start_timeout)
        except BaseException as exc:  # handed to the caller of Pool()
            self._start_error = exc
            self._closing = True
            self._teardown()
            return
        finally:
            self._started.set()
        if self._closing:
            self._teardown()
            return
        self._poller.register(self._wake_r, select.POLLIN)
        self._io_loop()

    def _io_loop(self) -> None:
        next_tick = 0.0
        try:
            while True:
                self._dispatch()
                timeout_ms = None
                if self._needs_ticks():
                    now = time.monotonic()
                    if now >= next_tick:
                        self._on_tick(now)
                        next_tick = now + TICK_S
                    timeout_ms = max(0.0, next_tick - now) * 1000
                for fd, _ in self._poller.poll(timeout_ms):
                    if fd == self._wake_r:
                        if self._run_commands():
                            return
                        continue
                    entry = self._fds.get(fd)
                    if entry is not None:
                        entry[0](entry[1])
        except BaseException as exc:  # never leave callers waiting on a dead loop
            self._fatal = exc
            raise
        finally:
            self._closing = True
            self._teardown()

    def _run_commands(self) -> bool:
        """Apply queued commands; True when asked to stop."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        # Cleared before the queue is read: a command put after this wakes
        # the thread again, one put before it is read below.
        self._woken = False
        commands = self._commands
        while True:
            try:
                command = commands.get_nowait()
            except _queue.Empty:
                return False
            kind = command[0]
            if kind == "tasks":
                _, requestor, first, tasks = command
                self._requestors[requestor._lane] = requestor  # a finished sprint is back
                if self._start_failures > MAX_START_FAILURES and not self._workers:
                    error = WorkerStartError(f"no worker of {self._describe_script()} is left")
                    for i in range(len(tasks)):
                        self._fail(requestor, first + i, TaskError(
                            f"task {first + i}: {error}", task_id=first + i,
                            phase="worker start", exc_type="WorkerStartError",
                            exception=error))
                elif requestor._init_error is not None:
                    for i in range(len(tasks)):
                        self._fail(requestor, first + i, requestor._init_error)
                else:
                    self._queue.extend(requestor._lane, first, tasks)
            elif kind == "releases":
                # (a copy: a flush that finds the worker dead reaps it)
                for worker in list(self._workers.values()):
                    if worker.chan is not None and worker.chan.releases_waiting \
                            and not worker.is_dead:
                        self._flush(worker)
            elif kind == "attach":
                self._on_attach(command[1])
            elif kind == "stop":
                return True

    def _on_attach(self, requestor: _Requestor) -> None:
        lane = self._next_lane
        self._next_lane += 1
        requestor._lane = lane
        if isinstance(requestor, Batch) and requestor.is_finished:
            return  # an empty batch: nothing will ever run for it
        self._requestors[lane] = requestor
        # Fair share among the requestors that may still get work: idle
        # workers of requestors holding more than theirs (or of finished
        # ones) move to the newcomer; busy ones reach it by the fallback rule.
        live = sum(1 for r in self._requestors.values() if not r.is_finished or isinstance(r, Sprint))
        share = max(1, len(self._workers) // max(1, live))
        for worker in self._workers.values():
            if requestor.workers_assigned >= share:
                break
            owner = worker.requestor
            if owner is requestor or worker.inflight:
                continue
            if (owner is None or owner.workers_assigned > share
                    or (owner.is_finished and not isinstance(owner, Sprint))):
                self._assign(worker, requestor)

    def _assign(self, worker: _Worker, requestor: _Requestor) -> None:
        if worker.requestor is not None:
            worker.requestor.workers_assigned -= 1
        worker.requestor = requestor
        requestor.workers_assigned += 1

    def _dispatch(self) -> None:
        q = self._queue
        if not len(q):
            return
        # A snapshot: a send can find a worker dead, which replaces it.
        for worker in list(self._workers.values()):
            if not worker.is_ready or worker.is_dead or worker.is_draining:
                continue
            requestor = worker.requestor
            lane = requestor._lane if requestor is not None else -1
            sent = False
            while len(q):
                chunk = self._chunk_size(requestor) if requestor is not None else 1
                depth = (CHUNK_DEPTH if chunk > 1 else
                         requestor._depth if requestor is not None else INITIAL_DEPTH)
                if depth > CHUNK_DEPTH and requestor is not None and max(
                        requestor._bytes_in, requestor._bytes_out) > CHUNK_MAX_BYTES:
                    # A frame this big takes longer to move than a round
                    # trip: one in flight behind the running one is enough,
                    # and the queued rest stays free for any worker.
                    depth = CHUNK_DEPTH
                if len(worker.inflight) >= depth:
                    break
                rlane, index, tasks = q.pop_chunk(lane, chunk)
                if rlane != lane:
                    requestor = self._requestors[rlane]
                    lane = rlane
                    self._assign(worker, requestor)
                    # Re-queued: sized for another requestor.
                    q.push_front_chunk(rlane, index, tasks)
                    continue
                if len(tasks) > 1:
                    self._send_chunk(worker, requestor, index, tasks)
                    sent = True
                    continue
                if requestor._on_dispatch is not None and not requestor._on_dispatch(index):
                    requestor._count_cancelled()  # cancelled while queued
                    continue
                self._send_task(worker, requestor, index, tasks[0])
                sent = True
            if sent and not worker.is_dead:
                self._flush(worker)

    def _chunk_size(self, requestor: _Requestor) -> int:
        """Tasks of requestor's to send in the next frame (see CHUNK_*)."""
        task_s = requestor.task_time_s
        target = self.chunk_target_s
        if requestor._solo or not 0.0 < task_s < target / 2:
            return 1
        queued = self._queue.count(requestor._lane)
        fair = -(-queued // (CHUNK_SHARE * max(1, len(self._workers))))
        most = MAX_CHUNK
        task_bytes = max(requestor._bytes_in, requestor._bytes_out)
        if task_bytes > 0.0:
            most = min(most, int(CHUNK_MAX_BYTES / task_bytes))
        return max(1, min(int(target / task_s), max(fair, int(target / CHUNK_TAIL / task_s)),
                          most))

    def _send_chunk(self, worker: _Worker, requestor: _Requestor, index: int,
                    tasks: List[Any]) -> None:
        if not self._prepare(worker, requestor):
            for i in range(len(tasks)):
                self._fail(requestor, index + i, requestor._init_error)
            return
        try:
            size = worker.chan.push(KIND_TASK, worker.seq + 1, len(tasks), tasks)
        except Exception:
            # Unpicklable, or over max_frame together: from now on one by
            # one, each task with its own outcome, paced by dispatch.
            requestor._solo = True
            self._queue.push_front_chunk(requestor._lane, index, tasks)
            return
        worker.seq += 1
        now = time.monotonic()
        if not worker.inflight:
            worker.head_since = now
        worker.inflight.append((requestor, index, tasks, len(tasks)))
        worker.last_busy = now
        requestor.chunks_sent += 1
        requestor._bytes_in = _ewma(requestor._bytes_in, size / len(tasks))

    def _prepare(self, worker: _Worker, requestor: _Requestor) -> bool:
        """Queue the initialize frame worker needs before requestor's tasks
        (if any); False if requestor's init_data cannot be sent."""
        try:
            if requestor.init_data is not None:
                if worker.init_for is not requestor:
                    self._send_init(worker, requestor, requestor.init_data)
            elif worker.init_failed:
                self._send_init(worker, requestor, None)
        except _InitRefused:
            return False
        return True

    def _send_task(self, worker: _Worker, requestor: _Requestor, index: int, task: Any) -> None:
        chan = worker.chan
        if not self._prepare(worker, requestor):
            self._fail(requestor, index, requestor._init_error)
            return
        try:
            size = chan.push(KIND_TASK, worker.seq + 1, 0, task)
        except Exception as exc:  # nothing was queued: the stream is intact
            why = (str(exc) if isinstance(exc, ProtocolError) else   # over max_frame
                   f"task could not be pickled: {type(exc).__qualname__}: {exc}")
            self._fail(requestor, index, TaskError(
                f"task {index}: {why}", task_id=index, phase="task pickling in the client",
                exc_type=type(exc).__qualname__, exception=exc))
            return
        worker.seq += 1
        now = time.monotonic()
        if not worker.inflight:
            worker.head_since = now
        worker.inflight.append((requestor, index, task, 0))
        worker.last_busy = now
        requestor._bytes_in = _ewma(requestor._bytes_in, size)

    def _send_init(self, worker: _Worker, requestor: _Requestor, init_data: Any) -> None:
        try:
            worker.chan.push(KIND_INIT, worker.seq + 1, 0, init_data)
        except Exception as exc:
            error = TaskError(f"init_data could not be pickled: {type(exc).__qualname__}: {exc}",
                              phase="init_data pickling in the client",
                              exc_type=type(exc).__qualname__, exception=exc)
            self._fail_requestor_init(requestor, error)
            raise _InitRefused() from exc
        worker.seq += 1
        if not worker.inflight:
            worker.head_since = time.monotonic()
        worker.inflight.append((requestor, -1, None, 0))
        if worker.init_for is not None and worker.init_for is not requestor:
            requestor.init_switches += 1
        worker.init_for = requestor if init_data is not None else None
        worker.init_failed = False
        requestor.initializations += 1

    def _flush(self, worker: _Worker) -> None:
        try:
            if worker.chan.flush():
                return
        except OSError:
            # The worker is gone; the replies it sent before it went are
            # still to be read (a finished task must not be charged with
            # the death). Reading reaches its EOF and handles the loss.
            self._on_readable(worker)
            if not worker.is_dead:
                self._on_worker_lost(worker)
            return
        # The socket is full: wait until it is writable (big frames).
        self._poller.modify(worker.chan.fileno(), select.POLLIN | select.POLLOUT)

    def _on_readable(self, worker: _Worker) -> None:
        chan = worker.chan
        if chan.pending:
            try:
                if chan.flush():
                    self._poller.modify(chan.fileno(), select.POLLIN)
            except OSError:
                # Gone: read what it answered first; the read ends in EOF.
                self._poller.modify(chan.fileno(), select.POLLIN)
        inflight = worker.inflight
        # One clock reading per wake-up: the frames it brings arrived together.
        now = time.monotonic()
        try:
            while True:
                frame = chan.read_frame()
                if frame is None:
                    if not inflight:
                        worker.last_busy = now
                    return
                kind, seq, aux, body, buffers = frame
                # Replies come in send order: the head's sequence number is
                # derived, not stored per task.
                if seq != worker.seq - len(inflight) + 1:
                    raise ProtocolError(f"worker {worker.pid} answered frame {seq}, expected "
                                        f"{worker.seq - len(inflight) + 1}")
                requestor, index, _task, count = inflight.popleft()
                worker.head_since = now  # the next frame starts now
                if index < 0:
                    self._on_init_reply(worker, requestor, kind, body, buffers)
                    continue
                requestor._bytes_out = _ewma(requestor._bytes_out,
                                             _frame_bytes(body, buffers) / (count or 1))
                if count:
                    self._on_chunk_reply(worker, requestor, index, _task, kind, aux,
                                         body, buffers, now)
                    continue
                if aux != REFUSED_AUX:
                    requestor._record_duration(aux * 1e-9, worker.is_fresh)
                    worker.is_fresh = False
                if self._retries:
                    self._retries.pop((requestor._lane, index), None)
                if self._rate is not None:
                    self._rate.tick(now, 1)
                if kind == KIND_RESULT:
                    try:
                        value = pickle.loads(body, buffers=buffers)
                    except Exception as exc:
                        self._fail(requestor, index, TaskError(
                            f"task {index}: result could not be unpickled in the client: "
                            f"{type(exc).__qualname__}: {exc}", task_id=index,
                            phase="result unpickling in the client",
                            exc_type=type(exc).__qualname__, exception=exc))
                        continue
                    requestor.tasks_done += 1
                    requestor._results.put((index, value))
                    requestor._check_finished()
                elif requestor._init_error is not None:
                    # Refused by a worker whose initializer failed: report
                    # the cause, not the refusal.
                    self._fail(requestor, index, requestor._init_error)
                elif aux == REFUSED_AUX:
                    # Refused because another requestor's initializer failed
                    # on this worker just before: not this task's fault.
                    self._queue.push_front(requestor._lane, index, _task)
                else:
                    self._fail(requestor, index, _task_error(body, buffers, index))
        except (PeerClosed, ProtocolError, ConnectionError, MemoryError) as exc:
            # ProtocolError also covers a reply out of sequence (or to no
            # frame at all); MemoryError: no room for a frame within
            # max_frame. Either way this stream cannot be trusted any more.
            if isinstance(exc, TruncatedFrame):
                log.info("worker %d went away while sending: %s", worker.pid, exc)
            elif not isinstance(exc, (PeerClosed, ConnectionError)):
                log.error("worker %d: %s: %s; replacing it", worker.pid,
                          type(exc).__name__, exc)
            self._on_worker_lost(worker)

    def _on_chunk_reply(self, worker: _Worker, requestor: _Requestor, index: int,
                        tasks: List[Any], kind: int, aux: int, body: bytes, buffers: Any,
                        now: float) -> None:
        count = len(tasks)
        if kind == KIND_ERROR and aux == REFUSED_AUX:
            if requestor._init_error is not None:
                for i in range(count):
                    self._fail(requestor, index + i, requestor._init_error)
            else:  # another requestor's initializer failed just before
                self._queue.push_front_chunk(requestor._lane, index, tasks)
            return
        outcome = None
        if kind == KIND_RESULT:
            try:
                outcome = pickle.loads(body, buffers=buffers)
            except Exception as exc:
                log.info("requestor %d: a chunk's results could not be unpickled (%s: %s); "
                         "its tasks run again one by one", requestor._lane,
                         type(exc).__qualname__, exc)
        if outcome is None:
            # The worker could not unpickle the chunk, or we its results:
            # from now on each of this requestor's tasks travels alone, so
            # that each gets its own outcome.
            requestor._solo = True
            self._requeue(requestor, index, tasks, count)
            return
        requestor._record_duration(aux * 1e-9 / count, worker.is_fresh)
        worker.is_fresh = False
        if self._retries:
            for i in range(count):
                self._retries.pop((requestor._lane, index + i), None)
        if self._rate is not None:
            self._rate.tick(now, count)
        values, errors = outcome
        failed: Iterable[int] = ()
        if errors:
            failed = sorted(errors)
            for offset in failed:
                values[offset] = _Failure(_task_error_from(errors[offset], index + offset))
            requestor.tasks_failed += len(failed)
        requestor.tasks_done += count - len(failed)
        requestor._results.put((index, _Chunk(values, failed)))
        requestor._check_finished()

    def _on_init_reply(self, worker: _Worker, requestor: _Requestor, kind: int,
                       body: bytes, buffers: Any) -> None:
        if kind == KIND_RESULT:
            return
        worker.init_for = None
        worker.init_failed = True
        self._fail_requestor_init(requestor, _task_error(body, buffers, None))

    def _fail_requestor_init(self, requestor: _Requestor, error: TaskError) -> None:
        """The requestor's initializer failed: every task of it fails with
        that error (those in flight come back refused by their worker)."""
        if requestor._init_error is None:
            requestor._init_error = error
        for index, _task in self._queue.remove_requestor(requestor._lane):
            self._fail(requestor, index, error)

    def _fail(self, requestor: _Requestor, index: int, error: TaskError) -> None:
        if error.task_id is None and error.phase == "initializer":
            error = TaskError(f"task {index}: the initializer failed: {error}",
                              task_id=index, phase="initializer", exc_type=error.exc_type,
                              remote_traceback=error.remote_traceback,
                              exception=error.exception)
        requestor.tasks_failed += 1
        requestor._results.put((index, _Failure(error)))
        requestor._check_finished()

    # ------------------------------------------------------------ timer

    def _needs_ticks(self) -> bool:
        if self._retiring or len(self._workers) > self.size:
            return True
        timeouts = False
        ticks = False
        for r in self._requestors.values():
            if r._progress is not None or (r.tta is not None and not r.is_finished):
                ticks = True
            if r.task_timeout is not None and not r.is_finished:
                timeouts = ticks = True
        self._timeouts_active = timeouts
        return ticks

    def _on_tick(self, now: float) -> None:
        self._reap_retired()
        if self._timeouts_active:
            self._expire_tasks(now)
        self._scale(now)
        self._retire_idle(now)
        for lane, r in list(self._requestors.items()):
            if r._progress is not None:
                _refresh_progress(r)
                if r.is_finished and r._progress is None:
                    del self._requestors[lane]  # its bar is closed: let go

    def _scale(self, now: float) -> None:
        """Launch workers for requestors projected to miss their tta."""
        behind = [r for r in self._requestors.values()
                  if r.tta is not None and not r.is_finished and r._init_error is None]
        if not behind:
            self._rate = None
            self._step = None
            return
        if self._rate is None:
            self._rate = _scaling.RateMeter()
            # /proc readings say something only about workers on this machine.
            self._cpu = _scaling.CpuMeter(enabled=self._backend.is_local)
            self._worker_cpu = _scaling.WorkerCpu()
        self._cpu.sample()
        worker_share = self._worker_cpu.sample(
            [w.pid for w in self._workers.values() if w.is_ready]
            if self._backend.is_local else [], now)
        cpu_saturated = self._cpu.is_saturated(worker_share)
        live = len(self._workers)
        step = self._step
        settling = step is not None and (step.get("ready_at") is None or
                                         now < step["ready_at"] + step["window"])
        if step is not None and not settling:
            ready_at = step["ready_at"]
            self._step = None
            after = self._rate.rate(ready_at, now)
            if (step["rate_before"] is not None and after is not None
                    and _scaling.is_saturated(step["rate_before"], step["workers_before"],
                                              after, live)):
                self._saturated_at = live
                log.info("more workers stopped helping at %d workers "
                         "(%.1f -> %.1f tasks/s); growth stops", live,
                         step["rate_before"], after)
        ceiling = self.max_workers if self._saturated_at is None else self._saturated_at
        wall = time.time()
        for r in sorted(behind, key=lambda r: r.tta):
            if r._times.count < _scaling.MIN_SAMPLES:
                continue
            # Chunks are of short tasks: only a single task's elapsed time
            # says something about how long tasks run.
            running = [now - w.head_since for w in self._workers.values()
                       if w.inflight and w.inflight[0][0] is r and w.inflight[0][1] >= 0
                       and not w.inflight[0][3]]
            task_s = r._times.estimate_with_running(running)
            remaining = r._submitted - r.tasks_done - r.tasks_failed
            have = max(1, r.workers_assigned)
            r.projected_finish = _scaling.projected_finish(wall, remaining, task_s, have)
            if r.projected_finish <= r.tta:
                if now >= r._shrink_ok_at:
                    self._shrink_if_ahead(r, now, wall, remaining, task_s, have)
                continue
            if settling or now < r._next_step_at:
                continue  # the last step is still starting or settling
            if self._cpu.busy is None and self._cpu.enabled:
                continue  # no CPU reading yet: judge on the next tick
            if (self._cpu.busy is not None and self._cpu.busy >= _scaling.BUSY_SATURATED
                    and worker_share is None):
                continue  # busy CPUs: first learn whether our workers are why
            if live >= ceiling or cpu_saturated:
                r.saturated = self._saturated_at is not None or cpu_saturated
                continue
            needed = _scaling.workers_needed(wall, r.tta, remaining, task_s, ceiling)
            # New workers can only take queued tasks, not those in flight.
            add = min(needed - have, ceiling - live, self._queue.count(r._lane))
            if add <= 0:
                continue
            window = max(_scaling.SETTLE_S, _scaling.SETTLE_TASKS * task_s)
            pids = set()
            for _ in range(add):
                try:
                    pids.add(self._spawn(r).pid)
                except OSError as exc:
                    log.warning("could not launch a worker: %s", exc)
                    break
            log.info("requestor %d projected to finish %.2f s after its tta: "
                     "launched %d workers (%d -> %d)", r._lane,
                     r.projected_finish - r.tta, len(pids), live, live + len(pids))
            self._step = {"pending": pids, "ready_at": None, "window": window,
                          "rate_before": self._rate.rate(now - window, now),
                          "workers_before": live}
            r._next_step_at = now + window
            r._shrink_ok_at = now + _scaling.START_S + _scaling.SETTLE_S
            return  # one step at a time, so its effect can be judged

    def _expire_tasks(self, now: float) -> None:
        """Fail tasks running past their requestor's task_timeout; the
        worker running one is killed (it cannot be interrupted otherwise)
        and replaced. Tasks queued behind it go back to the queue."""
        for worker in list(self._workers.values()):
            if not worker.inflight or worker.is_dead:
                continue
            requestor, index, task, count = worker.inflight[0]
            limit = requestor.task_timeout
            # A requestor with a task_timeout is never chunked (count is 0).
            if limit is None or index < 0 or count or now - worker.head_since <= limit:
                continue
            worker.inflight.popleft()
            try:
                worker.proc.kill()
            except OSError:
                pass
            # Replaced before the failure is reported; the frames behind the
            # expired task had not started and go back uncharged.
            self._on_worker_lost(worker, head_started=False)
            self._fail(requestor, index, TaskError(
                f"task {index} ran over its task_timeout of {limit:g} s; "
                f"its worker {worker.pid} was killed and replaced", task_id=index,
                phase="timeout", exc_type="TimeoutError",
                exception=TimeoutError(f"task {index} ran over {limit:g} s")))

    def _shrink_if_ahead(self, r: _Requestor, now: float, wall: float, remaining: int,
                         task_s: float, have: int) -> None:
        """A requestor well ahead of its tta with workers launched for it
        gives back those it does not need: they drain (finish what they
        hold, take nothing new) and retire. Never below the pool's size;
        SHRINK_SLACK workers of hysteresis keep it from see-sawing."""
        needed = _scaling.workers_needed(wall, r.tta, remaining, task_s, self.max_workers)
        surplus = min(have - needed - _scaling.SHRINK_SLACK,
                      len(self._workers) - self.size)
        if surplus <= 0:
            return
        drained = 0
        for worker in list(self._workers.values()):
            if drained >= surplus:
                break
            if worker.requestor is r and worker.is_ready and not worker.is_draining:
                worker.is_draining = True
                r.workers_assigned -= 1
                worker.requestor = None
                drained += 1
        r._shrink_ok_at = now + _scaling.SETTLE_S
        if drained:
            log.info("requestor %d is ahead of its tta: %d workers drain and retire",
                     r._lane, drained)

    def _retire_idle(self, now: float) -> None:
        """Workers beyond the configured size that sat idle retire, and
        draining workers retire as soon as their last task is answered."""
        for worker in list(self._workers.values()):
            if worker.is_draining and worker.is_ready and not worker.inflight \
                    and not worker.chan.pending:
                self._retire(worker)
        if len(self._workers) <= self.size or len(self._queue):
            return
        for worker in list(self._workers.values()):
            if len(self._workers) <= self.size:
                break
            if (worker.is_ready and not worker.inflight and not worker.chan.pending
                    and now - worker.last_busy >= self.idle_timeout):
                self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        # Closing the connection is the owned worker's signal to exit; it
        # removes its own socket file. Reaped on a later tick.
        worker.is_dead = True
        self._unwatch(worker.chan.fileno())
        worker.chan.close()
        worker.release_progress()
        if worker.requestor is not None:
            worker.requestor.workers_assigned -= 1
            worker.requestor = None
        del self._workers[worker.pid]
        self._retiring.append(worker)

    def _reap_retired(self) -> None:
        for worker in list(self._retiring):
            if worker.proc.poll() is None:
                continue
            self._retiring.remove(worker)
            self._drain_stderr(worker)
            if worker.stderr_fd not in self._fds and worker.proc.stderr is not None:
                worker.proc.stderr.close()
            worker.proc.release()

    # ------------------------------------------------------------ deaths

    def _reap(self, worker: _Worker) -> None:
        """Forget a worker process that is gone or must go."""
        if worker.is_dead:
            return
        worker.is_dead = True
        if worker.chan is not None:
            self._unwatch(worker.chan.fileno())
            worker.chan.close()
        if worker.ready_fd >= 0:
            self._unwatch(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1
        try:
            worker.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
        self._drain_stderr(worker)
        if worker.requestor is not None:
            worker.requestor.workers_assigned -= 1
            worker.requestor = None
        self._workers.pop(worker.pid, None)
        worker.proc.release()
        if worker.stderr_fd not in self._fds and worker.proc.stderr is not None:
            worker.proc.stderr.close()  # else closed at its EOF or teardown
        worker.release_progress()

    def _on_worker_lost(self, worker: _Worker, head_started: bool = True) -> None:
        """A worker's connection dropped (or it was killed): replace it and
        put its frames back. head_started: the first frame in flight had
        begun to run, so it is the one charged a retry."""
        inflight = list(worker.inflight)
        worker.inflight.clear()
        # Where the worker was in the chunk it ran: read before the page goes.
        head_seq = worker.seq - len(inflight) + 1
        running_at = -1  # the chunk had not begun (e.g. died unpickling it)
        if worker.progress is not None and inflight and inflight[0][3]:
            frame_id, position = struct.unpack_from("qq", worker.progress)
            if frame_id == head_seq and 0 <= position < inflight[0][3]:
                running_at = position
        self._reap(worker)
        how = worker.exit_description()
        # Replace it before reporting anything, so that a caller woken by
        # the report already sees the pool at its size.
        if not self._closing and len(self._workers) < self.size:
            try:
                self._spawn()
            except OSError:
                pass  # the pool shrinks; the survivors keep serving
        # The worker runs frames in order: only the first unanswered one had
        # started, so only it is charged a retry; the frames queued behind it
        # go back untouched (first in flight first, at the head).
        for position in range(len(inflight) - 1, -1, -1):
            requestor, index, task, count = inflight[position]
            if index < 0:
                if position == 0 and head_started:
                    self._charge_init_death(worker, requestor, how)
                continue
            if position > 0 or not head_started:
                self._requeue(requestor, index, task, count)
                continue
            if not count:
                self._charge_death(worker, requestor, index, task, how)
                continue
            if running_at < 0:
                # Which of its tasks killed it is unknown: none is charged,
                # and from now on the requestor's tasks travel one by one,
                # where a death names its task.
                requestor._solo = True
                self._requeue(requestor, index, task, count)
                continue
            # A chunk: only the task it was running is charged. Those before
            # it had finished, but their results died with the worker.
            if running_at + 1 < count:
                self._requeue(requestor, index + running_at + 1, task[running_at + 1:],
                              count - running_at - 1)
            self._charge_death(worker, requestor, index + running_at, task[running_at], how)
            if running_at:
                self._requeue(requestor, index, task[:running_at], running_at)

    def _requeue(self, requestor: _Requestor, index: int, task: Any, count: int) -> None:
        """Put a frame's task(s) back at the head of the queue, uncharged."""
        if requestor._init_error is not None:
            for i in range(count or 1):
                self._fail(requestor, index + i, requestor._init_error)
        elif count:
            self._queue.push_front_chunk(requestor._lane, index, task)
        else:
            self._queue.push_front(requestor._lane, index, task)

    def _charge_death(self, worker: _Worker, requestor: _Requestor, index: int, task: Any,
                      how: str) -> None:
        """Task index was running when its worker died: retry it within the
        retry bound, else fail it with WorkerDied."""
        key = (requestor._lane, index)
        tries = self._retries.get(key, 0)
        if tries < self._retry_limit(requestor) and requestor._init_error is None:
            self._retries[key] = tries + 1
            self._queue.push_front(requestor._lane, index, task)
        else:
            self._retries.pop(key, None)
            self._fail(requestor, index, TaskError(
                f"worker {worker.pid} {how} during task {index}"
                + (f" (after {tries} retries)" if tries else ""),
                task_id=index, phase="worker died", exc_type="WorkerDied",
                exception=WorkerDied(f"worker {worker.pid} {how}")))

    def _retry_limit(self, requestor: _Requestor) -> int:
        return requestor.max_retries if requestor.max_retries is not None else self.max_retries

    def _charge_init_death(self, worker: _Worker, requestor: _Requestor, how: str) -> None:
        """A worker died inside a requestor's initializer: retry on another
        worker within the retry bound, then fail the requestor's tasks."""
        key = (requestor._lane, -1)
        tries = self._retries.get(key, 0)
        if tries < self._retry_limit(requestor):
            self._retries[key] = tries + 1
            return
        self._fail_requestor_init(requestor, TaskError(
            f"worker {worker.pid} {how} in the initializer", phase="initializer",
            exc_type="WorkerDied", exception=WorkerDied(f"worker {worker.pid} {how}")))

    # ------------------------------------------------------------ shutdown

    def _teardown(self) -> None:
        """Stop every worker and release everything (I/O thread or close)."""
        pending = []  # requestors of commands that raced with close: they close too
        while True:
            try:
                command = self._commands.get_nowait()
            except _queue.Empty:
                break
            if command[0] in ("tasks", "attach") and command[1] not in pending:
                pending.append(command[1])
        for requestor in list(self._requestors.values()) + pending:
            for index, _task in self._queue.remove_requestor(requestor._lane):
                pass  # cancelled: the waiting caller sees PoolClosed
            try:
                requestor._results.put(_CLOSED)
                if requestor._progress is not None:
                    _close_progress(requestor)
            except Exception:  # the workers must be stopped whatever happens here
                log.exception("closing requestor %d failed", requestor._lane)
        workers = list(self._workers.values()) + self._retiring
        self._retiring = []
        for worker in workers:
            if worker.chan is not None:
                worker.chan.close()   # an idle owned worker exits on this EOF
            if worker.ready_fd >= 0:
                os.close(worker.ready_fd)
                worker.ready_fd = -1
            if worker.inflight:
                # A busy worker sees the EOF only after its task: its task is
                # abandoned anyway, so it is stopped now.
                try:
                    worker.proc.terminate()
                except OSError:
                    pass
        # Escalate: the EOF, then SIGTERM, then SIGKILL, a grace period each.
        for escalate in (_terminate, _kill):
            deadline = time.monotonic() + STOP_GRACE_S
            for worker in workers:
                try:
                    worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    escalate(worker.proc)
        for worker in workers:
            worker.proc.wait()
            worker.release_progress()
            if worker.proc.stderr is not None:
                worker.proc.stderr.close()
            worker.proc.release()
        self._workers.clear()
        for handler, worker in self._fds.values():
            if handler == self._on_stderr and worker.proc.stderr is not None:
                worker.proc.stderr.close()  # a reaped worker's pipe, never at EOF
        self._fds.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        self._backend.detach()


def _terminate(proc: Any) -> None:
    proc.terminate()


def _kill(proc: Any) -> None:
    proc.kill()


def _new_progress(requestor: _Requestor, desc: str) -> Any:
    """A tqdm bar for a requestor (tqdm is the optional 'progress' extra)."""
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'swarm[progress]'") from None
    return tqdm(total=requestor._submitted, desc=desc, unit="task", dynamic_ncols=True,
                leave=True)


def _refresh_progress(requestor: _Requestor) -> None:
    """Called on the I/O thread's timer: tasks done, workers, projection vs tta."""
    bar = requestor._progress
    if bar is None:
        return
    bar.total = requestor._submitted
    bar.n = requestor.tasks_done + requestor.tasks_failed
    parts = [f"workers={requestor.workers_assigned}"]
    if requestor.tta is not None:
        now = time.time()
        if requestor.projected_finish is not None and not requestor.is_finished:
            parts.append(f"finish in {max(0.0, requestor.projected_finish - now):.1f}s")
        parts.append(f"tta in {requestor.tta - now:.1f}s")
    if requestor.saturated:
        parts.append("saturated")
    bar.set_postfix_str(" ".join(parts), refresh=False)
    bar.refresh()
    if isinstance(requestor, Batch) and requestor.is_finished:
        _close_progress(requestor)


def _close_progress(requestor: _Requestor) -> None:
    bar, requestor._progress = requestor._progress, None
    if bar is not None:
        bar.n = requestor.tasks_done + requestor.tasks_failed
        bar.close()


def _stderr_writable() -> bool:
    """True if fd 2 takes a write now: a client whose stderr is a pipe
    nobody reads must not stall the pool (the output is dropped, and kept
    in each worker's stderr tail for error messages)."""
    try:
        poller = select.poll()
        poller.register(2, select.POLLOUT)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


class _InitRefused(Exception):
    """init_data could not be pickled: the task is not sent."""


@atexit.register
def _close_live_pools() -> None:
    # A pool left open at interpreter exit still stops its workers.
    for pool in list(_live_pools):
        pool.close()
