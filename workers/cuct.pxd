# Declarations of workers/engine/uct.h for Cython (keep in sync).
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t

from cboard cimport Board, Move, raise_py_error


cdef extern from "uct.h" namespace "hexz" nogil:
    cdef cppclass UctNode:
        Move move
        int32_t count
        int32_t wins
        uint16_t num_children
        uint8_t mover
        double Q()

    cdef cppclass Uct:
        Uct(uint64_t seed, double uct_c)
        int64_t Search(const Board& board, int player, int64_t max_iterations,
                       int64_t max_micros) except +raise_py_error
        int BestChild()
        int NumChildren()
        const UctNode& child(int i)
        const UctNode& root()
        int64_t iterations()
        int TreeSize()
