"""Errors in a pool: a failing task fails alone; a dying worker is replaced
and its task retried (a bounded number of times) or reported; a failing
initializer fails its requestor's tasks only. Never a hang, never a lost
or duplicated result."""

import textwrap

import pytest

import _tasks
from swarm import RemoteTraceback, TaskError
from swarm.client import BatchError, BatchManager, Pool, Sprint


@pytest.mark.both_backends
def test_failed_tasks_raise_a_batch_error_naming_them_with_results_reachable():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.fail_if, i, {2, 5}) for i in range(8)]).batch
        batch.start()
        with pytest.raises(BatchError) as info:
            batch.list_results()
    err = info.value
    assert list(err.errors) == [2, 5]
    assert "task ids [2, 5]" in str(err)
    assert all(isinstance(e.__cause__, RemoteTraceback) for e in err.errors.values())
    assert "task 2 is bad" in err.errors[2].remote_traceback
    assert [r for i, r in enumerate(err.results) if i not in (2, 5)] == [0, 1, 3, 4, 6, 7]


@pytest.mark.both_backends
def test_return_exceptions_puts_task_errors_in_their_slots():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.fail_if, i, {1}) for i in range(3)]).batch
        batch.start()
        results = batch.list_results(return_exceptions=True)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], TaskError) and isinstance(results[1].exception, ValueError)


@pytest.mark.both_backends
def test_ordered_stream_raises_at_the_failed_position():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.fail_if, i, {3}) for i in range(6)]).batch
        got = []
        with pytest.raises(TaskError, match="task 3"):
            for value in batch.yield_results():
                got.append(value)
        assert got == [0, 1, 2]


@pytest.mark.both_backends
def test_worker_killed_mid_task_is_replaced_and_the_task_retried(tmp_path):
    marker = str(tmp_path / "died-once")
    with Pool(workers=2) as pool:
        before = set(pool.pids)
        tasks = [(_tasks.square, i) for i in range(20)]
        tasks[7] = (_tasks.die_once, marker, "survived")
        batch = BatchManager(pool, tasks).batch
        batch.start()
        results = batch.list_results()
        assert results[7] == "survived"
        assert [r for i, r in enumerate(results) if i != 7] == [i * i for i in range(20) if i != 7]
        after = set(pool.pids)
        assert len(after) == 2 and after != before  # one replaced


@pytest.mark.parametrize("how,named", [("kill", "SIGKILL"), (3, "exited with code 3")])
def test_poison_task_fails_after_the_retry_bound_and_the_batch_goes_on(how, named):
    with Pool(workers=2, max_retries=1) as pool:
        tasks = [(_tasks.square, i) for i in range(10)]
        tasks[4] = (_tasks.die, how)
        batch = BatchManager(pool, tasks).batch
        batch.start()
        results = batch.list_results(return_exceptions=True)
        err = results[4]
        assert isinstance(err, TaskError) and err.phase == "worker died"
        assert named in str(err) and "after 1 retries" in str(err)
        assert [r for i, r in enumerate(results) if i != 4] == [i * i for i in range(10) if i != 4]
        # The pool still serves new work at full size.
        assert len(pool.pids) == 2
        assert BatchManager(pool, [(_tasks.square, 3)]).batch.list_results() == [9]


def test_max_retries_zero_reports_the_first_death():
    with Pool(workers=1) as pool:
        sprint = pool.submit_sprint(Sprint(max_retries=0))
        sprint.submit_tasks([(_tasks.die, "kill"), (_tasks.square, 2)])
        got = dict(sprint.yield_results(return_exceptions=True, timeout=30))
    assert isinstance(got[0], TaskError) and "SIGKILL" in str(got[0])
    assert got[1] == 4


@pytest.mark.both_backends
def test_failing_initializer_fails_its_requestors_tasks_only():
    with Pool(workers=2) as pool:
        bad = BatchManager(pool, [(_tasks.square, i) for i in range(5)],
                           init_data=(_tasks.failing_init, "X")).batch
        good = BatchManager(pool, [(_tasks.square, i) for i in range(5)]).batch
        bad.start()
        good.start()
        with pytest.raises(BatchError) as info:
            bad.list_results()
        assert sorted(info.value.errors) == list(range(5))
        first = info.value.errors[0]
        assert first.phase == "initializer" and "cannot initialize with 'X'" in str(first)
        assert good.list_results() == [i * i for i in range(5)]


@pytest.mark.both_backends
def test_unpicklable_task_fails_alone():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.echo, 1), (_tasks.echo, lambda: 0),
                                    (_tasks.echo, 3)]).batch
        results = batch.list_results(return_exceptions=True)
    assert results[0] == 1 and results[2] == 3
    assert results[1].phase == "task pickling in the client"


def test_result_whose_class_exists_only_in_the_worker_fails_alone(tmp_path):
    script = tmp_path / "local_class.py"
    script.write_text(textwrap.dedent("""
        from swarm.worker import run

        class OnlyHere:
            pass

        def task(x):
            return OnlyHere() if x == 1 else x

        if __name__ == "__main__":
            run(task_processor=task)
    """))
    with Pool(str(script), workers=1) as pool:
        results = BatchManager(pool, [0, 1, 2]).batch.list_results(return_exceptions=True)
    assert results[0] == 0 and results[2] == 2
    assert results[1].phase == "result unpickling in the client"


def test_task_over_its_timeout_fails_alone_and_its_worker_is_replaced():
    with Pool(workers=2) as pool:
        before = set(pool.pids)
        tasks = [(_tasks.sleep_then, 0.01, i) for i in range(10)]
        tasks[3] = (_tasks.sleep_then, 60, "never")
        batch = BatchManager(pool, tasks, task_timeout=1.0).batch
        results = batch.list_results(return_exceptions=True)
        err = results[3]
        assert isinstance(err, TaskError) and err.phase == "timeout"
        assert "task_timeout of 1 s" in str(err) and isinstance(err.exception, TimeoutError)
        assert [r for i, r in enumerate(results) if i != 3] == [i for i in range(10) if i != 3]
        assert len(pool.pids) == 2 and set(pool.pids) != before


def test_task_timeout_must_be_positive():
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="task_timeout"):
            Sprint(task_timeout=bad)
