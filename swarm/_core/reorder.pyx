# cython: language_level=3
"""Result reorder buffer: releases the completed prefix, in index order.

Python-visible surface:

``ReorderBuffer(expected=0)``  results for indexes [0, expected) will come
``expect(n)``                  raise the expected count (streams that grow)
``put(index, value)``          store one result; ValueError for an index out
                               of range or already received
``put_chunk(index, values)``   store results index, index + 1, ... at once
``pop_ready() -> list``        the values of the completed prefix, in order
``next_index``, ``expected``, ``held``, ``done`` (every expected result released)

put and pop_ready are O(1) amortized; memory holds only the results not
yet released (the slot list is compacted as the prefix is released).
"""

cdef object _EMPTY = object()


cdef class ReorderBuffer:

    def __cinit__(self, Py_ssize_t expected=0):
        if expected < 0:
            raise ValueError(f"expected must be >= 0, got {expected}")
        self._slots = []
        self._base = 0
        self._next = 0
        self._expected = expected
        self._held = 0

    def expect(self, Py_ssize_t n):
        if n < self._expected:
            raise ValueError(f"expected count cannot shrink ({self._expected} -> {n})")
        self._expected = n

    def put(self, Py_ssize_t index, object value):
        cdef Py_ssize_t pos = index - self._base
        if index < self._next or index >= self._expected:
            raise ValueError(f"result index {index} is out of range or already released")
        if pos >= len(self._slots):
            self._slots.extend([_EMPTY] * (pos + 1 - len(self._slots)))
        elif self._slots[pos] is not _EMPTY:
            raise ValueError(f"result index {index} received twice")
        self._slots[pos] = value
        self._held += 1

    def put_chunk(self, Py_ssize_t index, list values):
        cdef Py_ssize_t n = len(values)
        cdef Py_ssize_t pos = index - self._base, i
        cdef list slots = self._slots
        if n == 0:
            return
        if index < self._next or index + n > self._expected:
            raise ValueError(f"result indexes {index}..{index + n - 1} are out of range "
                             f"or already released")
        if pos + n > len(slots):
            slots.extend([_EMPTY] * (pos + n - len(slots)))
        for i in range(pos, pos + n):
            if slots[i] is not _EMPTY:
                raise ValueError(f"result index {index + i - pos} received twice")
        slots[pos:pos + n] = values
        self._held += n

    def pop_ready(self):
        cdef list slots = self._slots
        cdef Py_ssize_t start = self._next - self._base, end = start
        cdef Py_ssize_t n = len(slots)
        while end < n and slots[end] is not _EMPTY:
            end += 1
        if end == start:
            return []
        out = slots[start:end]
        self._next += end - start
        self._held -= end - start
        # Drop the released prefix once it outweighs what is left, so the
        # list stays proportional to the results still held.
        if end * 2 >= n:
            del slots[:end]
            self._base += end
        else:
            for i in range(start, end):
                slots[i] = None
        return out

    @property
    def next_index(self):
        return self._next

    @property
    def expected(self):
        return self._expected

    @property
    def held(self):
        return self._held

    @property
    def done(self):
        return self._next >= self._expected
