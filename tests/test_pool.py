"""Pool: worker processes that serve requestors (Sprints and Batches) from
one common queue. ``Pool()`` runs the built-in worker (a task is
``(callable, *args)``); ``Pool('my_worker.py')`` runs a worker script."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import _tasks
from swarm import PoolClosed, WorkerStartError
from swarm.client import BatchManager, Pool, Sprint


@pytest.mark.both_backends
def test_pool_runs_plain_functions_on_the_built_in_worker():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.square, i) for i in range(20)]).batch
        batch.start()
        assert batch.list_results() == [i * i for i in range(20)]


def test_pool_starts_the_requested_number_of_workers_and_stops_them(run_dir):
    with Pool(workers=3) as pool:
        pids = pool.pids
        assert len(pids) == 3
        assert sorted(os.listdir(run_dir)) == sorted(f"{pid}.sock" for pid in pids)
    assert os.listdir(run_dir) == []
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_workers_default_to_usable_cpus():
    with Pool() as pool:
        assert len(pool.pids) == len(os.sched_getaffinity(0))


def test_close_is_idempotent_and_the_closed_pool_refuses_work():
    pool = Pool(workers=1)
    pool.close()
    pool.close()
    with pytest.raises(PoolClosed):
        pool.submit_sprint(Sprint())


@pytest.mark.both_backends
def test_pool_with_a_worker_script_resolves_a_relative_path(tmp_path, monkeypatch):
    (tmp_path / "doubler.py").write_text(textwrap.dedent("""
        from swarm.worker import run
        if __name__ == "__main__":
            run(task_processor=lambda x: 2 * x)
    """))
    monkeypatch.chdir(tmp_path)
    with Pool("doubler.py", workers=2) as pool:
        batch = BatchManager(pool, list(range(10))).batch  # non-tuple tasks: one argument
        batch.start()
        assert batch.list_results() == [2 * i for i in range(10)]


def test_missing_script_is_a_clear_error_naming_it(tmp_path):
    with pytest.raises(WorkerStartError, match="no_such_worker.py does not exist"):
        Pool(str(tmp_path / "no_such_worker.py"), workers=2)


def test_script_that_raises_at_import_shows_its_stderr(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise ImportError('numpy too old for this worker')\n")
    start = time.monotonic()
    with pytest.raises(WorkerStartError) as info:
        Pool(str(script), workers=2)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "broken.py" in message
    assert "numpy too old for this worker" in message


def test_script_that_exits_without_serving_is_a_start_error(tmp_path):
    script = tmp_path / "quitter.py"
    script.write_text("import sys; sys.exit(3)\n")
    with pytest.raises(WorkerStartError, match="exited with code 3"):
        Pool(str(script), workers=1)


@pytest.mark.both_backends
def test_leaving_the_block_cancels_queued_tasks_and_stops_promptly():
    start = time.monotonic()
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks([(_tasks.sleep_then, 0.2)] * 200)
    assert time.monotonic() - start < 10
    with pytest.raises(PoolClosed):
        list(sprint.yield_results())


def test_exception_in_the_block_still_stops_every_worker(run_dir):
    with pytest.raises(RuntimeError, match="user code failed"):
        with Pool(workers=2) as pool:
            pids = pool.pids
            raise RuntimeError("user code failed")
    assert os.listdir(run_dir) == []
    assert all(not os.path.exists(f"/proc/{pid}/cmdline") or
               open(f"/proc/{pid}/stat").read().split()[2] == "Z" for pid in pids)


CTRL_C_CLIENT = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
import _tasks
from swarm.client import Pool, Sprint
try:
    with Pool(workers=2) as pool:
        sprint = pool.submit_sprint(Sprint())
        sprint.submit_tasks([(_tasks.sleep_then, 5)] * 4)
        print(" ".join(map(str, pool.pids)), flush=True)
        for _ in sprint.yield_results():
            pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("target", ["client", "group"])
def test_ctrl_c_in_the_block_stops_the_pool_with_no_orphans(target, run_dir, tmp_path):
    code = CTRL_C_CLIENT.format(tests=os.path.dirname(__file__))
    # cwd outside any source checkout: the client must import the installed swarm.
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          cwd=tmp_path) as client:
        try:
            pids = [int(p) for p in client.stdout.readline().split()]
            assert len(pids) == 2, client.stderr.read()
            time.sleep(0.3)  # the workers are inside their tasks
            if target == "client":
                os.kill(client.pid, signal.SIGINT)
            else:
                os.killpg(client.pid, signal.SIGINT)
            out, err = client.communicate(timeout=15)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert "interrupted" in out
    assert "Traceback" not in err
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
    assert os.listdir(run_dir) == []


MAIN_SCRIPT = """
import os
from swarm.client import BatchManager, Pool

def cube(x):
    return x ** 3

if __name__ == "__main__":
    with Pool(workers=2) as pool:
        print(BatchManager(pool, [(cube, i) for i in range(5)]).batch.list_results())
"""

UNGUARDED_SCRIPT = """
from swarm.client import BatchManager, Pool

def cube(x):
    return x ** 3

pool = Pool(workers=1)   # no __main__ guard: must not recurse in the worker
try:
    print(BatchManager(pool, [(cube, 2)]).batch.list_results(return_exceptions=True))
finally:
    pool.close()
"""


def test_functions_defined_in_the_main_script_run_on_the_built_in_worker(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(MAIN_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 8, 27, 64]"


def test_an_unguarded_pool_in_the_main_script_does_not_recurse(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(UNGUARDED_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "guard the pool" in out.stdout


def test_the_client_uses_no_cpu_while_it_waits():
    # The I/O thread sleeps in poll() and the caller in a queue wait: a
    # second of waiting for a sleeping task costs the client next to no CPU.
    with Pool(workers=2) as pool:
        BatchManager(pool, [(_tasks.square, 1)] * 10).batch.list_results()
        before = time.process_time()
        results = BatchManager(pool, [(_tasks.sleep_then, 1.0, i) for i in range(2)]) \
            .batch.list_results()
        used = time.process_time() - before
    assert results == [0, 1]
    assert used < 0.1, f"the client used {used:.3f} s of CPU in a 1 s wait"
