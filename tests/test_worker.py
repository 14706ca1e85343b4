"""The worker process: ``swarm.worker.run(task_processor, initializer)``.

It listens on ``<run dir>/<pid>.sock``, serves frames, survives malformed
input from one peer, refuses other users, and removes its socket file on
the way out.
"""

import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from swarm import Socket
from swarm._core.frame import KIND_TASK, pack_header


def _raw_connection(worker):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(worker.socket_path)
    return sock


def _assert_closed_by_worker(sock):
    """The worker hangs up on a peer that sent garbage (EOF, not a hang)."""
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()


def _assert_still_serving(worker):
    with Socket(worker.pid) as client:
        client.connect()
        assert client.do_task([1, (2,)]) == (1, 2)


def test_socket_file_lives_in_the_private_run_dir(echo_worker, run_dir):
    assert os.path.dirname(echo_worker.socket_path) == run_dir
    assert os.stat(run_dir).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\n\r\n" + b"x" * 40,                       # not swarm at all
    struct.pack("<IBBHII", 0x4D525753, 9, 2, 0, 0, 10) + bytes(16),  # wrong version
    pack_header(KIND_TASK, 0, 0, 0xFFFFFFFF),                     # 4 GiB body claimed
    pack_header(KIND_TASK, 0, 0, 10, [2**62]),                     # huge buffer claimed
    pack_header(77, 0, 0, 0),                                      # unknown kind
], ids=["garbage", "wrong-version", "huge-body", "huge-buffer", "unknown-kind"])
def test_malformed_frame_closes_that_connection_and_worker_serves_on(echo_worker, garbage):
    sock = _raw_connection(echo_worker)
    sock.sendall(garbage)
    _assert_closed_by_worker(sock)
    _assert_still_serving(echo_worker)


def test_truncated_frame_is_dropped_and_worker_serves_on(echo_worker):
    body = pickle.dumps((1,), 5)
    sock = _raw_connection(echo_worker)
    sock.sendall(pack_header(KIND_TASK, 0, 0, len(body))[:20])
    sock.close()  # hang up inside the header
    sock = _raw_connection(echo_worker)
    sock.sendall(pack_header(KIND_TASK, 0, 0, len(body)) + body[:3])
    sock.close()  # hang up inside the body
    _assert_still_serving(echo_worker)


def test_body_that_is_not_a_pickle_is_a_task_error_not_a_crash(echo_worker):
    sock = _raw_connection(echo_worker)
    sock.sendall(pack_header(KIND_TASK, 5, 0, 4) + b"\x00\x01\x02\x03")
    header = sock.recv(32, socket.MSG_WAITALL)
    assert len(header) == 32
    sock.close()
    _assert_still_serving(echo_worker)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_socket_file_is_removed_on_signal(echo_worker, signum):
    path = echo_worker.socket_path
    assert os.path.exists(path)
    os.kill(echo_worker.pid, signum)
    assert echo_worker.proc.wait(timeout=10) == 0
    assert not os.path.exists(path)


def test_stale_socket_file_at_the_workers_path_is_replaced(tmp_path, run_dir):
    # A dead process left <pid>.sock; a new worker with that pid must not be
    # stopped by it. We cannot choose a pid, so plant the file for a pid we
    # are about to get: start the worker stopped, plant, then continue.
    script = tmp_path / "w.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n"
                      "from swarm.worker import run\nrun(task_processor=abs)\n")
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 10
        while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        path = os.path.join(run_dir, f"{proc.pid}.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        os.kill(proc.pid, signal.SIGCONT)
        with Socket(proc.pid) as client:
            client.connect(timeout=10)
            assert client.do_task([0, (-4,)]) == (0, 4)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not os.path.exists(path)
