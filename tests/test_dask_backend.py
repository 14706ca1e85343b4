"""DaskBackend: the same Pool, Sprint and BatchManager on a Dask cluster.

A slot per pool worker submits the pool's frames to Dask; swarm keeps its
queue, affinity, retries and deadline policy. These tests run on real
LocalClusters (worker processes on 127.0.0.1); the session's shared one is
in conftest.py (``dask_client``), and the Pool/Sprint/Batch tests marked
``both_backends`` run on it too."""

import threading
import time

import pytest

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")

import dask  # noqa: E402

import _tasks  # noqa: E402
from swarm import TaskError, WorkerStartError  # noqa: E402
from swarm.client import BatchManager, Pool, Sprint  # noqa: E402
from swarm.dask_backend import DaskBackend  # noqa: E402
from conftest import DASK_CONFIG  # noqa: E402


def test_identical_tasks_all_run(dask_client, tmp_path):
    path = str(tmp_path / "side-effects")
    with Pool(workers=2, backend=DaskBackend(dask_client, scale=False)) as pool:
        batch = BatchManager(pool, [(_tasks.append_line, path)] * 40).batch
        assert batch.list_results(timeout=30) == ["x"] * 40
    with open(path) as f:
        assert len(f.read().splitlines()) == 40   # pure=False: no task merged


def test_interleaved_sprints_each_run_under_their_own_init(dask_client):
    backend = DaskBackend(dask_client, scale=False)
    with Pool(workers=2, backend=backend) as pool:
        a = pool.submit_sprint(Sprint(init_data=(_tasks.set_init, "A")))
        b = pool.submit_sprint(Sprint(init_data=(_tasks.set_init, "B")))
        for i in range(10):
            a.submit_tasks([(_tasks.with_init_calls, i)] * 3)
            b.submit_tasks([(_tasks.with_init_calls, i)] * 3)
        got_a = dict(a.yield_results(timeout=30))
        got_b = dict(b.yield_results(timeout=30))
        stats = backend.stats
    assert len(got_a) == len(got_b) == 30
    assert {r[0] for r in got_a.values()} == {"A"}
    assert {r[0] for r in got_b.values()} == {"B"}
    # Each init_data went to Dask once (Dask then moves it once per worker),
    # and the initializer ran at most once per switch of a process between
    # the two requestors: never more often than there are tasks.
    assert stats["init_scatters"] == 2
    calls = {}
    for _init, _x, pid, n in list(got_a.values()) + list(got_b.values()):
        calls[pid] = max(calls.get(pid, 0), n)
    assert 2 <= sum(calls.values()) <= 60 + 2


def test_a_worker_killed_mid_task_is_retried_and_results_stay_in_order(dask_client, tmp_path):
    marker = str(tmp_path / "died-once")
    tasks = [(_tasks.square, i) for i in range(20)]
    tasks[7] = (_tasks.die_once, marker, "survived")
    with Pool(workers=2, backend=DaskBackend(dask_client, scale=False)) as pool:
        results = BatchManager(pool, tasks, max_retries=1).batch.list_results(timeout=60)
    assert results[7] == "survived"
    assert [r for i, r in enumerate(results) if i != 7] == [i * i for i in range(20) if i != 7]


def test_with_retries_at_zero_a_killed_worker_is_a_clear_error_naming_the_task(dask_client):
    with Pool(workers=2, backend=DaskBackend(dask_client, scale=False)) as pool:
        sprint = pool.submit_sprint(Sprint(max_retries=0))
        sprint.submit_tasks([(_tasks.square, 1), (_tasks.die, "kill"), (_tasks.square, 3)])
        got = dict(sprint.yield_results(return_exceptions=True, timeout=60))
        # The pool serves on afterwards (the nanny restarted the Dask worker).
        assert BatchManager(pool, [(_tasks.square, 5)]).batch.list_results(timeout=60) == [25]
    assert got[0] == 1 and got[2] == 9
    error = got[1]
    assert isinstance(error, TaskError) and error.phase == "worker died"
    assert "during task 1" in str(error) and "Dask" in str(error)


def test_an_80_mb_array_goes_in_and_out_bit_exact(dask_client):
    array = np.random.default_rng(0).integers(0, 2**63, size=10 * 2**20, dtype=np.int64)
    assert array.nbytes == 80 * 2**20
    with Pool(workers=1, backend=DaskBackend(dask_client, scale=False)) as pool:
        [back] = BatchManager(pool, [(_tasks.echo, array)]).batch.list_results(timeout=60)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_a_script_that_cannot_load_on_dask_fails_pool_start(dask_client, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise ImportError('numpy too old for this worker')\n")
    with pytest.raises(WorkerStartError, match="numpy too old"):
        Pool(str(script), workers=1, backend=DaskBackend(dask_client, scale=False))


def test_a_worker_script_runs_unchanged_on_dask(dask_client, tmp_path):
    from conftest import ECHO_WORKER
    import textwrap
    script = tmp_path / "echo.py"
    script.write_text(textwrap.dedent(ECHO_WORKER))
    with Pool(str(script), workers=2, backend=DaskBackend(dask_client, scale=False)) as pool:
        batch = BatchManager(pool, list(range(10)), init_data=(100,)).batch
        assert batch.list_results(timeout=30) == [100 + i for i in range(10)]
        failing = BatchManager(pool, ["raise", 1]).batch
        results = failing.list_results(return_exceptions=True, timeout=30)
    assert isinstance(results[0], TaskError) and "task asked to fail" in str(results[0])
    assert results[1] == 101 or results[1] == 1


def test_a_batch_behind_its_tta_grows_the_cluster_and_it_shrinks_back():
    """Worker counts over time, not speed: one Dask worker cannot finish
    the batch by its tta, so the pool asks the cluster for more, and gives
    them back once the batch is done and its slots retire."""
    with dask.config.set(DASK_CONFIG):
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=":0")
    counts = []
    stop = threading.Event()
    try:
        with distributed.Client(cluster) as client:
            def sample():
                while not stop.is_set():
                    counts.append((time.monotonic(), len(client.nthreads())))
                    stop.wait(0.1)
            sampler = threading.Thread(target=sample, daemon=True)
            with Pool(workers=1, max_workers=3, idle_timeout=0.3,
                      backend=DaskBackend(client)) as pool:
                sampler.start()
                batch = BatchManager(pool, [(_tasks.sleep_then, 0.1, i) for i in range(50)]).batch
                batch.start(tta=time.time() + 2.5)
                assert batch.list_results(timeout=60) == list(range(50))
                grown = max(n for _t, n in counts)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and counts[-1][1] > 1:
                    time.sleep(0.1)
            stop.set()
            sampler.join(5)
    finally:
        stop.set()
        cluster.close(timeout=20)
    assert grown > 1, counts
    assert counts[-1][1] == 1, counts[-5:]
    assert batch.stats["workers_launched"] >= 1
