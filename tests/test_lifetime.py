"""Lifetime: workers die with the process that started them, also when it
is SIGKILLed (PR_SET_PDEATHSIG, a parent check, and the socket's EOF), and
what a worker prints never corrupts the protocol."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from swarm.client import BatchManager, Pool

DOOMED_CLIENT = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
import _tasks
from swarm.client import Pool, Sprint
pool = Pool(workers=3)
sprint = pool.submit_sprint(Sprint())
sprint.submit_tasks([(_tasks.sleep_then, 60), (_tasks.spin, 60)])  # one sleeping, one computing
time.sleep(0.5)                                                     # the third stays idle
print(" ".join(map(str, pool.pids)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_workers_die_when_their_client_is_sigkilled(tmp_path, run_dir):
    code = DOOMED_CLIENT.format(tests=os.path.dirname(__file__))
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True, cwd=tmp_path) as client:
        pids = [int(p) for p in client.stdout.readline().split()]
        assert client.wait(timeout=30) == -signal.SIGKILL
    assert len(pids) == 3
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if _alive(pid)] == []
    # They removed their own socket files on the way out.
    assert not [name for name in os.listdir(run_dir) if int(name.split(".")[0]) in pids]


CHATTY_WORKER = """
    import sys
    from swarm.worker import run

    def task(i):
        print(f"stdout line for task {i}", flush=True)
        print(f"stderr line for task {i}" * 50, file=sys.stderr, flush=True)
        sys.stdout.write("\\x00SWRM not a frame\\n")
        return i * 2

    if __name__ == "__main__":
        print("worker starting up", flush=True)
        run(task_processor=task)
"""


def test_a_chatty_worker_does_not_corrupt_results(tmp_path, capfd):
    script = tmp_path / "chatty.py"
    script.write_text(textwrap.dedent(CHATTY_WORKER))
    with Pool(str(script), workers=2) as pool:
        results = BatchManager(pool, list(range(200))).batch.list_results()
    assert results == [2 * i for i in range(200)]
    out, err = capfd.readouterr()
    assert "stdout line for task 199" in out
    assert "stderr line for task 7" in err


def test_worker_stderr_is_in_the_error_when_a_worker_dies(tmp_path):
    script = tmp_path / "dying.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from swarm.worker import run

        def task(x):
            print("about to fail hard: bad sensor data", file=sys.stderr, flush=True)
            os._exit(9)

        if __name__ == "__main__":
            run(task_processor=task)
    """))
    with Pool(str(script), workers=1, max_retries=0) as pool:
        [error] = BatchManager(pool, [1]).batch.list_results(return_exceptions=True)
    assert error.phase == "worker died" and "exited with code 9" in str(error)


THREADED_WORKER = """
    import threading, time
    from swarm.worker import run

    def task(kind):
        # Libraries start threads of their own (OpenBLAS does on numpy's
        # import); a signal sent to the process may land on any of them.
        started = threading.Event()
        tid = []
        def sleeper():
            tid.append(threading.get_native_id())
            started.set()
            while True:
                time.sleep(60)
        threading.Thread(target=sleeper, daemon=True).start()
        started.wait()
        return tid[0]

    if __name__ == "__main__":
        run(task_processor=task)
"""

_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}


def _tgkill(pid, tid, sig):
    import ctypes
    import platform
    number = _SYS_TGKILL.get(platform.machine())
    if number is None:
        pytest.skip("tgkill's syscall number is not known on this machine")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


@pytest.mark.parametrize("clients", [0, 1])
def test_sigterm_delivered_to_another_thread_stops_an_idle_worker(make_worker, clients):
    # Linux hands a process-directed signal to any thread that does not
    # block it; the main thread then sleeps on in poll or recv unless
    # the worker wakes itself up. Deliver it to the other thread on purpose.
    from swarm.client import Socket
    worker = make_worker(THREADED_WORKER)
    sock = Socket(worker.pid)
    sock.connect()
    _, tid = sock.do_task((0, ("thread",)))
    assert tid != worker.pid
    if clients == 0:
        sock.close()   # idle with no client: waiting on the listener only
        time.sleep(0.2)
    try:
        _tgkill(worker.pid, tid, signal.SIGTERM)
        worker.proc.wait(timeout=5)
    finally:
        sock.close()
    assert not os.path.exists(worker.socket_path)
