"""Where a pool's workers come from: the backend interface, and the local
backend (worker processes on this machine, reached over AF_UNIX).

A Pool keeps its scheduler — the common queue, requestor affinity,
per-requestor init, pipelining, retries and the tta estimator — and asks
its backend for workers. To the pool a worker is a *handle*:

- ``pid``: an id, unique within the pool (a process id for local workers);
- ``ready_fd``: a pipe that gets ``b"R"`` once the worker serves (EOF
  without it: it failed to start);
- ``connect() -> fd``: a connected stream speaking the worker protocol
  (see ``swarm.worker``: KIND_INIT, KIND_TASK for one task or a chunk,
  replies in send order); its EOF means the worker is gone, and the pool
  then charges the frame that was running and retries it within its bound;
- ``stderr``: a pipe of the worker's stderr, or None;
- ``progress``: the shared page a chunk's position is noted on, or None;
- ``poll()``, ``wait(timeout)`` (raises ``subprocess.TimeoutExpired``),
  ``terminate()``, ``kill()``: as ``subprocess.Popen``;
- ``describe_exit()``: how it ended, for error messages;
- ``release()``: remove what it leaves behind (a socket file).

A backend: ``attach(pool)`` when the pool starts, ``start_worker() ->
handle``, ``capacity()`` (workers it serves now: the pool's default size),
``is_local`` (whether /proc CPU readings of the handles' pids mean
anything) and ``detach()`` when the pool has stopped its workers.
``swarm.dask_backend.DaskBackend`` is the other implementation.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from swarm import _runtime

if TYPE_CHECKING:
    from swarm.client import Pool

__all__ = ["Backend", "LocalBackend"]

# Size of a worker's progress page (two int64; shared with swarm.worker).
PROGRESS_SIZE = 16


class Backend:
    """Base class of the places a Pool gets its workers from."""

    #: True when handle pids are processes of this machine (the pool then
    #: reads their CPU use from /proc before it grows).
    is_local = False

    def attach(self, pool: "Pool") -> None:
        """Called once, from Pool(), before any worker starts."""

    def start_worker(self):  # pragma: no cover - interface
        """Start one worker; return its handle (see the module docstring)."""
        raise NotImplementedError

    def capacity(self) -> int:  # pragma: no cover - interface
        """Workers this backend can run at once now (the default pool size)."""
        raise NotImplementedError

    def detach(self) -> None:
        """Called once the pool has stopped every worker."""


class LocalBackend(Backend):
    """Worker processes on this machine, reached over AF_UNIX (the default).

    Each worker runs the pool's script (or the built-in worker) as a child
    process listening on ``<run dir>/<pid>.sock``.
    """

    is_local = True

    def __init__(self) -> None:
        self._argv: List[str] = []
        self._env: Dict[str, str] = {}
        self._run_dir = ""

    def attach(self, pool: "Pool") -> None:
        if pool.script is not None:
            self._argv = [sys.executable, pool.script]
        else:
            # Not `-m swarm.worker`: that would import swarm from the
            # worker's cwd first (a source checkout shadows the install).
            self._argv = [sys.executable, "-c", _BUILTIN_BOOTSTRAP]
        self._run_dir = _runtime.run_dir()
        _runtime.remove_stale_sockets(self._run_dir)
        self._env = dict(os.environ, SWARM_PARENT_PID=str(os.getpid()),
                         SWARM_RUN_DIR=self._run_dir, SWARM_MAX_FRAME=str(pool.max_frame),
                         SWARM_SYS_PATH=os.pathsep.join(p or os.getcwd() for p in sys.path),
                         **_main_module_env())

    def capacity(self) -> int:
        return len(os.sched_getaffinity(0))

    def start_worker(self) -> "_Process":
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        progress, progress_fd = _new_progress_page()
        env = dict(self._env, SWARM_READY_FD=str(ready_w))
        pass_fds = [ready_w]
        if progress_fd >= 0:
            env["SWARM_PROGRESS_FD"] = str(progress_fd)
            pass_fds.append(progress_fd)
        try:
            proc = subprocess.Popen(self._argv, env=env, pass_fds=pass_fds,
                                    stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except BaseException:
            os.close(ready_r)
            if progress is not None:
                progress.close()
            raise
        finally:
            os.close(ready_w)
            if progress_fd >= 0:
                os.close(progress_fd)
        return _Process(proc, ready_r, progress, self._run_dir)


class _Process:
    """A local worker process: the handle LocalBackend gives the pool."""

    def __init__(self, proc: subprocess.Popen, ready_fd: int,
                 progress: Optional[mmap.mmap], run_dir: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.stderr = proc.stderr
        self.ready_fd = ready_fd
        # The page the worker notes its place in a chunk on: [frame id,
        # position] (see swarm.worker); None where memfd is missing.
        self.progress = progress
        self._path = _runtime.socket_path(proc.pid, run_dir)

    def connect(self) -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        return sock.detach()

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.proc.wait(timeout)

    def terminate(self) -> None:
        self.proc.terminate()

    def kill(self) -> None:
        self.proc.kill()

    def describe_exit(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "closed its connection"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"died ({name})"
        return f"exited with code {code}"

    def release(self) -> None:
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass


def _new_progress_page() -> Tuple[Optional[mmap.mmap], int]:
    """A worker's progress page (see _Process.progress) and the fd to pass
    it on; (None, -1) without memfd (not Linux)."""
    try:
        fd = os.memfd_create("swarm-progress", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None, -1
    try:
        os.ftruncate(fd, PROGRESS_SIZE)
        return mmap.mmap(fd, PROGRESS_SIZE), fd
    except BaseException:
        os.close(fd)
        raise


# The built-in worker's entry point: take the client's sys.path, exactly,
# before anything imports swarm, so the worker runs the same swarm and finds
# the same modules for functions pickled by reference.
_BUILTIN_BOOTSTRAP = (
    "import os, sys\n"
    "sys.path[:] = os.environ['SWARM_SYS_PATH'].split(os.pathsep)\n"
    "from swarm.worker import _main\n"
    "_main()\n")


def _main_module_env() -> Dict[str, str]:
    """Tell the built-in worker where the client's __main__ comes from, so
    functions defined there can be unpickled (see swarm.worker._LazyMain)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and not spec.name.startswith("swarm."):
        return {"SWARM_MAIN_MODULE": spec.name}
    path = getattr(main, "__file__", None)
    if path and path.endswith(".py") and os.path.isfile(path):
        return {"SWARM_MAIN_PATH": os.path.abspath(path)}
    return {}
