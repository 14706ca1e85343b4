"""Deadline-driven scaling: a requestor with a tta (absolute epoch seconds)
that is projected to miss it gets more workers, launched while it runs, up
to Pool(max_workers=...); growth stops when more workers stop helping;
workers beyond the configured size retire when idle. Sleep-based tasks and
generous margins: these tests assert behaviour, never a speed."""

import sys
import time

import pytest

import _tasks
from swarm.client import BatchManager, Pool, Sprint


def _sleep_batch(pool, n, seconds):
    return BatchManager(pool, [(_tasks.sleep_then, seconds, i) for i in range(n)]).batch


def _pids_of(results):
    return {pid for pid, _ in results}


def test_batch_behind_its_tta_gets_more_workers_and_meets_it():
    # 60 x 50 ms = 3 s of work for the one starting worker; the tta leaves 2 s.
    with Pool(workers=1, max_workers=6) as pool:
        batch = BatchManager(pool, [(_tasks.sleep_then, 0.05, i) for i in range(60)]).batch
        batch.start(tta=time.time() + 2.0)
        assert batch.list_results() == list(range(60))
        stats = batch.stats
    assert stats["workers_launched"] >= 1
    assert stats["tta_met"] is True and stats["missed_by_s"] == 0.0


def test_distinct_workers_ran_a_batch_that_needed_them():
    with Pool(workers=1, max_workers=6) as pool:
        tasks = [(_tasks.whoami, i) for i in range(4)] + \
                [(_tasks.sleep_then, 0.05, i) for i in range(60)] + \
                [(_tasks.whoami, i) for i in range(40)]
        batch = BatchManager(pool, tasks).batch
        batch.start(tta=time.time() + 2.0)
        results = batch.list_results()
    pids = {r[0] for r in results[:4] + results[-40:]}
    assert len(pids) >= 2


def test_without_tta_the_pool_keeps_its_size():
    with Pool(workers=1, max_workers=6) as pool:
        batch = _sleep_batch(pool, 30, 0.02)
        batch.start()
        batch.list_results()
        assert batch.stats["workers_launched"] == 0
        assert len(pool.pids) == 1
        assert batch.stats["tta_met"] is None


def test_a_tta_in_the_past_is_missed_without_an_error():
    with Pool(workers=1, max_workers=3) as pool:
        batch = _sleep_batch(pool, 20, 0.02)
        batch.start(tta=time.time() - 5)
        assert batch.list_results() == list(range(20))
        stats = batch.stats
    assert stats["tta_met"] is False
    assert stats["missed_by_s"] >= 5


@pytest.mark.parametrize("tta", ["soon", float("nan"), True, [1]])
def test_a_tta_that_is_not_a_number_is_a_value_error(tta):
    with Pool(workers=1) as pool:
        batch = _sleep_batch(pool, 1, 0)
        with pytest.raises(ValueError, match="tta"):
            batch.start(tta=tta)
    with pytest.raises(ValueError, match="tta"):
        Sprint(tta=tta)


def test_saturation_stops_growth_for_cpu_bound_tasks():
    import os
    cores = len(os.sched_getaffinity(0))
    with Pool(workers=cores, max_workers=4 * cores) as pool:
        batch = BatchManager(pool, [(_tasks.spin, 0.1) for _ in range(12 * cores)]).batch
        batch.start(tta=time.time() + 0.2)  # unreachable
        peak = 0
        for _ in batch.yield_results():
            peak = max(peak, len(pool.pids))
        stats = batch.stats
    # CPU-bound work already fills the cores: at most one probing step.
    assert peak <= 2 * cores, stats
    assert stats["saturated"] is True, stats
    assert stats["tta_met"] is False


def test_idle_workers_beyond_the_configured_size_retire():
    with Pool(workers=1, max_workers=6, idle_timeout=0.3) as pool:
        batch = _sleep_batch(pool, 60, 0.05)
        batch.start(tta=time.time() + 1.5)
        batch.list_results()
        assert batch.stats["workers_launched"] >= 1
        deadline = time.monotonic() + 10
        while len(pool.pids) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool.pids) == 1
        # The pool still works at its configured size.
        assert BatchManager(pool, [(_tasks.square, 4)]).batch.list_results() == [16]


def test_the_tighter_tta_gets_the_new_workers():
    with Pool(workers=2, max_workers=8) as pool:
        loose = _sleep_batch(pool, 40, 0.05)
        tight = _sleep_batch(pool, 40, 0.05)
        loose.start(tta=time.time() + 60)
        tight.start(tta=time.time() + 1.2)
        tight.list_results()
        loose.list_results()
    assert tight.stats["workers_launched"] >= 1
    assert loose.stats["workers_launched"] == 0


def test_stats_are_readable_while_running():
    with Pool(workers=1, max_workers=4) as pool:
        batch = _sleep_batch(pool, 40, 0.03)
        batch.start(tta=time.time() + 1.0)
        seen = []
        for value in batch.yield_results():
            if value == 10:
                seen.append(dict(batch.stats))
        assert seen and seen[0]["tasks_done"] >= 10 and seen[0]["tasks_left"] > 0
        assert seen[0]["tta_met"] is None
        assert batch.stats["tasks_left"] == 0


def test_progress_bar_shows_tasks_and_workers(capfd):
    pytest.importorskip("tqdm")
    with Pool(workers=1, max_workers=3) as pool:
        batch = _sleep_batch(pool, 20, 0.02)
        batch.start(tta=time.time() + 5, progress=True)
        batch.list_results()
    err = capfd.readouterr().err
    assert "swarm batch" in err and "20/20" in err and "workers=" in err


def test_progress_without_tqdm_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with Pool(workers=1) as pool:
        with pytest.raises(ImportError, match=r"swarm\[progress\]"):
            _sleep_batch(pool, 1, 0).start(progress=True)


def test_a_requestor_ahead_of_its_tta_gives_workers_back():
    # The first tasks are slow, so the pool grows; the rest are quick, so
    # the projection moves well ahead of the tta and the extra workers
    # drain and retire while the batch still runs.
    tasks = [(_tasks.sleep_then, 0.4, i) for i in range(4)] + \
            [(_tasks.sleep_then, 0.01, i) for i in range(4, 600)]
    with Pool(workers=1, max_workers=6, idle_timeout=60) as pool:
        batch = BatchManager(pool, tasks).batch
        batch.start(tta=time.time() + 6.0)
        sizes = []
        for _ in batch.yield_results():
            sizes.append(len(pool.pids))
        stats = batch.stats
    peak = max(sizes)
    assert stats["workers_launched"] >= 1 and peak >= 3
    assert min(sizes[sizes.index(peak):]) < peak, sizes[::20]
    assert stats["tta_met"] is True
