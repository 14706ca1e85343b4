"""Sprint: a streaming requestor. Submit tasks at any time (before or after
``pool.submit_sprint``, also while reading), get ``(task_id, result)`` as
tasks finish; task_id is the 0-based submission position."""

import threading

import pytest

import _tasks
from swarm import SwarmError, TaskError
from swarm.client import Pool, Sprint


@pytest.mark.both_backends
def test_results_stream_with_their_submission_positions():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        ids = sprint.submit_tasks([(_tasks.square, i) for i in range(50)])
        assert ids == range(0, 50)
        results = dict(sprint.yield_results())
    assert results == {i: i * i for i in range(50)}


@pytest.mark.both_backends
def test_tasks_submitted_before_the_pool_are_kept():
    sprint = Sprint()
    assert sprint.submit_tasks([(_tasks.square, 3)]) == range(0, 1)
    with Pool(workers=1) as pool:
        pool.submit_sprint(sprint)
        assert sprint.submit_tasks([(_tasks.square, 4)]) == range(1, 2)
        assert sorted(sprint.yield_results()) == [(0, 9), (1, 16)]


@pytest.mark.both_backends
def test_ids_continue_across_calls_and_iterations():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks([(_tasks.echo, "a"), (_tasks.echo, "b")])
        assert sorted(sprint.yield_results()) == [(0, "a"), (1, "b")]
        assert sprint.submit_tasks([(_tasks.echo, "c")]) == range(2, 3)
        assert list(sprint.yield_results()) == [(2, "c")]
        assert list(sprint.yield_results()) == []  # nothing outstanding


@pytest.mark.both_backends
def test_tasks_submitted_while_reading_are_yielded_by_the_running_iterator():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks([(_tasks.echo, 0)])
        seen = []
        for task_id, result in sprint.yield_results(timeout=30):
            seen.append(task_id)
            if task_id < 9:
                sprint.submit_tasks([(_tasks.echo, task_id + 1)])
        assert seen == list(range(10))


@pytest.mark.both_backends
def test_every_result_arrives_exactly_once_with_concurrent_submitters():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())

        def submit(offset):
            for i in range(20):
                sprint.submit_tasks([(_tasks.echo, offset + i)])

        threads = [threading.Thread(target=submit, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pairs = list(sprint.yield_results(timeout=30))
    assert len(pairs) == 80
    assert sorted(task_id for task_id, _ in pairs) == list(range(80))
    assert sorted(r for _, r in pairs) == sorted(k * 1000 + i for k in range(4) for i in range(20))


@pytest.mark.both_backends
def test_init_data_is_run_before_the_sprints_tasks():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint(init_data=(_tasks.set_init, "S")))
        sprint.submit_tasks([(_tasks.with_init, i) for i in range(10)])
        assert {init for _, (init, _x, _pid) in sprint.yield_results()} == {"S"}


@pytest.mark.both_backends
def test_failed_task_raises_and_the_others_stay_reachable():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks([(_tasks.fail_if, i, {3}) for i in range(6)])
        got = {}
        with pytest.raises(TaskError, match="task 3 is bad") as info:
            for task_id, result in sprint.yield_results(timeout=30):
                got[task_id] = result
        assert info.value.task_id == 3
        got.update(sprint.yield_results(timeout=30))
        assert got == {i: i for i in range(6) if i != 3}


@pytest.mark.both_backends
def test_return_exceptions_puts_errors_in_place():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks([(_tasks.fail_if, i, {1}) for i in range(3)]
                            + [(_tasks.return_exception, 9)])
        got = dict(sprint.yield_results(return_exceptions=True, timeout=30))
    assert isinstance(got[1], TaskError) and got[1].exc_type == "ValueError"
    assert got[0] == 0 and got[2] == 2
    # A task that *returns* an exception is a result, not a failure.
    assert isinstance(got[3], ValueError)


def test_yield_before_submitting_to_a_pool_is_an_error():
    with pytest.raises(SwarmError, match="submit_sprint"):
        next(Sprint().yield_results())


def test_a_sprint_belongs_to_one_pool():
    with Pool(workers=1) as pool:
        sprint = pool.submit_sprint(Sprint())
        with pytest.raises(SwarmError, match="already submitted"):
            pool.submit_sprint(sprint)


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="tta"):
        Sprint(tta="tomorrow")
    with pytest.raises(ValueError, match="max_retries"):
        Sprint(max_retries=-1)
    with Pool(workers=1) as pool:
        with pytest.raises(TypeError, match="Sprint"):
            pool.submit_sprint(object())
