"""joblib.Parallel on swarm: register the backend, then code written for
joblib runs on a swarm pool. Runs only where joblib is installed."""

import pytest

joblib = pytest.importorskip("joblib")

import _tasks  # noqa: E402
from swarm.client import Pool  # noqa: E402
from swarm.joblib_backend import register  # noqa: E402


def test_parallel_runs_on_swarm_in_order():
    register()
    with joblib.parallel_config(backend="swarm", n_jobs=2):
        results = joblib.Parallel()(joblib.delayed(_tasks.square)(i) for i in range(50))
    assert results == [i * i for i in range(50)]


def test_the_original_exception_is_raised():
    register()
    with joblib.parallel_config(backend="swarm", n_jobs=2):
        with pytest.raises(ValueError, match="task 3 is bad"):
            joblib.Parallel()(joblib.delayed(_tasks.fail_if)(i, {3}) for i in range(6))


def test_a_shared_pool_serves_several_calls_and_stays_open():
    with Pool(workers=2) as pool:
        register("swarm-shared", pool=pool)
        for _ in range(3):
            with joblib.parallel_config(backend="swarm-shared"):
                pids = joblib.Parallel()(joblib.delayed(_tasks.whoami)(i) for i in range(10))
            assert {pid for pid, _ in pids} <= set(pool.pids)
        assert len(pool.pids) == 2
