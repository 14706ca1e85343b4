"""Security: worker sockets live only in a private run dir (0700, owned by
the user), whatever the umask; a run dir that is shared, foreign or not a
directory is refused, never trusted; peers of another uid get nothing run."""

import os
import pathlib
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from swarm import SwarmError
from swarm._core.frame import KIND_TASK, pack_header

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")


@pytest.fixture
def open_base():
    """A folder anyone may walk through (pytest's tmp_path sits under a 0700
    folder, which would deny other users for the wrong reason)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="swarm-sec-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)

WORKER = """
    import os
    from swarm.worker import run
    if __name__ == "__main__":
        run(task_processor=lambda *a: open({marker!r}, "w").write("ran"))
"""


def _start_worker(tmp_path, run_dir, umask):
    marker = tmp_path / "ran"
    script = tmp_path / "w.py"
    script.write_text(textwrap.dedent(WORKER.format(marker=str(marker))))
    env = dict(os.environ, SWARM_RUN_DIR=str(run_dir))
    proc = subprocess.Popen([sys.executable, str(script)], env=env,
                            preexec_fn=lambda: os.umask(umask))
    path = run_dir / f"{proc.pid}.sock"
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    return proc, path, marker


def _as_nobody(path):
    """Fork, drop to uid nobody, try to get a task run; return what happened."""
    body = pickle.dumps((), 5)
    frame = pack_header(KIND_TASK, 0, 0, len(body)) + body
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(5)
            try:
                sock.connect(str(path))
                sock.sendall(frame)
                outcome = b"answered" if sock.recv(32) else b"hung-up"
            except PermissionError:
                outcome = b"denied"
            except OSError:
                outcome = b"hung-up"
            os.write(w, outcome)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


@needs_root
@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_another_user_cannot_reach_a_worker_whatever_the_umask(open_base, umask):
    run_dir = open_base / "run"         # created by the worker, under its umask
    proc, path, marker = _start_worker(open_base, run_dir, umask)
    try:
        assert os.stat(run_dir).st_mode & 0o777 == 0o700
        assert _as_nobody(path) == "denied"
        assert not marker.exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_root
def test_with_the_run_dir_opened_up_the_worker_still_refuses_another_uid(open_base):
    # Defence in depth: even if the run dir's protection is lost, the worker
    # checks SO_PEERCRED and hangs up before reading a byte.
    run_dir = open_base / "run"
    proc, path, marker = _start_worker(open_base, run_dir, 0o022)
    try:
        os.chmod(run_dir, 0o755)
        os.chmod(path, 0o777)
        assert _as_nobody(path) == "hung-up"
        assert not marker.exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_root
def test_pool_workers_are_out_of_reach_of_another_user(open_base, monkeypatch):
    from swarm.client import Pool
    run_dir = open_base / "run"
    monkeypatch.setenv("SWARM_RUN_DIR", str(run_dir))
    old = os.umask(0)
    try:
        with Pool(workers=1) as pool:
            path = run_dir / f"{pool.pids[0]}.sock"
            assert _as_nobody(path) == "denied"
    finally:
        os.umask(old)


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701])
def test_a_run_dir_open_to_others_is_refused(tmp_path, monkeypatch, mode):
    from swarm.client import Pool
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    monkeypatch.setenv("SWARM_RUN_DIR", str(shared))
    with pytest.raises(SwarmError, match="must be private"):
        Pool(workers=1)


@needs_root
def test_a_run_dir_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    from swarm.client import Pool
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    monkeypatch.setenv("SWARM_RUN_DIR", str(foreign))
    with pytest.raises(SwarmError, match="belongs to uid 65534"):
        Pool(workers=1)


def test_a_run_dir_that_is_a_symlink_is_refused(tmp_path, monkeypatch):
    from swarm.client import Pool
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv("SWARM_RUN_DIR", str(link))
    with pytest.raises(SwarmError, match="not a directory"):
        Pool(workers=1)


def test_stale_socket_files_of_dead_processes_are_removed(tmp_path, monkeypatch):
    from swarm.client import Pool
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run_dir / f"{dead.pid}.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale))
    listener.close()
    monkeypatch.setenv("SWARM_RUN_DIR", str(run_dir))
    with Pool(workers=1):
        assert not stale.exists()


def test_sockets_are_files_in_the_run_dir_not_abstract(echo_worker, run_dir):
    # An abstract-namespace socket has no file and no permissions to check.
    assert os.path.exists(echo_worker.socket_path)
    assert echo_worker.socket_path.startswith(run_dir + os.sep)
