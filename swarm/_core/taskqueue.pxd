# The common queue: every queued task sits on two intrusive doubly linked
# lists at once, the global submission order and its requestor's lane, so
# "first task of requestor r" and "first task overall" are both O(1), and
# so is unlinking a node from both.

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t


cdef struct Node:
    Node *gprev                   # global order, towards the head
    Node *gnext                   # global order, towards the tail
    Node *rprev                   # requestor lane, towards its head
    Node *rnext                   # requestor lane, towards its tail
    PyObject *task                # owned reference to the task object
    int64_t index                 # the task's position within its requestor
    int requestor                 # lane number (small int, pool-assigned)


cdef struct Lane:
    Node *head                    # first queued task of this requestor
    Node *tail                    # last queued task of this requestor
    Py_ssize_t count              # tasks queued in this lane


cdef class TaskQueue:
    cdef Node *_head              # first task in global order
    cdef Node *_tail              # last task in global order
    cdef Lane *_lanes             # indexed by requestor number
    cdef int _nlanes              # allocated lanes
    cdef Py_ssize_t _count        # tasks queued in all lanes
    cdef Node *_free              # recycled nodes (linked by gnext)

    cdef int _ensure_lane(self, int requestor) except -1
    cdef int _push(self, int requestor, int64_t index, object task) except -1
    cdef int _push_front(self, int requestor, int64_t index, object task) except -1
    cdef Node *_new_node(self, int requestor, int64_t index, object task) except NULL
    cdef void _unlink(self, Node *node) noexcept
    cdef Node *_next_for(self, int requestor) except NULL
    cdef object _take(self, Node *node)
