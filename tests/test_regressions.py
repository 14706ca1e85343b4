"""Regression tests for bugs found in review; each says which bug it pins.
Every one of these once crashed the pool, hung a caller or failed tasks
that had done nothing wrong."""

import os
import signal
import textwrap
import threading
import time

import numpy as np
import pytest

import _tasks
from swarm import Socket, TaskError, WorkerDied
from swarm.client import BatchManager, Pool, Sprint


def test_oversize_task_fails_alone_and_the_pool_serves_on():
    # Bug: the pool's max_frame did not reach the workers; a frame the pool
    # sent but the worker refused dropped the connection while _dispatch was
    # iterating the worker dict, and the I/O thread died.
    with Pool(workers=2, max_frame=1 << 20) as pool:
        tasks = [(_tasks.echo, i) for i in range(6)]
        tasks[2] = (_tasks.echo, np.zeros(1 << 18))  # 2 MiB
        results = BatchManager(pool, tasks).batch.list_results(return_exceptions=True)
        assert results[2].phase == "task pickling in the client"
        assert "frame limit" in str(results[2])
        assert [r for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4, 5]


def test_oversize_result_fails_alone():
    with Pool(workers=1, max_frame=1 << 20) as pool:
        results = BatchManager(pool, [(np.zeros, 1 << 18), (_tasks.echo, 1)]).batch \
            .list_results(return_exceptions=True)
    assert results[0].phase == "result pickling in the worker"
    assert results[1] == 1


def test_unpicklable_init_data_is_refused_at_submit():
    # Bug: it raised inside the I/O thread, which died and lost the task.
    with Pool(workers=1) as pool:
        with pytest.raises(TypeError, match="init_data cannot be pickled"):
            pool.submit_sprint(Sprint(init_data=(print, lambda: 0)))
        with pytest.raises(TypeError, match="init_data cannot be pickled"):
            BatchManager(pool, [1], init_data=(lambda: 0,)).batch.start()
        assert BatchManager(pool, [(_tasks.square, 3)]).batch.list_results() == [9]


def test_another_requestors_failed_initializer_does_not_fail_my_tasks():
    # Bug: tasks of a requestor without init_data, queued on a worker behind
    # another requestor's initializer that then failed, were refused and
    # failed for good.
    with Pool(workers=2) as pool:
        for _ in range(3):
            bad = BatchManager(pool, [(_tasks.square, i) for i in range(20)],
                               init_data=(_tasks.failing_init, "X")).batch
            good = BatchManager(pool, [(_tasks.square, i) for i in range(20)]).batch
            bad.start()
            good.start()
            assert good.list_results() == [i * i for i in range(20)]
            assert all(isinstance(r, TaskError)
                       for r in bad.list_results(return_exceptions=True))


BREAKABLE_WORKER = """
    import os, sys
    if os.path.exists({marker!r}):
        sys.exit("this worker cannot start any more")
    from swarm.worker import run
    if __name__ == "__main__":
        run(task_processor=lambda x: x)
"""


def test_when_no_worker_can_start_queued_tasks_fail_instead_of_hanging(tmp_path):
    # Bug: replacements that died before they were ready were not counted;
    # with none left, list_results() waited forever.
    marker = tmp_path / "broken"
    script = tmp_path / "breakable.py"
    script.write_text(textwrap.dedent(BREAKABLE_WORKER.format(marker=str(marker))))
    with Pool(str(script), workers=2) as pool:
        assert BatchManager(pool, [1, 2]).batch.list_results() == [1, 2]
        marker.touch()
        for pid in pool.pids:
            os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        results = BatchManager(pool, [3, 4, 5]).batch.list_results(return_exceptions=True,
                                                                  timeout=30)
        assert time.monotonic() - start < 30
        assert all(isinstance(r, TaskError) for r in results)
        assert {r.phase for r in results} <= {"worker start", "worker died"}
        assert any("cannot start any more" in str(r) for r in results)


def test_workers_outlive_the_thread_that_created_the_pool():
    # Bug: PR_SET_PDEATHSIG fires when the spawning *thread* exits, and the
    # initial workers were spawned by the caller's thread.
    made = []
    creator = threading.Thread(target=lambda: made.append(Pool(workers=2)))
    creator.start()
    creator.join()
    pool = made[0]
    try:
        pids = pool.pids
        time.sleep(0.5)
        results = BatchManager(pool, [(_tasks.whoami, i) for i in range(20)]).batch \
            .list_results()
        assert {pid for pid, _ in results} <= set(pids)
        assert pool.pids == pids
    finally:
        pool.close()


def test_a_helper_holding_a_dead_workers_stderr_does_not_block_the_pool():
    # Bug: reaping a worker read its stderr until EOF, which never came
    # while a process the task started held the pipe.
    with Pool(workers=2, max_retries=0) as pool:
        tasks = [(_tasks.square, i) for i in range(10)]
        tasks[1] = (_tasks.spawn_helper_then_die, 3)
        start = time.monotonic()
        results = BatchManager(pool, tasks).batch.list_results(return_exceptions=True)
        assert results[1].phase == "worker died"
        assert time.monotonic() - start < 2.5
    # The helper exits on its own; wait for it so nothing is left behind.
    time.sleep(3.2)


def test_finished_sprints_are_released_by_the_pool():
    # Bug: every Sprint stayed in the pool's requestor table for good, so a
    # service making one per request leaked and slowed down.
    with Pool(workers=1) as pool:
        for i in range(200):
            sprint = pool.submit_sprint(Sprint())
            sprint.submit_tasks([(_tasks.square, i)])
            assert list(sprint.yield_results(timeout=10)) == [(0, i * i)]
        time.sleep(0.1)
        assert len(pool._requestors) <= 1
        # A released sprint that submits again is taken back.
        sprint.submit_tasks([(_tasks.square, 2)])
        assert list(sprint.yield_results(timeout=10)) == [(1, 4)]


def test_ctrl_c_stops_a_hand_started_worker_even_during_a_task(make_worker):
    # Bug: KeyboardInterrupt inside a task was shipped to the client as the
    # task's error and the worker kept running.
    worker = make_worker("""
        import time
        from swarm.worker import run
        if __name__ == "__main__":
            run(task_processor=time.sleep)
    """)
    with Socket(worker.pid) as client:
        client.connect()
        threading.Timer(0.3, os.kill, (worker.pid, signal.SIGINT)).start()
        with pytest.raises(WorkerDied):
            client.do_task([0, (20,)])
    assert worker.proc.wait(timeout=10) == 0
    assert not os.path.exists(worker.socket_path)
