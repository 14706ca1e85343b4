"""The worker side: ``run(task_processor, initializer=None)`` serves tasks.

A worker is a plain script::

    from swarm.worker import run

    def double(x):
        return 2 * x

    if __name__ == "__main__":
        run(task_processor=double)

It listens on ``<run dir>/<pid>.sock`` (see ``swarm._runtime``) and answers
two kinds of frames:

- ``initialize``: ``initializer(*init_data)`` (a no-op without an
  initializer, or when init_data is None). If it raises, the worker reports the error and refuses tasks
  until a later initialize succeeds, so no task runs on half-initialized
  state.
- ``task``: ``task_processor(*task)`` for a tuple, ``task_processor(task)``
  otherwise. The result (or the exception, with its traceback) goes back on
  the same connection, tagged with the task's id and its run time.
- a chunk (a task frame whose aux is its task count): a list of tasks, run
  in order; one reply carries ``(results, errors)``, errors being None or
  ``{position: error}``. A pool's worker notes the position it is running
  in a shared page (``SWARM_PROGRESS_FD``), so that if it dies the pool
  knows which task of the chunk killed it.

Connections: several clients may be connected at once; the worker serves
them in turn, one frame at a time, in a single thread (tasks never run
concurrently inside one worker). With a single client it waits in recv on
that connection, and looks for newcomers every SOLE_CLIENT_CHECK_S, idle or
busy. Peers of another uid are refused
(SO_PEERCRED). A worker started by a Pool exits when that pool's connection
closes, when the pool's process dies, or on SIGTERM; a worker started by
hand runs until SIGTERM or Ctrl-C. The socket file is removed in every one
of these cases.

The built-in worker used by ``Pool()`` (``_main`` here, started by the
pool with the client's sys.path) runs a task ``(callable, *args)`` as
``callable(*args)``; init_data likewise.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
import types
from typing import Any, Callable, Optional

from swarm import _runtime
from swarm._core.frame import (DEFAULT_MAX_FRAME, KIND_ERROR, KIND_INIT,
                               KIND_RESULT, KIND_TASK)
from swarm._core.runner import run_chunk
from swarm._core.sock import Channel
from swarm.errors import PeerClosed, ProtocolError

__all__ = ["run"]

_UCRED = struct.Struct("3i")
# aux of the error frame for a task refused because the initializer failed
# (the task never ran); the pool requeues such a task when it was another
# requestor's initializer that failed.
REFUSED_AUX = 2**64 - 1
# A client that stops sending in the middle of a frame for this long is cut
# off, so one stalled peer cannot freeze a worker that serves several.
STALLED_FRAME_S = 30.0
# How often an owned worker checks that the process that started it lives:
# the backstop for PR_SET_PDEATHSIG when the worker is deep in C code.
PARENT_CHECK_S = 1.0
PR_SET_PDEATHSIG = 1
# Bytes of the progress page a pool shares with each of its workers: two
# int64, the frame id of the chunk running and the position in it.
PROGRESS_SIZE = 16
# With a single client, the worker waits in recv on that connection rather
# than in poll and then recv (one syscall less per task; measured across
# CPUs: 49.5 -> 41-43 us per round trip), and looks at the listening socket
# for new clients this often, idle or busy.
SOLE_CLIENT_CHECK_S = 0.1


# Set by swarm.dask_backend while it loads a worker script on a Dask worker:
# run() then records the script's functions here and returns instead of
# serving a socket (the Dask worker calls them; see swarm.dask_backend).
_captured: Optional[list] = None


class _Terminate(BaseException):
    """Raised by the SIGTERM handler to unwind the serve loop."""


def run(task_processor: Callable[..., Any],
        initializer: Optional[Callable[..., Any]] = None, *,
        max_frame: Optional[int] = None) -> None:
    """Serve tasks on this process's socket until told to stop.

    Parameters
    ----------
    task_processor
        Called as ``task_processor(*task)`` for each task (a non-tuple task
        is passed as the single argument); its return value is the result.
    initializer
        Optional; called as ``initializer(*init_data)`` when a client
        initializes this worker (before the tasks of a requestor whose
        init_data the worker does not hold yet).
    max_frame
        Largest frame accepted or sent, in bytes; default: the starting
        pool's ``max_frame`` (``SWARM_MAX_FRAME``), else 1 GiB + 1 MiB.

    On a Dask worker (a Pool with ``swarm.dask_backend.DaskBackend``) the
    script is run for its functions: ``run`` hands them over and returns.
    """
    if not callable(task_processor):
        raise TypeError(f"task_processor must be callable, got {task_processor!r}")
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable or None, got {initializer!r}")
    if _captured is not None:
        _captured.append((task_processor, initializer))
        return
    if max_frame is None:
        max_frame = int(os.environ.get("SWARM_MAX_FRAME", DEFAULT_MAX_FRAME))
    _Worker(task_processor, initializer, max_frame).serve()


def _error_body(phase: str, exc: BaseException) -> tuple:
    import traceback  # only on the error path: the module costs start-up time
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = pickle.dumps(exc, 5)
    except Exception:
        pickled = None  # the client rebuilds a TaskError from the text alone
    return (phase, type(exc).__qualname__, str(exc), tb, pickled)


class _Worker:

    def __init__(self, task_processor, initializer, max_frame):
        self.task_processor = task_processor
        self.initializer = initializer
        self.max_frame = max_frame
        self.is_initialized = True   # False after a failed initializer
        self.owner_pid = int(os.environ.get("SWARM_PARENT_PID", "0") or 0)
        self.channels = {}           # fd -> Channel
        self.owner_fd = -1           # fd of the owning pool's connection
        self.path = None
        self.listener = None
        # The pool's shared progress page: [frame id, position] of the chunk
        # running (see _run_chunk); None for a worker started by hand.
        self.progress = _map_progress_page()

    # ------------------------------------------------------------ lifetime

    def serve(self) -> None:
        previous = signal.signal(signal.SIGTERM, _raise_terminate)
        if self.owner_pid:
            # The pool coordinates shutdown; Ctrl-C in the terminal reaches
            # the whole process group and must not print worker tracebacks.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._watch_parent()
        # Linux gives a process-directed signal to any thread that does not
        # block it (a library's thread pool, our parent watchdog), and the
        # main thread would sleep on in poll. The C handler also writes the
        # signal number to this socket, which the loop polls.
        self.wakeup_r, wakeup_w = socket.socketpair()
        self.wakeup_r.setblocking(False)
        wakeup_w.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wakeup_w.fileno(), warn_on_full_buffer=False)
        try:
            self._listen()
            self._loop()
        except (_Terminate, KeyboardInterrupt):
            pass
        finally:
            # When the pool dies, its connection's EOF and PR_SET_PDEATHSIG's
            # SIGTERM arrive together: the EOF may start this cleanup and the
            # signal then interrupt it. Cleanup is idempotent, so a late
            # signal just runs it again; the socket file never stays behind.
            while True:
                try:
                    self._shutdown()
                    signal.signal(signal.SIGTERM, previous)
                    signal.set_wakeup_fd(previous_wakeup)
                    self.wakeup_r.close()
                    wakeup_w.close()
                    break
                except (_Terminate, KeyboardInterrupt):
                    continue

    def _watch_parent(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: the watchdog thread below still works
        if os.getppid() != self.owner_pid:
            raise SystemExit(0)  # the pool died before we got here

        def watchdog():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            while True:
                time.sleep(PARENT_CHECK_S)
                if os.getppid() != self.owner_pid:
                    self._unlink()
                    os._exit(0)

        threading.Thread(target=watchdog, name="swarm-parent-watch", daemon=True).start()

    def _listen(self) -> None:
        directory = _runtime.run_dir()
        self.path = _runtime.socket_path(os.getpid(), directory)
        # A file at our own pid's path can only be left by a dead process.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        # Bound under a temporary name and renamed once listening: a client
        # that sees the socket file can connect (between bind and listen
        # it would be refused).
        staging = self.path + ".new"
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(staging)
            listener.listen(64)
            os.rename(staging, self.path)
        except BaseException:
            listener.close()
            try:
                os.unlink(staging)
            except FileNotFoundError:
                pass
            raise
        self.listener = listener
        ready_fd = int(os.environ.pop("SWARM_READY_FD", "-1"))
        if ready_fd >= 0:
            try:
                os.write(ready_fd, b"R")
            finally:
                os.close(ready_fd)

    def _unlink(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _shutdown(self) -> None:
        self._unlink()
        for chan in self.channels.values():
            chan.close()
        self.channels.clear()
        if self.listener is not None:
            self.listener.close()

    # ------------------------------------------------------------ serving

    def _loop(self) -> None:
        poller = select.poll()
        listen_fd = self.listener.fileno()
        wakeup_fd = self.wakeup_r.fileno()
        poller.register(listen_fd, select.POLLIN)
        poller.register(wakeup_fd, select.POLLIN)
        while True:
            if len(self.channels) == 1 and not self._serve_sole(poller, listen_fd):
                return  # our pool is gone: so are we
            for fd, _ in poller.poll():
                if fd == listen_fd:
                    self._accept(poller)
                    continue
                if fd == wakeup_fd:
                    self._drain_wakeup()  # the signal's handler runs now
                    continue
                chan = self.channels.get(fd)
                if chan is None:
                    continue
                if not self._serve_ready(chan):
                    poller.unregister(fd)
                    del self.channels[fd]
                    chan.close()
                    if fd == self.owner_fd:
                        return  # our pool is gone: so are we

    def _serve_sole(self, poller, listen_fd: int) -> bool:
        """Serve the only connection by blocking in its recv. True: another
        client knocked, or a client's connection ended; False: the owning
        pool's connection ended (the worker then exits)."""
        (fd, chan), = self.channels.items()
        knock = select.poll()
        knock.register(listen_fd, select.POLLIN)
        chan.set_recv_timeout(SOLE_CLIENT_CHECK_S)
        stalled_since = 0.0
        next_check = time.monotonic() + SOLE_CLIENT_CHECK_S
        try:
            while True:
                try:
                    frame = chan.read_frame()
                except TimeoutError:
                    self._drain_wakeup()
                    if knock.poll(0):
                        return True  # a newcomer: back to serving several
                    if not chan.in_frame:
                        stalled_since = 0.0
                        continue
                    # Mid-frame: only a non-owner peer is cut off for stalling.
                    now = time.monotonic()
                    stalled_since = stalled_since or now
                    if fd != self.owner_fd and now - stalled_since > STALLED_FRAME_S:
                        raise
                    continue
                stalled_since = 0.0
                if frame is None:
                    chan.flush()  # release frames only: what they freed may owe a retire
                    continue
                self._handle(chan, *frame)
                # Let go of the task's buffers now, not when the next frame
                # comes: shared arrays and their fds are released at once.
                frame = None
                chan.flush()
                now = time.monotonic()
                if now >= next_check:  # a busy client must not lock others out
                    next_check = now + SOLE_CLIENT_CHECK_S
                    if knock.poll(0):
                        return True
        except (PeerClosed, ProtocolError, OSError, MemoryError):
            poller.unregister(fd)
            del self.channels[fd]
            chan.close()
            return fd != self.owner_fd
        finally:
            if not chan.closed:  # the owner waits for ever, a guest STALLED_FRAME_S
                chan.set_recv_timeout(0 if fd == self.owner_fd else STALLED_FRAME_S)

    def _drain_wakeup(self) -> None:
        try:
            while self.wakeup_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _accept(self, poller) -> None:
        conn, _ = self.listener.accept()
        pid, uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid != os.getuid():
            conn.close()  # another user: no frame of theirs is ever read
            return
        is_owner = bool(self.owner_pid) and pid == self.owner_pid and self.owner_fd < 0
        if not is_owner:
            # A peer that stalls mid-frame, or stops reading its results,
            # is cut off rather than freezing this single-threaded worker.
            # The owning pool is exempt: it always reads, and a paused
            # client (a debugger) must not lose its workers.
            stall = struct.pack("ll", int(STALLED_FRAME_S), 0)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, stall)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, stall)
        fd = conn.detach()
        self.channels[fd] = Channel(fd, blocking=True, max_frame=self.max_frame)
        if is_owner:
            self.owner_fd = fd
        poller.register(fd, select.POLLIN)

    def _serve_ready(self, chan: Channel) -> bool:
        """Serve every frame that has arrived on chan; False: drop chan."""
        try:
            while True:
                frame = chan.read_frame()
                if frame is None:
                    chan.flush()  # release frames only: what they freed may owe a retire
                    return True
                self._handle(chan, *frame)
                frame = None  # the task's buffers go now: their releases leave below
                # Every result leaves at once: holding it for the next task's
                # result would delay it by that task's whole run time.
                chan.flush()
                if not chan.buffered:
                    return True
        except (PeerClosed, ProtocolError, OSError, MemoryError):
            # ProtocolError: a malformed frame from this peer. It cannot be
            # answered in-stream (we lost the framing), so the connection is
            # closed; other connections and the next client are served.
            return False

    def _handle(self, chan: Channel, kind: int, task_id: int, aux: int,
                body: bytes, buffers) -> None:
        if kind == KIND_TASK:
            if aux:
                self._run_chunk(chan, task_id, aux, body, buffers)
            else:
                self._run_task(chan, task_id, body, buffers)
        elif kind == KIND_INIT:
            self._run_initializer(chan, task_id, body, buffers)
        else:
            raise ProtocolError(f"a worker does not accept frames of kind {kind}")

    def _run_task(self, chan, task_id, body, buffers) -> None:
        start = time.perf_counter_ns()
        try:
            task = pickle.loads(body, buffers=buffers)
        except BaseException as exc:  # ship any failure to the client
            if isinstance(exc, (_Terminate, KeyboardInterrupt)):
                raise  # the worker is being stopped, not the task failing
            return self._reply_error(chan, task_id, start, "task unpickling in the worker", exc)
        if not self.is_initialized:
            return self._refuse(chan, task_id)
        try:
            if type(task) is tuple:
                result = self.task_processor(*task)
            else:
                result = self.task_processor(task)
        except BaseException as exc:  # ship any failure to the client
            if isinstance(exc, (_Terminate, KeyboardInterrupt)):
                raise  # the worker is being stopped, not the task failing
            return self._reply_error(chan, task_id, start, "task", exc)
        try:
            chan.push(KIND_RESULT, task_id, time.perf_counter_ns() - start, result)
        except Exception as exc:
            self._reply_error(chan, task_id, start, "result pickling in the worker", exc)

    def _run_chunk(self, chan, task_id, count, body, buffers) -> None:
        start = time.perf_counter_ns()
        try:
            tasks = pickle.loads(body, buffers=buffers)
            if type(tasks) is not list or len(tasks) != count:
                raise ProtocolError(f"a chunk of {count} tasks held {type(tasks).__name__}")
        except BaseException as exc:  # the pool then sends these tasks one by one
            if isinstance(exc, (_Terminate, KeyboardInterrupt)):
                raise
            return self._reply_error(chan, task_id, start, "task unpickling in the worker", exc)
        if not self.is_initialized:
            return self._refuse(chan, task_id)
        progress = self.progress
        if progress is not None:
            progress[1] = -1         # no position yet: a death now blames none
            progress[0] = task_id
        fn = self.task_processor
        # (callable, *args) under the built-in worker: one Python call, not
        # two. run_chunk moves the position along the page, and past the
        # last task at the end: a death then blames none.
        results, errors = run_chunk(tasks, fn, fn is _call, progress, _task_error_body,
                                    (_Terminate, KeyboardInterrupt))
        elapsed = time.perf_counter_ns() - start
        try:
            chan.push(KIND_RESULT, task_id, elapsed, (results, errors))
            return
        except Exception:
            pass
        # Some result cannot be pickled: find which, and report those.
        for i, result in enumerate(results):
            try:
                pickle.dumps(result, 5, buffer_callback=_drop)
            except Exception as exc:
                if errors is None:
                    errors = {}
                errors[i] = _error_body("result pickling in the worker", exc)
                results[i] = None
        try:
            chan.push(KIND_RESULT, task_id, elapsed, (results, errors))
        except Exception as exc:
            # Each result pickles, but together they are over max_frame: the
            # pool sends these tasks again one by one.
            self._reply_error(chan, task_id, start, "chunk reply in the worker", exc)

    def _run_initializer(self, chan, task_id, body, buffers) -> None:
        start = time.perf_counter_ns()
        try:
            init_data = pickle.loads(body, buffers=buffers)
        except BaseException as exc:  # ship any failure to the client
            if isinstance(exc, (_Terminate, KeyboardInterrupt)):
                raise  # the worker is being stopped, not the task failing
            self.is_initialized = False
            return self._reply_error(chan, task_id, start, "init_data unpickling in the worker", exc)
        try:
            # None: no init data. Nothing to call, but it clears the state of
            # an earlier failed initializer (the pool sends it before a task
            # of a requestor without init_data).
            if self.initializer is not None and init_data is not None:
                if type(init_data) is tuple:
                    self.initializer(*init_data)
                else:
                    self.initializer(init_data)
        except BaseException as exc:  # ship any failure to the client
            if isinstance(exc, (_Terminate, KeyboardInterrupt)):
                raise  # the worker is being stopped, not the task failing
            self.is_initialized = False
            return self._reply_error(chan, task_id, start, "initializer", exc)
        self.is_initialized = True
        chan.push(KIND_RESULT, task_id, time.perf_counter_ns() - start, None)

    def _refuse(self, chan, task_id) -> None:
        exc = RuntimeError("the worker's initializer failed; it runs no task "
                           "until a later initialize succeeds")
        chan.push(KIND_ERROR, task_id, REFUSED_AUX, _error_body("initializer", exc))

    def _reply_error(self, chan, task_id, start, phase, exc) -> None:
        chan.push(KIND_ERROR, task_id, time.perf_counter_ns() - start,
                  _error_body(phase, exc))


def _raise_terminate(signum, frame):
    raise _Terminate()


def _drop(buffer) -> None:
    """A buffer_callback that keeps an array out of a trial pickle."""


def _map_progress_page():
    fd = int(os.environ.pop("SWARM_PROGRESS_FD", "-1"))
    if fd < 0:
        return None
    try:
        page = mmap.mmap(fd, PROGRESS_SIZE)
    finally:
        os.close(fd)
    return memoryview(page).cast("q")


# ---------------------------------------------------------------- built-in

def _task_error_body(exc: BaseException) -> Any:
    return _error_body("task", exc)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Task processor of the built-in worker: a task is (callable, *args)."""
    return fn(*args)


def _builtin_initializer(*init_data: Any) -> None:
    """The built-in worker's initializer: init_data is (callable, *args), or ()."""
    if init_data:
        init_data[0](*init_data[1:])


class _LazyMain(types.ModuleType):
    """Stands in for ``__main__`` in the built-in worker.

    A function defined in the client's main script pickles as
    ``__main__.name``. The first such look-up runs that script here under
    the name ``__swarm_main__`` (its ``if __name__ == "__main__":`` block
    stays off, as with multiprocessing's spawn) and serves names from it.
    Workers whose tasks never need it never pay for it.
    """

    def __init__(self, path: str, module_name: str) -> None:
        super().__init__("__main__")
        self._swarm_main_path = path
        self._swarm_main_module = module_name
        self._swarm_real = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_swarm_") or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)  # module dunders never load the script
        if self._swarm_real is None:
            self._swarm_real = _load_client_main(self._swarm_main_path,
                                                 self._swarm_main_module)
        return getattr(self._swarm_real, name)


def _load_client_main(path: str, module_name: str) -> types.ModuleType:
    import importlib.util
    if module_name:
        spec = importlib.util.find_spec(module_name)
    else:
        spec = importlib.util.spec_from_file_location("__swarm_main__", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the client's main module {module_name or path}")
    module = importlib.util.module_from_spec(spec)
    module.__name__ = "__swarm_main__"
    sys.modules["__swarm_main__"] = module
    # A Pool created by the script now would start workers recursively:
    # Pool() checks this flag and refuses.
    os.environ["SWARM_LOADING_MAIN"] = "1"
    try:
        spec.loader.exec_module(module)
    finally:
        del os.environ["SWARM_LOADING_MAIN"]
    return module


def _main() -> None:
    # The pool's bootstrap set sys.path to the client's, so functions pickled
    # by reference (module + name) resolve as they do in the client.
    main_path = os.environ.get("SWARM_MAIN_PATH", "")
    main_module = os.environ.get("SWARM_MAIN_MODULE", "")
    if main_path or main_module:
        sys.modules["__main__"] = _LazyMain(main_path, main_module)
    run(task_processor=_call, initializer=_builtin_initializer)


if __name__ == "__main__":
    _main()
