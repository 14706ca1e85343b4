"""Socket(pid): the low-level client, one worker process by its pid.

A worker script calls ``swarm.worker.run``; a client connects with
``Socket(pid).connect()``, optionally ``initialize(init_data)``, then sends
``do_task([task_id, task])`` and gets ``(task_id, result)`` back.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from swarm import (RemoteTraceback, Socket, SwarmError, TaskError, WorkerDied,
                   WorkerNotFound)


@pytest.mark.parametrize("task_id", [0, 7, -3, 2**70, "abc", ("batch", 3), None, 1.5])
def test_task_id_of_any_type_comes_back_unchanged(echo_worker, task_id):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        assert worker.do_task([task_id, (41,)]) == (task_id, 41)


def test_task_tuple_is_unpacked_and_non_tuple_is_one_argument(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        assert worker.do_task([0, ("a", "b", "c")]) == (0, ("a", "b", "c"))
        assert worker.do_task([1, [1, 2]]) == (1, [1, 2])
        assert worker.do_task([2, 5]) == (2, 5)


def test_initialize_passes_init_data_as_arguments(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        worker.initialize((100,))
        assert worker.do_task([0, (1,)]) == (0, 101)
        worker.initialize((0,))
        assert worker.do_task([1, (1,)]) == (1, 1)


def test_task_exception_carries_type_message_and_remote_traceback(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        with pytest.raises(TaskError) as info:
            worker.do_task([9, ("raise",)])
        err = info.value
        assert err.task_id == 9
        assert err.phase == "task"
        assert err.exc_type == "ValueError"
        assert isinstance(err.exception, ValueError)
        assert "task asked to fail" in str(err)
        assert "worker_script.py" in err.remote_traceback
        assert isinstance(err.__cause__, RemoteTraceback)
        # The worker goes on serving on the same connection.
        assert worker.do_task([10, (3,)]) == (10, 3)


def test_failing_initializer_is_reported_and_blocks_tasks_until_fixed(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        with pytest.raises(TaskError) as info:
            worker.initialize(("fail",))
        assert info.value.phase == "initializer"
        assert "initializer refused" in str(info.value)
        with pytest.raises(TaskError, match="initializer failed"):
            worker.do_task([0, (1,)])
        worker.initialize((5,))
        assert worker.do_task([1, (1,)]) == (1, 6)


def test_unpicklable_result_is_reported_not_a_dead_connection(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        with pytest.raises(TaskError) as info:
            worker.do_task([0, ("unpicklable",)])
        assert info.value.phase == "result pickling in the worker"
        assert worker.do_task([1, (2,)]) == (1, 2)


def test_unpicklable_task_fails_in_the_client_and_nothing_is_sent(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        with pytest.raises(TaskError) as info:
            worker.do_task([0, (lambda: 1,)])
        assert info.value.phase == "task pickling in the client"
        assert worker.do_task([1, (2,)]) == (1, 2)


def test_bad_do_task_argument_is_a_type_error(echo_worker):
    with Socket(echo_worker.pid) as worker:
        worker.connect()
        with pytest.raises(TypeError, match="task_id, task"):
            worker.do_task(5)


def test_do_task_before_connect_is_a_clear_error():
    with pytest.raises(SwarmError, match="connect"):
        Socket(os.getpid()).do_task([0, ()])


def test_pid_without_a_process_is_reported_at_once():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    start = time.monotonic()
    with pytest.raises(WorkerNotFound, match="does not exist"):
        Socket(proc.pid).connect(timeout=5)
    assert time.monotonic() - start < 2


def test_pid_that_is_not_a_worker_times_out_clearly():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(WorkerNotFound, match="is it a swarm worker"):
            Socket(proc.pid).connect(timeout=0.5)
    finally:
        proc.kill()
        proc.wait()


def test_stale_socket_file_of_a_dead_process_is_not_trusted(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    path = os.path.join(run_dir, f"{proc.pid}.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.close()  # leaves the file, with nobody listening
    try:
        with pytest.raises(WorkerNotFound, match="stale"):
            Socket(proc.pid).connect(timeout=1)
    finally:
        os.unlink(path)


def test_invalid_pid_is_a_value_error():
    for pid in (0, -1, "12", 1.0, True):
        with pytest.raises(ValueError):
            Socket(pid)


def test_worker_killed_during_a_task_raises_worker_died(make_worker):
    worker = make_worker("""
        import time
        from swarm.worker import run
        if __name__ == "__main__":
            run(task_processor=time.sleep)
    """)
    with Socket(worker.pid) as client:
        client.connect()
        killer = subprocess.Popen([sys.executable, "-c",
                                   f"import os, time; time.sleep(0.3); os.kill({worker.pid}, 9)"])
        start = time.monotonic()
        with pytest.raises(WorkerDied, match=f"worker {worker.pid}"):
            client.do_task([0, (30,)])
        assert time.monotonic() - start < 10
        killer.wait()
    assert worker.stop() == -signal.SIGKILL
    os.unlink(worker.socket_path)  # SIGKILL leaves the file: it is stale now


def test_worker_killed_before_a_task_raises_worker_died(echo_worker):
    with Socket(echo_worker.pid) as client:
        client.connect()
        assert client.do_task([0, (1,)]) == (0, 1)
        os.kill(echo_worker.pid, signal.SIGKILL)
        echo_worker.proc.wait()
        with pytest.raises(WorkerDied):
            client.do_task([1, (1,)])
    os.unlink(echo_worker.socket_path)


def test_do_task_timeout_raises_and_closes_the_connection(make_worker):
    worker = make_worker("""
        import time
        from swarm.worker import run
        if __name__ == "__main__":
            run(task_processor=time.sleep)
    """)
    client = Socket(worker.pid)
    client.connect()
    with pytest.raises(TimeoutError):
        client.do_task([0, (5,)], timeout=0.2)
    with pytest.raises(SwarmError, match="connect"):
        client.do_task([1, (0,)])
    client.close()
    client.close()  # closing twice is harmless


def test_two_clients_are_served_by_one_worker(echo_worker):
    with Socket(echo_worker.pid) as first, Socket(echo_worker.pid) as second:
        first.connect()
        second.connect()
        for i in range(20):
            assert first.do_task([i, (i,)]) == (i, i)
            assert second.do_task([i, (-i,)]) == (i, -i)


def test_a_second_client_is_served_while_the_first_keeps_the_worker_busy(echo_worker):
    # With one client the worker blocks in that client's recv (the fast
    # path); it must still let a newcomer in while that client is busy.
    import threading
    stop = threading.Event()
    with Socket(echo_worker.pid) as busy:
        busy.connect()

        def hammer():
            i = 0
            while not stop.is_set():
                assert busy.do_task([i, (i,)]) == (i, i)
                i += 1

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(0.3)
            start = time.monotonic()
            with Socket(echo_worker.pid) as newcomer:
                newcomer.connect()
                assert newcomer.do_task(["late", (7,)], timeout=5) == ("late", 7)
            assert time.monotonic() - start < 2
        finally:
            stop.set()
            thread.join()
