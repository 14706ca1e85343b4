"""pool.executor(): a concurrent.futures.Executor backed by the pool, so
code written for ProcessPoolExecutor (submit, map, wait, as_completed,
shutdown) runs on swarm unchanged. Modeled on CPython's executor tests."""

import concurrent.futures as cf
import time

import pytest

import _tasks
from swarm import TaskError
from swarm.client import BatchManager, Pool
from swarm.executor import SwarmExecutor


@pytest.fixture
def pool():
    with Pool(workers=2) as pool:
        yield pool


def test_submit_returns_a_future_with_the_result(pool):
    with pool.executor() as executor:
        future = executor.submit(pow, 2, 8)
        assert future.result(timeout=30) == 256


def test_submit_with_keyword_arguments(pool):
    with pool.executor() as executor:
        assert executor.submit(int, "ff", base=16).result(timeout=30) == 255


def test_exception_is_set_on_the_future(pool):
    with pool.executor() as executor:
        future = executor.submit(_tasks.fail_if, 1, {1})
        with pytest.raises(TaskError, match="task 1 is bad"):
            future.result(timeout=30)
        assert isinstance(future.exception().exception, ValueError)


def test_map_keeps_order_with_and_without_chunks(pool):
    with pool.executor() as executor:
        assert list(executor.map(_tasks.square, range(50))) == [i * i for i in range(50)]
        assert list(executor.map(pow, range(30), [2] * 30, chunksize=7)) == \
            [i * i for i in range(30)]


def test_map_timeout_raises(pool):
    with pool.executor() as executor:
        results = executor.map(_tasks.sleep_then, [1], timeout=0.2)
        with pytest.raises(cf.TimeoutError):
            list(results)


def test_wait_and_as_completed(pool):
    with pool.executor() as executor:
        futures = [executor.submit(_tasks.sleep_then, 0.05 * (3 - i), i) for i in range(3)]
        done, not_done = cf.wait(futures, timeout=30)
        assert len(done) == 3 and not not_done
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [0, 1, 2]


def test_first_exception_wakes_wait(pool):
    with pool.executor() as executor:
        futures = [executor.submit(_tasks.sleep_then, 1), executor.submit(_tasks.fail_if, 1, {1})]
        done, _ = cf.wait(futures, timeout=30, return_when=cf.FIRST_EXCEPTION)
        assert futures[1] in done


def test_cancel_a_queued_future_and_it_never_runs(pool):
    with pool.executor() as executor:
        busy = [executor.submit(_tasks.sleep_then, 0.3, i) for i in range(4)]
        queued = executor.submit(_tasks.whoami, "cancelled")
        assert queued.cancel()
        assert queued.cancelled()
        assert [f.result(timeout=30) for f in busy] == [0, 1, 2, 3]
        with pytest.raises(cf.CancelledError):
            queued.result()


def test_a_running_future_cannot_be_cancelled(pool):
    with pool.executor() as executor:
        future = executor.submit(_tasks.sleep_then, 0.5, "done")
        time.sleep(0.2)
        assert not future.cancel()
        assert future.result(timeout=30) == "done"


def test_shutdown_waits_for_running_work(pool):
    executor = pool.executor()
    futures = [executor.submit(_tasks.sleep_then, 0.1, i) for i in range(4)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 2)
    # The pool itself is still open.
    assert BatchManager(pool, [(_tasks.square, 3)]).batch.list_results() == [9]


def test_shutdown_with_cancel_futures_cancels_the_queue(pool):
    executor = pool.executor()
    futures = [executor.submit(_tasks.sleep_then, 0.2, i) for i in range(20)]
    time.sleep(0.05)
    executor.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in futures)
    assert all(f.done() for f in futures)
    assert all(f.result() == i for i, f in enumerate(futures) if not f.cancelled())


def test_closing_the_pool_fails_outstanding_futures():
    pool = Pool(workers=1)
    executor = pool.executor()
    future = executor.submit(_tasks.sleep_then, 30)
    time.sleep(0.1)
    pool.close()
    with pytest.raises(Exception, match="closed"):
        future.result(timeout=10)


def test_an_owned_pool_is_closed_with_the_executor():
    executor = SwarmExecutor(Pool(workers=1), own_pool=True)
    assert executor.submit(abs, -3).result(timeout=30) == 3
    executor.shutdown()


def test_executor_needs_the_built_in_worker(tmp_path):
    script = tmp_path / "w.py"
    script.write_text("from swarm.worker import run\nrun(task_processor=abs)\n")
    with Pool(str(script), workers=1) as pool:
        with pytest.raises(ValueError, match="built-in worker"):
            pool.executor()
