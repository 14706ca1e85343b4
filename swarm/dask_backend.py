"""Run a Pool's workers on a Dask cluster: ``Pool(script, backend=DaskBackend(client))``.

swarm keeps its scheduler (the common queue, requestor affinity, retries,
the tta estimator) in the client; Dask runs the tasks. Each of the pool's
workers is a *slot* in this process: a socketpair whose far end the pool
talks to as to a worker process, served by a thread that submits every
frame to Dask (``client.submit(..., pure=False)``, never pinned to a worker
address) and writes the replies back in order as they finish::

    Pool I/O thread ──frames──> slot (socketpair + thread) ──submit──> Dask
          ▲                                                   │
          └──── replies in send order <── results as done ────┘

On the Dask worker, ``_run_frame`` runs the frame with the script's
functions: the script is run once per Dask worker process with
``swarm.worker.run`` in a capture mode (it hands over ``task_processor``
and ``initializer`` and returns); its source travels with the task, so it
need not exist on remote machines. Tasks run one at a time per process
(use ``threads_per_worker=1``: a slot is one Dask worker's worth).

- Per-requestor init: init_data is scattered once (per distinct content)
  and passed as a dependency, so Dask moves it once per worker; a worker
  process runs ``initializer(*init_data)`` before a task whose init it
  does not hold. ``stats["initializations"]`` counts the pool's init
  switches; the initializer may run more often, once per Dask worker
  process that takes a task of a requestor after another's.
- Death: when the Dask worker running a slot's task dies, the slot writes
  the replies that came before and closes; the pool charges the task that
  was running and retries it within ``max_retries``, then fails it with a
  message naming the task. Set Dask's own retry bound
  ``distributed.scheduler.allowed-failures`` to 0 so that swarm's is the
  only one; otherwise a task runs up to ``(allowed_failures + 1) x
  (max_retries + 1)`` times. Set ``distributed.scheduler.worker-saturation``
  to 1.0 too: with more, a Dask worker holds a second task queued behind
  the one running, and when it dies Dask fails both, charging swarm's
  retry bound for a task that never ran.
- Scaling: with a cluster object (``client.cluster`` by default: a
  LocalCluster, a dask-jobqueue or dask-kubernetes cluster), the slots the
  pool starts for a tta become ``cluster.scale(n)`` and a slot only counts
  as ready once the cluster has that many workers; retired slots scale it
  back down, never below the size it had when the pool started.

Limits: functions pickled by reference must be importable on the Dask
workers (a function of the client's ``__main__`` is not); with several
frames in flight on one slot (tiny tasks), a Dask worker death re-runs the
frames behind the one it killed.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import select
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from swarm._core.frame import DEFAULT_MAX_FRAME, KIND_ERROR, KIND_INIT, KIND_RESULT, KIND_TASK
from swarm._core.sock import Channel
from swarm.backend import Backend
from swarm.errors import PeerClosed, ProtocolError, SwarmError, WorkerStartError

if TYPE_CHECKING:
    from swarm.client import Pool

__all__ = ["DaskBackend"]

# Pause between looks at the cluster's worker count while a slot waits for
# the Dask worker it asked for.
WORKER_POLL_S = 0.05
# A task frame whose out-of-band buffers exceed this many bytes is scattered
# to a worker first instead of riding in the task (the scheduler then never
# holds the payload, and Dask does not warn about a large graph).
SCATTER_BYTES = 1 << 20
# Seconds Pool() waits for a Dask worker to load the script.
LOAD_TIMEOUT_S = 60.0

_DEFAULT: Any = object()
_PICKLED_NONE = pickle.dumps(None, 5)


class DaskBackend(Backend):
    """A Pool backend that runs the pool's worker script on Dask workers.

    Parameters
    ----------
    client
        A synchronous ``distributed.Client``. Its workers should run one
        thread each (``threads_per_worker=1``): swarm runs one task at a
        time per worker process, as its own workers do.
    cluster
        Object whose ``scale(n)`` grows and shrinks the cluster for a
        requestor's tta; default ``client.cluster`` (None for a client
        connected by address: the pool then keeps the cluster's size).
    scale
        False: never call ``cluster.scale``.

    Example
    -------
    >>> cluster = LocalCluster(n_workers=2, threads_per_worker=1)  # doctest: +SKIP
    >>> with Client(cluster) as client, \\
    ...         Pool("my_worker.py", backend=DaskBackend(client)) as pool:
    ...     batch = BatchManager(pool, tasks, init_data=(10.0,)).batch
    """

    is_local = False

    def __init__(self, client: Any, cluster: Any = _DEFAULT, *, scale: bool = True) -> None:
        if getattr(client, "asynchronous", False):
            raise TypeError("DaskBackend needs a synchronous distributed.Client")
        self.client = client
        if cluster is _DEFAULT:
            cluster = getattr(client, "cluster", None)
        self.cluster = cluster if scale else None
        self._lock = threading.Lock()
        self._pool_attached = False
        self._script: Optional[Tuple[str, str, str]] = None   # (key, path, source)
        self._max_frame = DEFAULT_MAX_FRAME
        self._slots: Dict[int, _Slot] = {}
        self._next_id = 1
        self._inits: Dict[str, Any] = {}     # content key -> scattered (body, buffers)
        self._init_lock = threading.Lock()
        self._baseline = 0                   # cluster workers when the pool started
        self._scaled_to: Optional[int] = None
        self.stats = {"slots_started": 0, "slots_lost": 0, "init_scatters": 0,
                      "payload_scatters": 0}

    def __repr__(self) -> str:
        return f"<swarm DaskBackend {self.client!r}>"

    # ------------------------------------------------------------ Backend

    def capacity(self) -> int:
        return max(1, len(self.client.nthreads()))

    def attach(self, pool: "Pool") -> None:
        with self._lock:
            if self._pool_attached:
                raise SwarmError("this DaskBackend already serves a pool")
            self._pool_attached = True
        self._max_frame = pool.max_frame
        self._slots.clear()
        self._scaled_to = None
        self._baseline = len(self.client.nthreads())
        if pool.script is None:
            self._script = None
            return
        try:
            with open(pool.script, encoding="utf-8") as f:
                source = f.read()
            digest = hashlib.blake2b((pool.script + "\0" + source).encode(), digest_size=16)
            self._script = (digest.hexdigest(), pool.script, source)
            if self._baseline:
                # Load it on one Dask worker now: a script that cannot load
                # fails Pool(), not every task.
                error = self.client.submit(_load_probe, self._script, pure=False).result(
                    timeout=LOAD_TIMEOUT_S)
                if error is not None:
                    raise WorkerStartError(
                        f"script {pool.script} could not be loaded on a Dask worker:\n{error}")
        except BaseException:
            self._pool_attached = False
            raise

    def start_worker(self) -> "_Slot":
        with self._lock:
            slot_id = self._next_id
            self._next_id += 1
            slot = _Slot(self, slot_id)
            self._slots[slot_id] = slot
            need = len(self._slots) if self.cluster is not None else 0
            self.stats["slots_started"] += 1
        self._rescale()
        slot.start(need)
        return slot

    def detach(self) -> None:
        with self._lock:
            if not self._pool_attached:
                return
            slots = list(self._slots.values())
        for slot in slots:   # the pool stopped them; this only makes sure
            slot.kill()
            try:
                slot.wait(5.0)
            except subprocess.TimeoutExpired:
                pass  # a daemon thread stuck in a Dask call: it ends with the client
        with self._init_lock:
            inits, self._inits = list(self._inits.values()), {}
        for future in inits:
            future.release()
        self._slots.clear()
        self._rescale()
        with self._lock:
            self._pool_attached = False

    # ------------------------------------------------------------ slots

    def _on_slot_stopped(self, slot: "_Slot") -> None:
        with self._lock:
            self._slots.pop(slot.pid, None)
            if slot.lost is not None:
                self.stats["slots_lost"] += 1
        if slot.lost is None:
            self._rescale()  # a lost slot is replaced at once: no shrinking

    def _rescale(self) -> None:
        """Cluster size = the live slots, never below the size it had."""
        if self.cluster is None:
            return
        with self._lock:
            target = max(self._baseline, len(self._slots))
            if target == self._scaled_to or (self._scaled_to is None
                                              and target == self._baseline):
                return
            self._scaled_to = target
            try:
                self.cluster.scale(target)
            except Exception as exc:  # a closed cluster must not stop the pool
                from swarm.client import log
                log.warning("cluster.scale(%d) failed: %s", target, exc)

    def _init_future(self, body: bytes, buffers: List[Any]) -> Tuple[str, Any]:
        """The scattered init_data for this content, and its key."""
        digest = hashlib.blake2b(body, digest_size=16)
        for buf in buffers:
            digest.update(buf)
        key = digest.hexdigest()
        with self._init_lock:
            future = self._inits.get(key)
            if future is None:
                [future] = self.client.scatter([(body, list(buffers))], hash=False)
                self._inits[key] = future
                self.stats["init_scatters"] += 1
        return key, future


class _Lost:
    """A frame's Dask future failed: its worker died, or it was cancelled."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Slot:
    """One pool worker on Dask: the handle DaskBackend gives the pool."""

    stderr = None
    progress = None

    def __init__(self, backend: DaskBackend, slot_id: int) -> None:
        self._backend = backend
        self.pid = slot_id
        self.lost: Optional[str] = None    # why the Dask side failed it
        self.returncode: Optional[int] = None
        self.ready_fd, self._ready_w = os.pipe2(os.O_CLOEXEC)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = mine
        self._pool_fd = theirs.detach()    # handed to the pool by connect()
        # Reads and writes go through separate Channels (their own fds) from
        # separate threads; shutdown() of the one socket ends both.
        # Neither lends memory (shm.pyx): a release for the writer's Lents
        # would arrive at the reader. Results cross once, inline.
        self._rchan = Channel(os.dup(mine.fileno()), blocking=True,
                              max_frame=backend._max_frame, shm_threshold=0)
        self._wchan = Channel(os.dup(mine.fileno()), blocking=True,
                              max_frame=backend._max_frame, shm_threshold=0)
        self._cond = threading.Condition()
        self._order: "collections.deque[int]" = collections.deque()  # seqs, send order
        self._futures: Dict[int, Tuple[Any, Any]] = {}  # seq -> (future, payload future)
        self._finished: List[int] = []                  # seqs whose future is done
        self._done: Dict[int, Any] = {}                 # seq -> reply or _Lost
        self._init: Tuple[Optional[str], Any] = (None, None)  # what the next tasks need
        self._stop = threading.Event()
        self._signal = 0
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"swarm-dask-slot-{slot_id}")

    def start(self, need_workers: int) -> None:
        self._need = need_workers
        self._thread.start()

    # ------------------------------------------------------------ handle

    def connect(self) -> int:
        fd, self._pool_fd = self._pool_fd, -1
        if fd < 0:
            raise OSError(f"slot {self.pid} is already connected")
        return fd

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired(f"dask slot {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self._halt(15)

    def kill(self) -> None:
        self._halt(9)

    def describe_exit(self) -> str:
        if self.lost is not None:
            return f"lost its task on the Dask cluster ({self.lost})"
        return "closed its connection" if self.returncode is None else "was stopped"

    def release(self) -> None:
        if self._pool_fd >= 0:  # never connected
            os.close(self._pool_fd)
            self._pool_fd = -1

    def _halt(self, signum: int) -> None:
        self._signal = self._signal or signum
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------ threads

    def _main(self) -> None:
        writer = None
        try:
            if not self._wait_for_workers():
                return
            writer = threading.Thread(target=self._write_replies, daemon=True,
                                      name=f"swarm-dask-slot-{self.pid}-replies")
            writer.start()
            try:
                os.write(self._ready_w, b"R")
            except OSError:
                return  # the pool gave up on this slot
            finally:
                os.close(self._ready_w)
                self._ready_w = -1
            self._read_frames()
        except BaseException as exc:  # never die silently: the pool sees the EOF
            self._lose(f"{type(exc).__name__}: {exc}")
        finally:
            if self._ready_w >= 0:
                os.close(self._ready_w)  # EOF without "R": it failed to start
                self._ready_w = -1
            self._halt(0)
            if writer is not None:
                writer.join(5.0)
            self._cancel_all()
            self._rchan.close()
            self._wchan.close()
            self._sock.close()
            self.returncode = -self._signal if self._signal else (1 if self.lost else 0)
            self._backend._on_slot_stopped(self)

    def _wait_for_workers(self) -> bool:
        """Until the cluster has the workers this slot stands for. False:
        stopped, or the pool closed the ready pipe, before that."""
        if not self._need:
            return True
        poller = select.poll()
        poller.register(self._ready_w, 0)  # POLLERR: the pool closed its end
        client = self._backend.client
        while not self._stop.is_set():
            if poller.poll(0):
                return False
            try:
                workers = len(client.nthreads())
            except Exception as exc:  # the client lost its scheduler
                raise SwarmError(f"the Dask scheduler cannot be reached "
                                 f"({type(exc).__name__}: {exc})") from exc
            if workers >= self._need:
                return True
            self._stop.wait(WORKER_POLL_S)
        return False

    def _read_frames(self) -> None:
        chan = self._rchan
        while not self._stop.is_set():
            try:
                frame = chan.read_frame()
            except (PeerClosed, ProtocolError, ConnectionError, OSError):
                return  # the pool closed its end: retired or shut down
            if frame is None:
                continue  # only release frames (never sent here: the pool's end does not lend)
            kind, seq, aux, body, buffers = frame
            # An array the caller made with swarm.empty arrives as shared
            # memory; the engine ships bytes (it copies them anyway).
            self._submit(kind, seq, aux, body,
                         [b if type(b) is bytearray else bytearray(b) for b in buffers])

    def _submit(self, kind: int, seq: int, aux: int, body: bytes, buffers: List[Any]) -> None:
        backend = self._backend
        client = backend.client
        payload = None
        if kind == KIND_INIT:
            if body == _PICKLED_NONE and not buffers:
                # Clears a failed init: nothing runs; later tasks need none.
                self._init = (None, None)
                with self._cond:
                    self._order.append(seq)
                    self._done[seq] = (KIND_RESULT, 0, None)
                    self._cond.notify_all()
                return
            self._init = backend._init_future(body, buffers)
            body, buffers = b"", []
        elif sum(len(b) for b in buffers) > SCATTER_BYTES:
            [payload] = client.scatter([(body, buffers)], hash=False)
            backend.stats["payload_scatters"] += 1
            body, buffers = b"", []
        init_key, init_future = self._init
        future = client.submit(_run_frame, backend._script, init_key, init_future, kind, aux,
                               body, buffers, payload, pure=False)
        with self._cond:
            self._order.append(seq)
            self._futures[seq] = (future, payload)
        future.add_done_callback(lambda _f, seq=seq: self._on_done(seq))

    def _on_done(self, seq: int) -> None:
        with self._cond:
            self._finished.append(seq)
            self._cond.notify_all()

    def _write_replies(self) -> None:
        """Collect results as they finish (so none waits on a Dask worker
        that may die), release their futures, write replies in send order."""
        client = self._backend.client
        order, done = self._order, self._done
        while True:
            with self._cond:
                while not self._finished and not (order and order[0] in done) \
                        and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                ready = [(seq, self._futures.pop(seq)) for seq in self._finished
                         if seq in self._futures]
                self._finished.clear()
            good = [(seq, f) for seq, (f, _p) in ready if f.status == "finished"]
            if good:
                try:
                    values = client.gather([f for _s, f in good])
                except BaseException as exc:  # lost between finishing and gathering
                    values = [_Lost(exc)] * len(good)
                for (seq, _f), value in zip(good, values):
                    done[seq] = value
            for seq, (future, payload) in ready:
                if seq not in done:
                    try:
                        exc = future.exception(timeout=10)
                    except BaseException as error:  # cancelled
                        exc = error
                    done[seq] = _Lost(exc)
                future.release()
                if payload is not None:
                    payload.release()
            while True:
                with self._cond:
                    if not order or order[0] not in done:
                        break
                    seq = order.popleft()
                    reply = done.pop(seq)
                if type(reply) is _Lost:
                    self._lose(_describe_loss(reply.exc))
                    return
                kind, aux, obj = reply
                try:
                    self._wchan.push(kind, seq, aux, obj)
                    self._wchan.flush()
                except (OSError, ProtocolError):
                    return  # the pool closed its end
                except Exception as exc:  # could not pickle what the worker could
                    self._lose(f"reply could not be sent: {type(exc).__name__}: {exc}")
                    return

    def _lose(self, why: str) -> None:
        """The Dask side failed a frame: drop the rest, close. The pool
        reads the replies written so far, then the EOF (worker lost)."""
        if self.lost is None:
            self.lost = why
        self._halt(0)
        self._cancel_all()

    def _cancel_all(self) -> None:
        with self._cond:
            pending = list(self._futures.values())
            self._futures.clear()
        futures = [f for f, _p in pending] + [p for _f, p in pending if p is not None]
        if futures:
            try:
                self._backend.client.cancel(futures)
            except Exception:
                pass  # the client is closing: the futures go with it


def _describe_loss(exc: BaseException) -> str:
    text = f"{type(exc).__name__}"
    last = getattr(exc, "last_worker", None)
    address = getattr(last, "address", None)
    if address:
        text += f" on Dask worker {address}"
    return text


# ============================================================ on the Dask worker

# One task at a time per process: a worker script's state (what its
# initializer set up) is per process, as in a swarm worker process.
_LOCK = threading.Lock()
_served: Dict[Optional[str], "_Served"] = {}


class _Served:
    """A loaded worker script in this Dask worker process."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker          # a swarm.worker._Worker (its _run_* methods)
        self.init_key: Optional[str] = None   # whose init_data it holds


class _Reply:
    """Stands in for the Channel that swarm.worker's _run_* methods push
    their reply to: keeps it for the Dask task to return. Like a Channel's
    push, it raises if the reply cannot be pickled."""

    def __init__(self) -> None:
        self.reply: Tuple[int, int, Any] = (KIND_RESULT, 0, None)

    def push(self, kind: int, task_id: int, aux: int, obj: Any) -> None:
        if kind == KIND_RESULT and obj is not None:
            pickle.dumps(obj, 5, buffer_callback=_out_of_band)  # buffers not copied
        self.reply = (kind, aux, obj)


def _out_of_band(buffer: Any) -> None:
    """A buffer_callback: leave the buffer out of the trial pickle."""


def _load(script: Optional[Tuple[str, str, str]]) -> _Served:
    key = script[0] if script is not None else None
    served = _served.get(key)
    if served is not None:
        return served
    from swarm import worker as swarm_worker
    if script is None:
        functions = (swarm_worker._call, swarm_worker._builtin_initializer)
    else:
        _key, path, source = script
        directory = os.path.dirname(path)
        if os.path.isdir(directory) and directory not in sys.path:
            sys.path.append(directory)  # sibling modules, where they exist
        captured: list = []
        swarm_worker._captured = captured
        try:
            code = compile(source, path, "exec")
            exec(code, {"__name__": "__main__", "__file__": path,
                        "__builtins__": __builtins__})
        finally:
            swarm_worker._captured = None
        if not captured:
            raise RuntimeError(f"worker script {path} did not call swarm.worker.run(...) "
                               "when run as __main__")
        functions = captured[0]
    served = _Served(swarm_worker._Worker(functions[0], functions[1], DEFAULT_MAX_FRAME))
    _served[key] = served
    return served


def _load_probe(script: Tuple[str, str, str]) -> Optional[str]:
    """Load the script here; the traceback text if that fails."""
    with _LOCK:
        try:
            _load(script)
        except BaseException:
            import traceback
            return traceback.format_exc()
    return None


def _run_frame(script: Optional[Tuple[str, str, str]], init_key: Optional[str],
               init_payload: Any, kind: int, aux: int, body: bytes, buffers: List[Any],
               payload: Any) -> Tuple[int, int, Any]:
    """Run one frame of the worker protocol; return its reply (kind, aux, obj)."""
    from swarm.worker import _error_body
    start = time.perf_counter_ns()
    reply = _Reply()
    with _LOCK:
        try:
            served = _load(script)
        except Exception as exc:
            return (KIND_ERROR, time.perf_counter_ns() - start, _error_body("worker start", exc))
        worker = served.worker
        if init_key is not None and served.init_key != init_key:
            served.init_key = None
            init_body, init_buffers = init_payload
            worker._run_initializer(reply, 0, init_body, init_buffers)
            if reply.reply[0] == KIND_ERROR:
                return reply.reply
            served.init_key = init_key
        if kind == KIND_INIT:
            return (KIND_RESULT, time.perf_counter_ns() - start, None)
        # An init of another requestor that failed in this process is not
        # this task's business (its own init, if any, ran just above).
        worker.is_initialized = True
        if payload is not None:
            body, buffers = payload
        worker._handle(reply, KIND_TASK, 0, aux, body, buffers)
    return reply.reply
