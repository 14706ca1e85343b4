"""swarm._core.taskqueue.TaskQueue: one queue in submission order across
requestors; a worker takes the first task of its requestor, else the first
task in the queue."""

import sys

import pytest

from swarm._core.taskqueue import TaskQueue


def test_pop_prefers_the_requestors_first_task():
    q = TaskQueue()
    q.push(0, 0, "a0")
    q.push(1, 0, "b0")
    q.push(0, 1, "a1")
    q.push(1, 1, "b1")
    assert q.pop(1) == (1, 0, "b0")
    assert q.pop(1) == (1, 1, "b1")
    assert q.pop(0) == (0, 0, "a0")


def test_pop_falls_back_to_the_first_task_in_the_queue():
    q = TaskQueue()
    q.extend(3, 0, ["c0", "c1"])
    q.push(1, 0, "b0")
    assert q.pop(0) == (3, 0, "c0")       # requestor 0 has none queued
    assert q.pop(7) == (3, 1, "c1")       # unknown lane: the global head
    assert q.pop(3) == (1, 0, "b0")
    with pytest.raises(IndexError):
        q.pop(3)


def test_counts_and_first_requestor():
    q = TaskQueue()
    assert len(q) == 0 and q.first_requestor() == -1
    q.extend(2, 10, range(5))
    q.push(4, 0, None)
    assert len(q) == 6 and q.count(2) == 5 and q.count(4) == 1 and q.count(9) == 0
    assert q.first_requestor() == 2
    assert q.pop(4) == (4, 0, None)
    assert q.count(4) == 0


def test_push_front_puts_a_retry_first_in_both_orders():
    q = TaskQueue()
    q.extend(0, 0, ["a0", "a1"])
    q.push(1, 0, "b0")
    q.push_front(1, 5, "b5-retry")
    assert q.pop(2) == (1, 5, "b5-retry")
    q.push_front(0, 9, "a9-retry")
    assert q.pop(0) == (0, 9, "a9-retry")
    assert [q.pop(0)[2] for _ in range(3)] == ["a0", "a1", "b0"]


def test_remove_requestor_drops_only_its_lane_in_order():
    q = TaskQueue()
    for i in range(4):
        q.push(i % 2, i, f"t{i}")
    assert q.remove_requestor(0) == [(0, "t0"), (2, "t2")]
    assert q.remove_requestor(0) == []
    assert len(q) == 2
    assert [q.pop(0) for _ in range(2)] == [(1, 1, "t1"), (1, 3, "t3")]


def test_interleaved_lanes_keep_global_order_under_churn():
    q = TaskQueue()
    expected = []
    for i in range(1000):
        q.push(i % 3, i, i)
        expected.append(i)
    got = [q.pop(99)[2] for _ in range(1000)]
    assert got == expected


def test_references_are_released():
    q = TaskQueue()
    task = object()
    before = sys.getrefcount(task)
    q.push(0, 0, task)
    q.push(1, 0, task)
    assert sys.getrefcount(task) == before + 2
    q.pop(0)
    q.remove_requestor(1)
    assert sys.getrefcount(task) == before
    q.push(0, 1, task)
    del q  # queued tasks are released with the queue
    assert sys.getrefcount(task) == before


def test_bad_requestor_is_a_value_error():
    q = TaskQueue()
    with pytest.raises(ValueError):
        q.push(-1, 0, None)
    with pytest.raises(ValueError):
        q.push(1 << 30, 0, None)


def test_pop_chunk_takes_consecutive_tasks_of_one_lane():
    q = TaskQueue()
    q.extend(0, 0, ["a0", "a1", "a2", "a3"])
    q.extend(1, 0, ["b0", "b1"])
    assert q.pop_chunk(0, 3) == (0, 0, ["a0", "a1", "a2"])
    # The lane holds one more: the chunk stops there, not in lane 1.
    assert q.pop_chunk(0, 10) == (0, 3, ["a3"])
    # Lane 0 is empty: the first task in the queue, and its lane-mates.
    assert q.pop_chunk(0, 10) == (1, 0, ["b0", "b1"])
    assert len(q) == 0
    with pytest.raises(IndexError):
        q.pop_chunk(0, 1)


def test_pop_chunk_stops_at_a_gap_in_indexes():
    q = TaskQueue()
    q.extend(0, 5, ["t5", "t6"])
    q.push_front(0, 2, "t2")          # a retried task, ahead of the rest
    assert q.pop_chunk(0, 10) == (0, 2, ["t2"])
    assert q.pop_chunk(0, 10) == (0, 5, ["t5", "t6"])


def test_push_front_chunk_restores_the_order():
    q = TaskQueue()
    q.extend(0, 0, list("abcdef"))
    _, first, tasks = q.pop_chunk(0, 4)
    q.push_front_chunk(0, first, tasks)
    assert [q.pop(0) for _ in range(6)] == [(0, i, c) for i, c in enumerate("abcdef")]


def test_chunks_hold_and_release_their_references():
    q = TaskQueue()
    task = object()
    before = sys.getrefcount(task)
    q.extend(0, 0, [task] * 100)
    _, _, tasks = q.pop_chunk(0, 60)
    q.push_front_chunk(0, 0, tasks)
    del tasks
    assert sys.getrefcount(task) == before + 100
    while len(q):
        q.pop_chunk(0, 7)
    assert sys.getrefcount(task) == before
