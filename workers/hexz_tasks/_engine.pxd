# The Python Board (workers/_engine.pyx, module hexz_tasks._engine) wraps a C++
# hexz::Board by value. Other extensions reach the C++ board as `b.c` with
#     from hexz_tasks._engine cimport Board, wrap_board
# This file sits in workers/hexz_tasks/ so that Cython (include path "workers") finds
# it under the module's real dotted name; a workers/_engine.pxd would be cimported as
# a top-level module "_engine", which does not exist at run time.
from cboard cimport Board as CBoard


cdef class Board:
    cdef CBoard c


# A new Python Board holding a copy of `b`.
cdef Board wrap_board(const CBoard& b)
