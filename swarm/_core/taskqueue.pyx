# cython: language_level=3
"""The pool's common queue with per-requestor O(1) look-up.

Python-visible surface (the pool's I/O thread is its only user; it is not
thread-safe by design):

``TaskQueue()``
``push(requestor, index, task)``       append at the tail
``extend(requestor, first_index, tasks)``  append many, indexes consecutive
``push_front(requestor, index, task)`` put back at the head (retries)
``push_front_chunk(requestor, first_index, tasks)``  put back many at the
    head, in order, indexes consecutive
``pop(requestor) -> (requestor, index, task)``
    the first task of ``requestor``; if it has none, the first task in the
    queue; raises IndexError when the queue is empty
``pop_chunk(requestor, most) -> (requestor, first_index, [task, ...])``
    the task ``pop`` would give, then those that follow it in its lane
    with consecutive indexes, ``most`` tasks at most (a chunk's results
    map onto one index range)
``remove_requestor(requestor) -> [(index, task), ...]``  drop a lane
``count(requestor)``, ``len(queue)``, ``first_requestor()`` (-1 if empty)

Requestors are small non-negative ints chosen by the caller (lane numbers).
"""

from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset

cdef enum:
    MAX_LANES = 1 << 20           # bounds the lane table a bad id could grow


cdef class TaskQueue:

    def __cinit__(self):
        self._head = self._tail = NULL
        self._lanes = NULL
        self._nlanes = 0
        self._count = 0
        self._free = NULL

    def __dealloc__(self):
        cdef Node *node = self._head
        cdef Node *nxt
        while node != NULL:
            nxt = node.gnext
            Py_DECREF(<object>node.task)
            free(node)
            node = nxt
        node = self._free
        while node != NULL:
            nxt = node.gnext
            free(node)
            node = nxt
        free(self._lanes)

    def __len__(self):
        return self._count

    cdef int _ensure_lane(self, int requestor) except -1:
        cdef int n
        cdef Lane *lanes
        if requestor < 0 or requestor >= MAX_LANES:
            raise ValueError(f"requestor must be in [0, {MAX_LANES}), got {requestor}")
        if requestor < self._nlanes:
            return 0
        n = max(8, self._nlanes * 2, requestor + 1)
        lanes = <Lane *>realloc(self._lanes, n * sizeof(Lane))
        if lanes == NULL:
            raise MemoryError()
        memset(lanes + self._nlanes, 0, (n - self._nlanes) * sizeof(Lane))
        self._lanes = lanes
        self._nlanes = n
        return 0

    cdef Node *_new_node(self, int requestor, int64_t index, object task) except NULL:
        cdef Node *node = self._free
        if node != NULL:
            self._free = node.gnext
        else:
            node = <Node *>malloc(sizeof(Node))
            if node == NULL:
                raise MemoryError()
        Py_INCREF(task)
        node.task = <PyObject *>task
        node.index = index
        node.requestor = requestor
        return node

    cdef void _unlink(self, Node *node) noexcept:
        cdef Lane *lane = &self._lanes[node.requestor]
        if node.gprev != NULL:
            node.gprev.gnext = node.gnext
        else:
            self._head = node.gnext
        if node.gnext != NULL:
            node.gnext.gprev = node.gprev
        else:
            self._tail = node.gprev
        if node.rprev != NULL:
            node.rprev.rnext = node.rnext
        else:
            lane.head = node.rnext
        if node.rnext != NULL:
            node.rnext.rprev = node.rprev
        else:
            lane.tail = node.rprev
        lane.count -= 1
        self._count -= 1

    def push(self, int requestor, int64_t index, object task):
        self._push(requestor, index, task)

    cdef int _push(self, int requestor, int64_t index, object task) except -1:
        self._ensure_lane(requestor)
        cdef Node *node = self._new_node(requestor, index, task)
        cdef Lane *lane = &self._lanes[requestor]
        node.gnext = NULL
        node.gprev = self._tail
        if self._tail != NULL:
            self._tail.gnext = node
        else:
            self._head = node
        self._tail = node
        node.rnext = NULL
        node.rprev = lane.tail
        if lane.tail != NULL:
            lane.tail.rnext = node
        else:
            lane.head = node
        lane.tail = node
        lane.count += 1
        self._count += 1
        return 0

    def extend(self, int requestor, int64_t first_index, tasks):
        cdef int64_t index = first_index
        for task in tasks:
            self._push(requestor, index, task)
            index += 1

    def push_front_chunk(self, int requestor, int64_t first_index, list tasks):
        cdef Py_ssize_t i
        for i in range(len(tasks) - 1, -1, -1):
            self._push_front(requestor, first_index + i, tasks[i])

    def push_front(self, int requestor, int64_t index, object task):
        self._push_front(requestor, index, task)

    cdef int _push_front(self, int requestor, int64_t index, object task) except -1:
        self._ensure_lane(requestor)
        cdef Node *node = self._new_node(requestor, index, task)
        cdef Lane *lane = &self._lanes[requestor]
        node.gprev = NULL
        node.gnext = self._head
        if self._head != NULL:
            self._head.gprev = node
        else:
            self._tail = node
        self._head = node
        node.rprev = NULL
        node.rnext = lane.head
        if lane.head != NULL:
            lane.head.rprev = node
        else:
            lane.tail = node
        lane.head = node
        lane.count += 1
        self._count += 1
        return 0

    cdef Node *_next_for(self, int requestor) except NULL:
        # The first task of requestor's lane, else the first in the queue.
        cdef Node *node = NULL
        if 0 <= requestor < self._nlanes:
            node = self._lanes[requestor].head
        if node == NULL:
            node = self._head
            if node == NULL:
                raise IndexError("pop from an empty TaskQueue")
        return node

    cdef object _take(self, Node *node):
        # Unlink node, recycle it, and hand its task's reference to the caller.
        self._unlink(node)
        task = <object>node.task
        Py_DECREF(task)          # the reference moves into `task`
        node.gnext = self._free
        self._free = node
        return task

    def pop_chunk(self, int requestor, Py_ssize_t most):
        cdef Node *node = self._next_for(requestor)
        cdef Node *nxt
        cdef int64_t first = node.index
        cdef list tasks = []
        requestor = node.requestor
        while True:
            nxt = node.rnext
            tasks.append(self._take(node))
            if len(tasks) >= most or nxt == NULL or nxt.index != first + len(tasks):
                break
            node = nxt
        return (requestor, first, tasks)

    def pop(self, int requestor):
        cdef Node *node = self._next_for(requestor)
        cdef int lane = node.requestor
        cdef int64_t index = node.index
        return (lane, index, self._take(node))

    def remove_requestor(self, int requestor):
        cdef list removed = []
        cdef Node *node
        cdef Node *nxt
        if requestor < 0 or requestor >= self._nlanes:
            return removed
        node = self._lanes[requestor].head
        while node != NULL:
            nxt = node.rnext
            index = node.index
            removed.append((index, self._take(node)))
            node = nxt
        return removed

    def count(self, int requestor):
        if 0 <= requestor < self._nlanes:
            return self._lanes[requestor].count
        return 0

    def first_requestor(self):
        return -1 if self._head == NULL else self._head.requestor
