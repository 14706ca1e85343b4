# Reorder buffer: results arrive in any order, leave in index order.

cdef class ReorderBuffer:
    cdef list _slots              # _slots[i - _base]: result i, or _EMPTY
    cdef Py_ssize_t _base         # index of _slots[0]
    cdef Py_ssize_t _next         # first index not yet released
    cdef Py_ssize_t _expected     # indexes [0, _expected) will arrive
    cdef Py_ssize_t _held         # results stored, not yet released
