"""Shared fixtures. The autouse `no_leaks` fixture is the project's habit:
every test must leave no child process, no open fd and no socket file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

# Every test run gets its own private run dir, so that socket files left by
# a test are ours to see (and no user session's run dir is touched).
_RUN_DIR = tempfile.mkdtemp(prefix="swarm-test-run-")
os.chmod(_RUN_DIR, 0o700)
os.environ["SWARM_RUN_DIR"] = _RUN_DIR

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_sessionfinish(session, exitstatus):
    """The run dir is this session's own: it goes with the session."""
    shutil.rmtree(_RUN_DIR, ignore_errors=True)
# How long a test may take to reap what it started before it is a leak.
REAP_S = 10.0


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[1].decode() == me and fields[0] not in (b"Z", b"X"):
            found.add(int(entry))
    return found


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _socket_files() -> set[str]:
    return set(os.listdir(_RUN_DIR))


def _count_pipes(fds: set[int]) -> int:
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return count


def _tcp_inodes() -> set[str]:
    """Inodes of this process's TCP sockets (a Dask client's connections)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                inodes.update(line.split()[9] for line in f)
        except (OSError, StopIteration):
            pass
    return inodes


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail the test if a child process, fd or socket file outlives it.

    With the session's Dask cluster in use, TCP sockets are the Dask
    client's own (it opens connections to workers lazily and keeps them
    pooled): they are not counted; swarm itself uses only AF_UNIX."""
    callspec = getattr(request.node, "callspec", None)
    on_dask = "dask_client" in request.fixturenames or (
        callspec is not None and callspec.params.get("pool_backend") == "dask")
    if on_dask:
        request.getfixturevalue("dask_client")  # the session's cluster predates the test
    children, fds, files = _children(), _open_fds(), _socket_files()
    pipes = _count_pipes(fds)
    yield
    cluster_up = _dask_cluster is not None
    deadline = time.monotonic() + REAP_S
    while time.monotonic() < deadline:
        extra_children = _children() - children - _dask_nannies()
        extra_files = _socket_files() - files
        if not extra_children and not extra_files:
            break
        time.sleep(0.05)
    names = {}
    for fd in _open_fds() - fds:
        try:
            names[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass  # the fd that listed /proc/self/fd, closed since
    extra_fds = {fd: name for fd, name in names.items() if not name.startswith("/dev/")}
    if cluster_up and extra_fds:
        # While the session's cluster runs, its in-process scheduler works
        # on threads of its own, in any test: its TCP connections and the
        # /proc files its system monitor (psutil) reads are not ours.
        tcp = {f"socket:[{inode}]" for inode in _tcp_inodes()}
        extra_fds = {fd: name for fd, name in extra_fds.items()
                     if name not in tcp and not name.startswith("/proc/")}
    if on_dask and extra_fds:
        # A nanny that restarted a killed Dask worker holds new pipes to it
        # and closed the old ones: in a Dask test, pipes count by number.
        if _count_pipes(_open_fds()) <= pipes:
            extra_fds = {fd: name for fd, name in extra_fds.items()
                         if not name.startswith("pipe:")}
    leftovers = []
    if extra_children:
        leftovers.append(f"child processes {sorted(extra_children)}")
    if extra_files:
        leftovers.append(f"socket files {sorted(extra_files)}")
    if extra_fds:
        leftovers.append(f"open fds {extra_fds}")
    assert not leftovers, "test leaked " + "; ".join(leftovers)


@pytest.fixture
def run_dir() -> str:
    """The private run dir this test session's workers listen in."""
    return _RUN_DIR


class WorkerProcess:
    """A worker script started as a real process, stopped on exit."""

    def __init__(self, source: str, tmp_path) -> None:
        script = tmp_path / "worker_script.py"
        script.write_text(textwrap.dedent(source))
        self.script = str(script)
        self.proc = subprocess.Popen([sys.executable, self.script],
                                     stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.socket_path = os.path.join(_RUN_DIR, f"{self.pid}.sock")
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode()
                raise RuntimeError(f"worker script exited early:\n{err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("worker did not open its socket in 20 s")
            time.sleep(0.01)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stderr.close()
        return code


ECHO_WORKER = """
    from swarm.worker import run

    class Processor:
        def __init__(self):
            self.offset = 0

        def initialize(self, offset=0):
            if isinstance(offset, str) and offset == "fail":
                raise RuntimeError("initializer refused")
            self.offset = offset

        def __call__(self, x=None, *rest):
            if isinstance(x, str) and x == "raise":
                raise ValueError("task asked to fail")
            if isinstance(x, str) and x == "unpicklable":
                return lambda: None
            if rest:
                return (x,) + rest
            if isinstance(x, int) and not isinstance(x, bool):
                return x + self.offset
            return x

    if __name__ == "__main__":
        processor = Processor()
        run(task_processor=processor, initializer=processor.initialize)
"""


@pytest.fixture
def echo_worker(tmp_path):
    """An echo worker script as a live process (ints get the init offset)."""
    worker = WorkerProcess(ECHO_WORKER, tmp_path)
    yield worker
    worker.stop()


@pytest.fixture
def make_worker(tmp_path):
    """Start a worker from script source; every one is stopped afterwards."""
    started = []

    def make(source: str) -> WorkerProcess:
        sub = tmp_path / f"w{len(started)}"
        sub.mkdir()
        worker = WorkerProcess(source, sub)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


# ---------------------------------------------------------------- Dask

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "both_backends: run the test on the local pool and on the Dask backend")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("both_backends") is not None:
        metafunc.fixturenames.append("pool_backend")
        metafunc.parametrize("pool_backend", ["local", "dask"], indirect=True)


@pytest.fixture(scope="session")
def dask_client():
    """A Client of a real LocalCluster (2 worker processes, one thread each,
    on 127.0.0.1), shared by the session's Dask tests. Dask's own retry
    bound is 0, so that a worker death reaches swarm's. At the end of the
    session no scheduler connection or worker process may be left."""
    distributed = pytest.importorskip("distributed")
    import dask
    with dask.config.set(DASK_CONFIG):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None)
    client = distributed.Client(cluster)
    global _dask_cluster
    _dask_cluster = cluster
    try:
        yield client
    finally:
        nannies = _dask_nannies()
        client.close()
        cluster.close(timeout=20)
        _dask_cluster = None
        deadline = time.monotonic() + REAP_S
        while time.monotonic() < deadline and nannies & _children():
            time.sleep(0.05)
        left = nannies & _children()
        assert not left, f"Dask worker processes left after the cluster closed: {sorted(left)}"


_dask_cluster = None   # the session's LocalCluster while it runs
# Retries are swarm's alone (allowed-failures 0), and a Dask worker holds
# one task at a time (worker-saturation 1.0): a task queued behind one that
# kills its worker would otherwise fail with it, never having run.
DASK_CONFIG = {"distributed.scheduler.allowed-failures": 0,
               "distributed.scheduler.worker-saturation": 1.0}


def _dask_nannies() -> set[int]:
    """Pids of the session cluster's worker processes (our children)."""
    if _dask_cluster is None:
        return set()
    pids = set()
    for worker in list(_dask_cluster.workers.values()):
        pid = getattr(getattr(worker, "process", None), "pid", None)
        if pid is not None:
            pids.add(pid)
    return pids


@pytest.fixture
def pool_backend(request, monkeypatch):
    """"local" or "dask": with "dask", every Pool the test creates without
    a backend runs on the session's LocalCluster (the test is unchanged)."""
    if request.param == "dask":
        client = request.getfixturevalue("dask_client")
        from swarm.client import Pool
        from swarm.dask_backend import DaskBackend
        original = Pool.__init__

        def on_dask(self, *args, backend=None, **kwargs):
            if backend is None:
                # The shared cluster keeps its size (tests/test_dask_backend.py
                # scales a cluster of its own).
                backend = DaskBackend(client, scale=False)
            original(self, *args, backend=backend, **kwargs)

        monkeypatch.setattr(Pool, "__init__", on_dask)
    return request.param
