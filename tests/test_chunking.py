"""Automatic chunking: many short tasks of one requestor travel several to
a frame, and every per-task semantic stays: results in order, per-task
errors, retries charged to the task that was running, init_data."""

import os
import pickle

import pytest

from swarm import TaskError
from swarm.client import BatchError, BatchManager, Pool, Sprint

import _crash
import _tasks

N = 20_000


def _warm_up(pool):
    """Tiny tasks measured first: the pool knows they are short."""
    BatchManager(pool, [(_tasks.square, i) for i in range(100)]).batch.list_results()


def test_a_batch_of_tiny_tasks_is_chunked_and_ordered():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.square, i) for i in range(N)]).batch
        assert batch.list_results() == [i * i for i in range(N)]
        stats = batch.stats
    assert stats["tasks_done"] == N and stats["tasks_failed"] == 0
    # Far fewer frames than tasks: a handful of single tasks to measure,
    # then chunks.
    assert 0 < stats["chunks_sent"] < N // 50


def test_errors_inside_chunks_are_per_task():
    bad = set(range(3, N, 997))
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.fail_if, i, bad) for i in range(N)]).batch
        with pytest.raises(BatchError) as info:
            batch.list_results()
        assert batch.stats["chunks_sent"] > 0
    assert sorted(info.value.errors) == sorted(bad)
    for index, error in info.value.errors.items():
        assert error.task_id == index and f"task {index} is bad" in str(error)
        assert "ValueError" in error.remote_traceback
    results = info.value.results
    assert all(results[i] == i for i in range(N) if i not in bad)


def test_a_sprint_resumes_after_an_error_inside_a_chunk():
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks([(_tasks.square, i) for i in range(100)])
        list(sprint.yield_results())
        ids = sprint.submit_tasks([(_tasks.fail_if, i, {5000}) for i in range(N)])
        got = {}
        with pytest.raises(TaskError) as info:
            for task_id, value in sprint.yield_results():
                got[task_id] = value
        assert info.value.task_id == ids[5000]
        # The results behind the failure, in its chunk and later, still come.
        for task_id, value in sprint.yield_results():
            got[task_id] = value
        assert sprint.stats["chunks_sent"] > 0
    assert sorted(got) == [i for i in ids if i != ids[5000]]
    assert all(got[ids[i]] == i for i in range(N) if i != 5000)


@pytest.mark.parametrize("retries", [0, 1])
def test_a_death_inside_a_chunk_charges_only_the_running_task(tmp_path, retries):
    marker = str(tmp_path / "died")
    victim = 7000
    tasks = [(_tasks.square, i) for i in range(N)]
    tasks[victim] = (_tasks.die_once, marker, "survived")
    with Pool(workers=2, max_retries=retries) as pool:
        _warm_up(pool)
        batch = BatchManager(pool, tasks).batch
        results = batch.list_results(return_exceptions=True)
        assert batch.stats["chunks_sent"] > 0
    assert os.path.exists(marker)
    if retries:
        assert results[victim] == "survived"
    else:
        error = results[victim]
        assert isinstance(error, TaskError) and error.phase == "worker died"
        assert error.task_id == victim and f"during task {victim}" in str(error)
    # Every other task, before and after it in its chunk, has its result.
    assert all(results[i] == i * i for i in range(N) if i != victim)
    assert batch.stats["tasks_failed"] == (0 if retries else 1)


def test_an_unpicklable_task_fails_alone():
    tasks = [(_tasks.square, i) for i in range(N)]
    tasks[9000] = (_tasks.echo, lambda: None)
    with Pool(workers=2) as pool:
        _warm_up(pool)
        results = BatchManager(pool, tasks).batch.list_results(return_exceptions=True)
    error = results[9000]
    assert isinstance(error, TaskError) and error.phase == "task pickling in the client"
    assert all(results[i] == i * i for i in range(N) if i != 9000)


def test_an_unpicklable_result_fails_alone():
    tasks = [(_tasks.square, i) for i in range(N)]
    tasks[4000] = (_tasks.return_lambda,)
    with Pool(workers=2) as pool:
        _warm_up(pool)
        batch = BatchManager(pool, tasks).batch
        results = batch.list_results(return_exceptions=True)
        assert batch.stats["chunks_sent"] > 0
    error = results[4000]
    assert isinstance(error, TaskError)
    assert error.phase == "result pickling in the worker" and error.task_id == 4000
    assert all(results[i] == i * i for i in range(N) if i != 4000)


def test_a_result_the_client_cannot_unpickle_fails_alone():
    # The chunk's whole reply cannot be decoded: its tasks run again one by
    # one, so that only the guilty one fails.
    client = os.getpid()
    tasks = [(_tasks.square, i) for i in range(3000)]
    tasks[2500] = (_crash.square_with_client_fault, client, 7)
    with Pool(workers=2) as pool:
        _warm_up(pool)
        batch = BatchManager(pool, tasks).batch
        results = batch.list_results(return_exceptions=True)
    error = results[2500]
    assert isinstance(error, TaskError) and error.phase == "result unpickling in the client"
    assert all(results[i] == i * i for i in range(3000) if i != 2500)


def test_a_chunk_that_kills_its_worker_while_unpickled_is_retried_one_by_one(tmp_path):
    # Which task's unpickling killed the worker is unknown: none is charged,
    # the tasks go back one by one, and the guilty one dies again alone.
    client = os.getpid()
    tasks = [(_tasks.square, i) for i in range(3000)]
    tasks[2000] = (_tasks.square, _crash.UnpickleFault("sigkill", client, None, 3))
    with Pool(workers=2, max_retries=0) as pool:
        _warm_up(pool)
        batch = BatchManager(pool, tasks).batch
        results = batch.list_results(return_exceptions=True)
    error = results[2000]
    assert isinstance(error, TaskError) and error.phase == "worker died"
    assert error.task_id == 2000
    assert all(results[i] == i * i for i in range(3000) if i != 2000)


def test_each_chunk_runs_under_its_own_init_data():
    with Pool(workers=2) as pool:
        a = BatchManager(pool, [(_tasks.with_init, i) for i in range(N)],
                         init_data=(_tasks.set_init, "A")).batch
        b = BatchManager(pool, [(_tasks.with_init, i) for i in range(N)],
                         init_data=(_tasks.set_init, "B")).batch
        a.start()
        b.start()
        ra, rb = a.list_results(), b.list_results()
        assert a.stats["chunks_sent"] > 0 and b.stats["chunks_sent"] > 0
    assert [(init, x) for init, x, _pid in ra] == [("A", i) for i in range(N)]
    assert [(init, x) for init, x, _pid in rb] == [("B", i) for i in range(N)]


def test_tasks_with_a_timeout_are_never_chunked():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.square, i) for i in range(2000)],
                             task_timeout=10).batch
        assert batch.list_results() == [i * i for i in range(2000)]
        assert batch.stats["chunks_sent"] == 0


def test_tasks_of_a_few_milliseconds_are_not_chunked():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.sleep_then, 0.002, i) for i in range(100)]).batch
        assert batch.list_results() == list(range(100))
        assert batch.stats["chunks_sent"] == 0


def test_numpy_arrays_travel_in_chunks():
    np = pytest.importorskip("numpy")
    arrays = [np.arange(i, i + 50, dtype=np.float32).reshape(5, 10) for i in range(3000)]
    with Pool(workers=2) as pool:
        _warm_up(pool)
        batch = BatchManager(pool, [(_tasks.echo, a) for a in arrays]).batch
        results = batch.list_results()
        assert batch.stats["chunks_sent"] > 0
    for sent, got in zip(arrays, results):
        assert got.dtype == sent.dtype and np.array_equal(got, sent)
    pickle.dumps(results[0])  # ordinary, writable arrays
    assert results[0].flags.writeable


def test_tasks_with_large_payloads_travel_alone():
    # Chunking saves a frame's fixed cost, which is noise next to moving a
    # megabyte; chunks of big arrays would only serialize the transfers.
    np = pytest.importorskip("numpy")
    array = np.ones(1 << 18)  # 2 MiB
    with Pool(workers=2) as pool:
        _warm_up(pool)
        batch = BatchManager(pool, [(_tasks.echo, array)] * 40).batch
        results = batch.list_results()
        assert batch.stats["chunks_sent"] == 0
    assert all(np.array_equal(r, array) for r in results)


def test_tasks_with_large_results_travel_alone():
    np = pytest.importorskip("numpy")
    with Pool(workers=2) as pool:
        _warm_up(pool)
        batch = BatchManager(pool, [(np.ones, 1 << 18)] * 200).batch
        results = batch.list_results()
        # The first replies show how big results are; chunking stops then.
        assert batch.stats["chunks_sent"] <= 2
    assert all(r.shape == (1 << 18,) and r[0] == 1.0 for r in results)


def test_a_death_mid_chunk_after_the_initializer_failed_fails_every_task(tmp_path):
    # One worker's initializer fails late; the other dies inside a chunk.
    # Every task of that chunk must get its outcome (here: the initializer's
    # error), none may be lost, and the batch must end.
    n, victim = 20_000, 6000
    tasks = [(_tasks.die_after_init_failed, str(tmp_path), i, victim) for i in range(n)]
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, tasks, init_data=(_tasks.init_once_then_fail,
                                                     str(tmp_path))).batch
        with pytest.raises(BatchError) as info:
            batch.list_results(timeout=30)
        stats = batch.stats
    assert stats["tasks_left"] == 0
    assert stats["tasks_done"] + stats["tasks_failed"] == n
    assert len(info.value.errors) == stats["tasks_failed"] > 0


def test_a_chunk_whose_results_outgrow_max_frame_is_sent_again_one_by_one():
    # Small results teach the pool to chunk; then results grow, so a chunk's
    # reply would be over max_frame though each result fits. The worker says
    # so, and the tasks go out again one by one: no worker dies, none fails.
    n, small = 3400, 3000
    with Pool(workers=2, max_frame=8 << 20) as pool:
        batch = BatchManager(pool, [(_tasks.growing_result, i, small) for i in range(n)]).batch
        results = batch.list_results(timeout=60)
        pids_after = set(pool.pids)
        assert batch.stats["chunks_sent"] > 0
    assert len(results) == n and all(len(r) == (1000 if i < small else 1 << 20)
                                      for i, r in enumerate(results))
    assert len(pids_after) == 2


def test_chunking_can_be_turned_off():
    with Pool(workers=2, chunk_target_s=0) as pool:
        batch = BatchManager(pool, [(_tasks.square, i) for i in range(5000)]).batch
        assert batch.list_results() == [i * i for i in range(5000)]
        assert batch.stats["chunks_sent"] == 0
    for bad in (-1, "2ms", True, float("nan")):
        with pytest.raises(ValueError, match="chunk_target_s"):
            Pool(workers=1, chunk_target_s=bad)
