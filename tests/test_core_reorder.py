"""swarm._core.reorder.ReorderBuffer: results in, completed prefix out."""

import random
import sys

import pytest

from swarm._core.reorder import ReorderBuffer


def test_releases_only_the_completed_prefix():
    buf = ReorderBuffer(5)
    buf.put(2, "c")
    buf.put(1, "b")
    assert buf.pop_ready() == []
    buf.put(0, "a")
    assert buf.pop_ready() == ["a", "b", "c"]
    assert buf.next_index == 3 and not buf.done
    buf.put(4, "e")
    buf.put(3, "d")
    assert buf.pop_ready() == ["d", "e"]
    assert buf.done and buf.held == 0


def test_random_arrival_comes_out_sorted():
    n = 5000
    order = list(range(n))
    random.Random(3).shuffle(order)
    buf = ReorderBuffer(n)
    out = []
    for i in order:
        buf.put(i, i)
        out.extend(buf.pop_ready())
    assert out == list(range(n))
    assert buf.done


def test_duplicates_and_out_of_range_are_refused():
    buf = ReorderBuffer(3)
    buf.put(1, "x")
    with pytest.raises(ValueError, match="twice"):
        buf.put(1, "y")
    with pytest.raises(ValueError):
        buf.put(3, "z")
    buf.put(0, "w")
    buf.pop_ready()
    with pytest.raises(ValueError):
        buf.put(0, "again")


def test_expected_count_can_grow_for_streams():
    buf = ReorderBuffer()
    assert buf.done
    buf.expect(2)
    buf.put(0, None)
    buf.put(1, 0)
    assert buf.pop_ready() == [None, 0]
    with pytest.raises(ValueError):
        buf.expect(1)


def test_released_values_are_not_held():
    value = object()
    buf = ReorderBuffer(2)
    before = sys.getrefcount(value)
    buf.put(0, value)
    assert sys.getrefcount(value) == before + 1
    out = buf.pop_ready()
    del out
    assert sys.getrefcount(value) == before


def test_put_chunk_stores_a_range():
    buf = ReorderBuffer(10)
    buf.put_chunk(3, ["d", "e", "f"])
    assert buf.pop_ready() == [] and buf.held == 3
    buf.put_chunk(0, ["a", "b", "c"])
    assert buf.pop_ready() == list("abcdef")
    with pytest.raises(ValueError):
        buf.put_chunk(8, ["i", "j", "k"])      # past the expected count
    with pytest.raises(ValueError):
        buf.put_chunk(5, ["again"])            # already released
    buf.put(7, "h")
    with pytest.raises(ValueError):
        buf.put_chunk(6, ["g", "h"])           # 7 was received already
    buf.put_chunk(6, ["g"])
    buf.put_chunk(8, ["i", "j"])
    buf.put_chunk(10, [])
    assert buf.pop_ready() == list("ghij") and buf.done
