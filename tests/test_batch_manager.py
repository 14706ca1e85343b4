"""BatchManager / Batch: an ordered requestor. ``batch.start(tta)`` queues
the tasks; ``list_results()`` returns results in task order, and
``yield_results()`` streams them in order as the completed prefix grows."""

import textwrap

import numpy as np
import pytest

import _tasks
from swarm import SwarmError
from swarm.client import BatchManager, Pool, Sprint


@pytest.mark.both_backends
def test_results_keep_task_order_whatever_the_finish_order():
    # Early tasks sleep longest, so they finish last.
    tasks = [(_tasks.sleep_then, 0.05 * (5 - i) if i < 5 else 0, i) for i in range(30)]
    with Pool(workers=3) as pool:
        batch = BatchManager(pool, tasks).batch
        batch.start()
        assert batch.list_results() == list(range(30))


@pytest.mark.both_backends
def test_yield_results_streams_in_task_order():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.square, i) for i in range(100)]).batch
        batch.start()
        assert list(batch.yield_results()) == [i * i for i in range(100)]
        assert batch.list_results() == [i * i for i in range(100)]  # again, same


@pytest.mark.both_backends
def test_a_2000_task_batch():
    with Pool(workers=2) as pool:
        batch = BatchManager(pool, [(_tasks.square, i) for i in range(2000)]).batch
        batch.start()
        assert batch.list_results() == [i * i for i in range(2000)]
        assert batch.stats["tasks_done"] == 2000
        assert batch.stats["tasks_left"] == 0


@pytest.mark.both_backends
def test_an_empty_batch_returns_an_empty_list():
    with Pool(workers=1) as pool:
        batch = BatchManager(pool, []).batch
        batch.start()
        assert batch.list_results() == []


@pytest.mark.both_backends
def test_list_results_starts_a_batch_that_was_not_started():
    with Pool(workers=1) as pool:
        assert BatchManager(pool, [(_tasks.square, 2)]).batch.list_results() == [4]


def test_a_batch_starts_once():
    with Pool(workers=1) as pool:
        batch = BatchManager(pool, []).batch
        batch.start()
        with pytest.raises(SwarmError, match="already started"):
            batch.start()


@pytest.mark.both_backends
def test_numpy_arrays_as_tasks_go_as_single_arguments(tmp_path, monkeypatch):
    (tmp_path / "norms.py").write_text(textwrap.dedent("""
        import numpy as np
        from swarm.worker import run
        if __name__ == "__main__":
            run(task_processor=lambda a: float(np.linalg.norm(a)))
    """))
    monkeypatch.chdir(tmp_path)
    arrays = [np.full(1000, float(i)) for i in range(20)]  # a list of arrays is a list of tasks
    with Pool("norms.py", workers=2) as pool:
        batch = BatchManager(pool, arrays).batch
        batch.start()
        np.testing.assert_allclose(batch.list_results(), [np.linalg.norm(a) for a in arrays])


INIT_WORKER = """
    import os
    from swarm.worker import run

    class Processor:
        def __init__(self):
            self.tag = None

        def initialize(self, tag):
            self.tag = tag

        def __call__(self, x):
            return self.tag, x, os.getpid()

    if __name__ == "__main__":
        p = Processor()
        run(task_processor=p, initializer=p.initialize)
"""


def test_init_data_reaches_every_worker_that_ran_the_batchs_tasks(tmp_path):
    script = tmp_path / "tagger.py"
    script.write_text(textwrap.dedent(INIT_WORKER))
    with Pool(str(script), workers=3) as pool:
        batch = BatchManager(pool, list(range(60)), init_data=("T",)).batch
        batch.start()
        results = batch.list_results()
        assert [x for _, x, _ in results] == list(range(60))
        assert {tag for tag, _, _ in results} == {"T"}
        pids = {pid for _, _, pid in results}
        assert batch.stats["initializations"] >= len(pids)


@pytest.mark.both_backends
def test_two_batches_and_a_sprint_with_different_init_data_do_not_cross(tmp_path):
    script = tmp_path / "tagger.py"
    script.write_text(textwrap.dedent(INIT_WORKER))
    with Pool(str(script), workers=2) as pool:
        a = BatchManager(pool, [(("a", i),) for i in range(200)], init_data=("A",)).batch
        b = BatchManager(pool, [(("b", i),) for i in range(200)], init_data=("B",)).batch
        sprint = pool.submit_sprint(Sprint(init_data=("S",)))
        a.start()
        sprint.submit_tasks([(("s", i),) for i in range(200)])
        b.start()
        for tag, batch in (("A", a), ("B", b)):
            results = batch.list_results()
            assert all(t == tag and x[0] == tag.lower() for t, x, _ in results)
            assert [x[1] for _, x, _ in results] == list(range(200))
        for task_id, (tag, x, _) in sprint.yield_results(timeout=30):
            assert tag == "S" and x == ("s", task_id)


def test_affinity_keeps_init_switches_rare_with_interleaved_requestors():
    with Pool(workers=2) as pool:
        sprints = [pool.submit_sprint(Sprint(init_data=(_tasks.set_init, tag))) for tag in "XY"]
        # Each worker is busy with its own requestor's first task while the
        # rest is queued interleaved: X, Y, X, Y, ...
        for sprint in sprints:
            sprint.submit_tasks([(_tasks.sleep_then, 0.5, None)])
        for i in range(100):
            for sprint in sprints:
                sprint.submit_tasks([(_tasks.with_init, i)])
        for tag, sprint in zip("XY", sprints):
            results = [r for _, r in sprint.yield_results(timeout=30) if r is not None]
            assert {init for init, _, _ in results} == {tag}
        switches = sum(s.stats["init_switches"] for s in sprints)
        # 200 interleaved tasks on 2 workers: without affinity nearly every
        # task would switch; with it, each worker keeps to its requestor.
        assert switches <= 4, [s.stats for s in sprints]
